//! The sweep `scale` runs over each pool: attempts whose heartbeat went
//! stale are requeued, jobs past their lifetime dropped, dead-lettered work
//! items sent again.

use crate::clock::Timestamp;
use crate::contract::WorkItem;
use crate::handlers::context::{mutate_job, Ctx, HandlerError, Step, MAX_RESENDS};
use crate::handlers::pools::send_item;
use crate::handlers::requeue::requeue;
use crate::ids::JobId;
use crate::job::{Job, JobState};
use crate::pool::Pool;
use crate::ports::{dead_letter_queue, PortError};
use std::time::Duration;
use tracing::warn;

/// Why the running attempt of `job` is lost, if it is.
pub(crate) fn lost_attempt(ctx: &Ctx, job: &Job, now: Timestamp) -> Option<String> {
    if job.state != JobState::Running {
        return None;
    }
    let holder = job.instance.as_ref().map_or("?".into(), |i| i.to_string());
    if let Some(w) = job.warned_at {
        if now.since(w) > ctx.settings.warning_grace {
            return Some(format!(
                "spot interruption of {holder}: its worker did not hand the job back within {}",
                humantime::format_duration(ctx.settings.warning_grace)
            ));
        }
    }
    let quiet = now.since(job.last_beat());
    (quiet > ctx.settings.heartbeat_timeout).then(|| {
        format!(
            "no heartbeat from {holder} for {}",
            humantime::format_duration(Duration::from_secs(quiet.as_secs()))
        )
    })
}

/// Why a queued job is dropped for its `--lifetime`: it bounds the wait for
/// a first start only, so a job that ran (and was interrupted) is retried.
pub(crate) fn lifetime_over(job: &Job, now: Timestamp) -> Option<String> {
    let l = Duration::from_secs(job.spec.lifetime_secs?);
    let waited = now.since(job.created_at);
    (job.state == JobState::Queued && job.attempts.is_empty() && waited > l).then(|| {
        format!(
            "waited {}, longer than its lifetime of {} without starting",
            humantime::format_duration(Duration::from_secs(waited.as_secs())),
            humantime::format_duration(l)
        )
    })
}

/// The sweep of one pool (see [`scale`]); returns how many jobs wait and
/// how many run.
pub(crate) async fn sweep_pool(ctx: &Ctx, pool: &Pool) -> Result<(u64, u64), HandlerError> {
    let (mut waiting, mut running) = (0, 0);
    let mut first_err = None;
    for job in ctx
        .store
        .list_jobs(Some(&pool.key), &JobState::ACTIVE)
        .await?
    {
        let now = ctx.clock.now();
        let r = match job.state {
            JobState::Interrupted if now.since(job.updated_at) > Duration::from_secs(60) => {
                requeue(ctx, &job.id, job.attempt, "requeue resumed", "scale")
                    .await
                    .map(|_| ())
            }
            JobState::Running => match lost_attempt(ctx, &job, now) {
                Some(why) => requeue(ctx, &job.id, job.attempt, &why, "scale")
                    .await
                    .map(|_| ()),
                None => {
                    running += 1;
                    Ok(())
                }
            },
            JobState::Queued => match lifetime_over(&job, now) {
                Some(why) => {
                    // Say why no machine took it, where the cloud said.
                    let why = match &pool.launch_trouble {
                        Some(t) => format!("{why}: no machine could be started ({})", t.reason),
                        None => why,
                    };
                    drop_for_lifetime(ctx, &job.id, &why, "scale").await
                }
                None => {
                    waiting += 1;
                    Ok(())
                }
            },
            _ => Ok(()),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = resend_dead_lettered(ctx, pool).await {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok((waiting, running)),
    }
}

/// How long a dead-lettered body that is not a work item is kept out of
/// the sweep's way. SQS refuses a visibility that would end more than 12 h
/// after the receive that gave the handle (`ChangeMessageVisibility`:
/// "Total VisibilityTimeout for the message is beyond the limit"), and some
/// time has passed since that receive: 11 h, not 12.
pub const PARK: Duration = Duration::from_secs(11 * 3600);

/// Work items the queue gave up on (dead-lettered after repeated failed
/// claims) would leave their jobs queued forever: each one whose job still
/// waits for that attempt is sent again, up to [`MAX_RESENDS`] times, after
/// which the job fails with the reason. Items for jobs that moved on are
/// dropped from the dead-letter queue; bodies that are not work items stay.
async fn resend_dead_lettered(ctx: &Ctx, pool: &Pool) -> Result<(), HandlerError> {
    let dlq = dead_letter_queue(&ctx.settings.work_queue(&pool.group_key()));
    // At most 100 a run: a flood is worked off over several runs.
    for _ in 0..10 {
        let msgs = match ctx
            .queue
            .receive(&dlq, 10, Duration::from_secs(60), Duration::ZERO)
            .await
        {
            Ok(m) => m,
            Err(PortError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let n = msgs.len();
        for msg in msgs {
            match WorkItem::from_json(&msg.body) {
                Ok(item) => {
                    resend_item(ctx, pool, &item).await?;
                    ctx.queue.ack(&dlq, &msg.receipt).await?;
                }
                // A poison body stays as evidence, out of the next runs' way
                // (SQS keeps it 14 days).
                Err(_) => ctx.queue.release(&dlq, &msg.receipt, PARK).await?,
            }
        }
        if n < 10 {
            break;
        }
    }
    Ok(())
}

/// Sends a dead-lettered item again if its job still waits for it.
async fn resend_item(ctx: &Ctx, pool: &Pool, item: &WorkItem) -> Result<(), HandlerError> {
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), &item.job_id, |j| {
        if j.state != JobState::Queued || j.attempt != item.attempt {
            return Step::Keep(false);
        }
        if j.items_resent >= MAX_RESENDS {
            let why = format!(
                "its work item was dead-lettered {} times: no worker could claim it",
                MAX_RESENDS + 1
            );
            return match j.fail_queued(now, "scale", &why) {
                Ok(()) => Step::Write(false),
                Err(_) => Step::Keep(false),
            };
        }
        j.items_resent += 1;
        Step::Write(true)
    })
    .await?;
    if let Some((_, true)) = r {
        warn!(job_id = %item.job_id, attempt = item.attempt, "work item was dead-lettered; sent again");
        send_item(ctx, pool, item).await?;
    }
    Ok(())
}

/// Cancels a job that waited past its lifetime without starting.
pub(crate) async fn drop_for_lifetime(
    ctx: &Ctx,
    id: &JobId,
    why: &str,
    by: &str,
) -> Result<(), HandlerError> {
    let now = ctx.clock.now();
    mutate_job(ctx.store.as_ref(), id, |job| {
        if lifetime_over(job, now).is_some() && job.cancel(now, by, why).is_ok() {
            Step::Write(())
        } else {
            Step::Keep(())
        }
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- requeue
