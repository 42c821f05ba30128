//! From claim to the recorded end a heartbeat writes the time on the
//! job record and reports what it saw (cancelled, taken over, warned);
//! budgets are checked on the same beat.

use crate::clock::Timestamp;
use crate::handlers::{mutate_job, Ctx, HandlerError, Step};
use crate::ids::{InstanceId, JobId};
use crate::job::{usd, Job, JobState};
use crate::notice::Notice;
use crate::worker::config::WorkerConfig;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tracing::{info, warn};

/// What the heartbeat task last saw on the job record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Still our attempt.
    Ours,
    /// Still ours, and the cloud warned that the machine will be reclaimed.
    Warned,
    Cancelled,
    /// The record moved on without us (the attempt was declared lost).
    Lost,
}

/// Where the attempt's machine is and which one it is, as its metadata
/// service says.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub zone: Option<String>,
    pub machine_uid: Option<String>,
}

impl Placed {
    /// Writes what `a` does not have yet; whether anything changed.
    fn record(&self, a: &mut crate::job::Attempt) -> bool {
        let mut changed = false;
        for (have, known) in [
            (&mut a.zone, &self.zone),
            (&mut a.machine_uid, &self.machine_uid),
        ] {
            if have.is_none() && known.is_some() {
                have.clone_from(known);
                changed = true;
            }
        }
        changed
    }
}

/// Keeps the claim alive from claim to the recorded end: every
/// `cfg.heartbeat` it reads the record (what it sees goes to the returned
/// channel), and every `cfg.beat_every` it writes the time on it. Dropping
/// the returned guard stops it.
pub(crate) fn spawn_heartbeat(
    ctx: &Ctx,
    cfg: &WorkerConfig,
    id: &JobId,
    attempt: u32,
    placed: Placed,
    progress: watch::Receiver<Option<f32>>,
) -> (watch::Receiver<Seen>, AbortOnDrop) {
    let (tx, rx) = watch::channel(Seen::Ours);
    let (ctx, id, me) = (ctx.clone(), id.clone(), cfg.instance.clone());
    let (check, beat_every, progress_every) = (cfg.heartbeat, cfg.beat_every, cfg.progress_every);
    let task = tokio::spawn(async move {
        let mut last_write = Instant::now();
        let mut last_progress = Instant::now();
        let mut tick = interval(check.min(beat_every));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Monotonic: a wall-clock step neither skips nor doubles beats.
            let due = last_write.elapsed() >= beat_every;
            let progress_due = due || last_progress.elapsed() >= progress_every;
            let report = if progress_due {
                *progress.borrow()
            } else {
                None
            };
            match beat(&ctx, &id, attempt, &me, due, &placed, report).await {
                Ok(seen) => {
                    if due && matches!(seen, Seen::Ours | Seen::Warned) {
                        last_write = Instant::now();
                    }
                    if progress_due {
                        last_progress = Instant::now();
                    }
                    let _ = tx.send(seen);
                }
                Err(e) => warn!(job_id = %id, error = %e, "heartbeat failed; retrying"),
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// One look of the heartbeat at the job record, the rule every worker
/// follows from claim to end (the simulation runs it too): what it sees,
/// and, when `write`, the time written as the attempt's heartbeat; where
/// the machine is (`placed`) goes on the attempt with the first look, and
/// `progress` on the record when it changed. A record gone reads as lost.
///
/// # Errors
/// Port errors (the caller retries at the next beat).
pub async fn beat(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    write: bool,
    placed: &Placed,
    progress: Option<f32>,
) -> Result<Seen, HandlerError> {
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), id, |j| {
        if j.state == JobState::Cancelled {
            return Step::Keep(Seen::Cancelled);
        }
        if !j.runs(attempt, me) {
            return Step::Keep(Seen::Lost);
        }
        let seen = if j.warned_at.is_some() {
            Seen::Warned
        } else {
            Seen::Ours
        };
        let zoned = match j.attempts.iter_mut().rev().find(|a| a.number == attempt) {
            Some(a) => placed.record(a),
            None => false,
        };
        if write {
            j.heartbeat_at = Some(now);
        }
        let progressed = match progress {
            Some(p) if j.progress != Some(p) => {
                j.progress = Some(p);
                true
            }
            _ => false,
        };
        if write || zoned || progressed {
            Step::Write(seen)
        } else {
            Step::Keep(seen)
        }
    })
    .await?;
    Ok(r.map_or(Seen::Lost, |(_, seen)| seen))
}

/// What the machine's metadata service last said, asked once now and
/// then every `cfg.notice_every` for as long as the returned guard is held:
/// one watch for the worker's whole life, read by the idle loop and by the
/// running attempt alike, so neither has to interrupt its own wait (a long
/// poll, a script) to ask.
pub(crate) async fn spawn_notices(cfg: &WorkerConfig) -> (watch::Receiver<Notice>, AbortOnDrop) {
    let (tx, rx) = watch::channel(cfg.notice.check().await);
    let (source, every) = (cfg.notice.clone(), cfg.notice_every);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = source.check().await;
            tx.send_if_modified(|last| {
                // A reclaim is never withdrawn: a later look that fails (it
                // reads as Clear) or flaps does not undo it.
                if matches!(last, Notice::Terminate(_)) || *last == now {
                    return false;
                }
                *last = now;
                true
            });
        }
    });
    (rx, AbortOnDrop(task))
}

