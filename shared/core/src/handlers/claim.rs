//! What a worker does with a work item: claim the job it names, or
//! recognise a stale or duplicate item and drop it.

use crate::contract::WorkItem;
use crate::handlers::context::{Ctx, HandlerError, CAS_TRIES};
use crate::handlers::requeue::requeue;
use crate::handlers::sweep::{drop_for_lifetime, lifetime_over, lost_attempt};
use crate::ids::InstanceId;
use crate::job::{Job, JobState};
use crate::ports::{PortError, Received};

/// What a worker should do with a work item.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: the job is now `running` on this worker.
    Run(Box<Job>),
    /// Ack and forget it, for this reason.
    Drop(String),
}

/// Decides what a received work item means and claims the job if it is ours
/// to run. The rules (attempt `a` in the item, job at attempt `j`):
/// - job ended, or `j > a`: stale, drop;
/// - queued and `j == a`: claim (compare-and-set); the worker then acks the
///   item at once and keeps the claim alive with its heartbeat on the
///   record, so no queue lease (nor SQS's 12-hour cap) bounds a run;
/// - queued past its `--lifetime` without ever starting: cancel, drop;
/// - running `a` with a stale heartbeat: its worker is gone: requeue as
///   `a + 1` and drop this item;
/// - running `a` otherwise: a duplicate delivery, drop;
/// - interrupted: finish the requeue, drop this item.
///
/// # Errors
/// [`HandlerError::BadInput`] for a body that is not a work item (dead-letter
/// it); port errors otherwise.
pub async fn claim_work(
    ctx: &Ctx,
    instance: &InstanceId,
    msg: &Received,
) -> Result<Claim, HandlerError> {
    let item = WorkItem::from_json(&msg.body)?;
    for _ in 0..CAS_TRIES {
        let Some(mut job) = ctx.store.get_job(&item.job_id).await? else {
            return Ok(Claim::Drop(format!("job {} does not exist", item.job_id)));
        };
        if job.state.is_terminal() {
            return Ok(Claim::Drop(format!("job already {}", job.state)));
        }
        if job.attempt > item.attempt {
            return Ok(Claim::Drop(format!(
                "stale: job is on attempt {}",
                job.attempt
            )));
        }
        match job.state {
            JobState::Interrupted => {
                requeue(
                    ctx,
                    &job.id,
                    job.attempt,
                    "requeue resumed",
                    &format!("worker:{instance}"),
                )
                .await?;
                if job.attempt + 1 == item.attempt {
                    continue; // our item is the next attempt's: claim it now
                }
                return Ok(Claim::Drop("requeue finished".into()));
            }
            _ if job.attempt < item.attempt => {
                return Ok(Claim::Drop(format!(
                    "item is for attempt {} but job is on {}",
                    item.attempt, job.attempt
                )))
            }
            JobState::Queued => {
                let now = ctx.clock.now();
                if let Some(why) = lifetime_over(&job, now) {
                    drop_for_lifetime(ctx, &job.id, &why, &format!("worker:{instance}")).await?;
                    return Ok(Claim::Drop(why));
                }
                if job.claim(instance, &msg.message_id, now).is_err() {
                    continue;
                }
                match ctx.store.update_job(&job).await {
                    Ok(stored) => return Ok(Claim::Run(Box::new(stored))),
                    Err(PortError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            JobState::Running => {
                let Some(why) = lost_attempt(ctx, &job, ctx.clock.now()) else {
                    return Ok(Claim::Drop(format!(
                        "duplicate delivery: attempt {} already runs elsewhere",
                        job.attempt
                    )));
                };
                let by = format!("worker:{instance}");
                let r = requeue(ctx, &job.id, job.attempt, &why, &by).await?;
                return Ok(Claim::Drop(format!("{why}: {r:?}")));
            }
            _ => return Ok(Claim::Drop(format!("job is {}", job.state))),
        }
    }
    Err(HandlerError::Contention(item.job_id))
}