/// Tells the fleet every `cfg.seen_every` that this worker lives, for as
/// long as the returned guard is held.
pub(crate) fn spawn_seen(ctx: &Ctx, cfg: &WorkerConfig) -> AbortOnDrop {
    let (ctx, pool, me, every) = (
        ctx.clone(),
        cfg.pool.clone(),
        cfg.instance.clone(),
        cfg.seen_every,
    );
    AbortOnDrop(tokio::spawn(async move {
        // The first after one period: the bound counts from the launch.
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = ctx.fleet.worker_seen(&pool, &me, ctx.clock.now()).await {
                warn!(error = %e, "could not tell the fleet this worker lives");
            }
        }
    }))
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `Some(why)` when the job's cost, by the time of the next check (`every`
/// from `now`), would pass its budget.
pub(crate) fn over_budget(job: &Job, now: Timestamp, every: Duration) -> Option<String> {
    let budget = job.spec.max_cost_cents?.saturating_mul(10_000);
    let price = job
        .attempts
        .last()
        .map_or(0, |a| a.price_micro_usd_per_hour);
    let spent = job.cost_micro_usd(now);
    let next = (u128::from(price) * every.as_millis() / 3_600_000) as u64;
    (spent.saturating_add(next) >= budget)
        .then(|| format!("budget of {} reached: {} spent", usd(budget), usd(spent)))
}

/// The budget stopped the job: `cancelled`, with the reason.
pub(crate) async fn end_over_budget(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    why: &str,
    last_lines: Vec<String>,
) {
    let by = format!("worker:{me}");
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), id, |j| {
        if j.runs(attempt, me) && j.cancel(now, &by, why).is_ok() {
            j.last_lines = last_lines.clone();
            Step::Write(())
        } else {
            Step::Keep(())
        }
    })
    .await;
    match r {
        Ok(Some(_)) => info!(job_id = %id, reason = %why, "job stopped at its budget"),
        Ok(None) => {}
        Err(e) => {
            warn!(job_id = %id, error = %e, "could not record the budget stop; the sweep ends the attempt")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InstanceId, PoolKey};

    /// A job with a 1-cent budget on a $3.60/h machine (1 cent per 10 s),
    /// claimed at t = 0.
    fn budgeted() -> Job {
        let mut spec = crate::contract::tests::sample();
        spec.max_cost_cents = Some(1);
        let mut plan = crate::plan::Plan::local(&Default::default());
        plan.price_micro_usd_per_hour = 3_600_000;
        let mut j = Job::new(
            JobId::new("j").unwrap(),
            spec,
            plan,
            PoolKey::new("p").unwrap(),
            Timestamp(0),
            "t",
        );
        j.claim(&InstanceId::new("w").unwrap(), "m", Timestamp(0))
            .unwrap();
        j
    }

    #[test]
    fn the_budget_stops_a_job_before_the_next_check_would_pass_it() {
        let j = budgeted();
        let every = Duration::from_secs(1); // 1,000 micro-USD per check
        assert_eq!(over_budget(&j, Timestamp(8_999), every), None);
        let why = over_budget(&j, Timestamp(9_000), every).expect("stops");
        assert_eq!(why, "budget of $0.0100 reached: $0.0090 spent");
        let mut free = j.clone();
        free.spec.max_cost_cents = None;
        assert_eq!(over_budget(&free, Timestamp(1 << 40), every), None);
    }
}
