//! An attempt is lost (interruption, stale heartbeat, a worker handing
//! back): the job runs again, on-demand if it allows the fallback, or fails
//! with a reason when out of attempts.

use crate::contract::WorkItem;
use crate::handlers::context::{mutate_job, Ctx, HandlerError, Step};
use crate::handlers::pools::{ensure_pool, pool_of, scale_pool, send_item, Waiting};
use crate::ids::{JobId, PoolKey};
use crate::job::{Job, JobState};
use crate::plan::Plan;
use crate::pool::PoolSpec;
use crate::resources::Cloud;
use tracing::{info, warn};

#[derive(Debug, Clone, PartialEq)]
pub enum RequeueOutcome {
    /// Queued again as this attempt.
    Requeued(u32),
    /// Out of attempts: failed with a reason.
    Failed(String),
    /// The job is no longer on that attempt (already moved on, or ended).
    Stale,
}

/// Attempt `attempt` of the job is lost (machine gone, lease lapsed, worker
/// told to stop): run it again, or fail it when it is out of attempts.
///
/// # Errors
/// Port errors; repeating the call after one is safe.
pub async fn requeue(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    reason: &str,
    by: &str,
) -> Result<RequeueOutcome, HandlerError> {
    let max = ctx.settings.max_attempts.max(1);
    let now = ctx.clock.now();
    // Out of attempts on spot with `fallback_on_demand`: prepare the
    // on-demand pool first, so the write below only has to move the job.
    let fallback = match ctx.store.get_job(id).await? {
        Some(job)
            if job.state == JobState::Running && job.attempt == attempt && job.attempt >= max =>
        {
            on_demand_fallback(ctx, &job).await?
        }
        _ => None,
    };
    let step1 = mutate_job(ctx.store.as_ref(), id, |job| {
        if job.attempt != attempt {
            return Step::Keep(None);
        }
        match job.state {
            JobState::Running if job.attempt >= max && fallback.is_some() => {
                let (plan, pool) = fallback.clone().expect("checked");
                let why =
                    format!("{reason}; out of spot attempts, moving to on-demand pool {pool}");
                match job.interrupt(now, by, &why) {
                    Ok(()) => {
                        job.plan = plan.for_record();
                        job.pool = pool;
                        Step::Write(Some(Ok(())))
                    }
                    Err(_) => Step::Keep(None),
                }
            }
            JobState::Running if job.attempt >= max => {
                let why = format!("interrupted on attempt {attempt} of {max} ({reason})");
                match job.complete(None, Some(why.clone()), now, by) {
                    Ok(()) => Step::Write(Some(Err(why))),
                    Err(_) => Step::Keep(None),
                }
            }
            JobState::Running => match job.interrupt(now, by, reason) {
                Ok(()) => Step::Write(Some(Ok(()))),
                Err(_) => Step::Keep(None),
            },
            JobState::Interrupted => Step::Keep(Some(Ok(()))),
            _ => Step::Keep(None),
        }
    })
    .await?;
    let (job, decision) = match step1 {
        None | Some((_, None)) => return Ok(RequeueOutcome::Stale),
        Some((job, Some(d))) => (job, d),
    };
    if let Err(why) = decision {
        warn!(job_id = %id, reason = %why, "job failed: out of attempts");
        return Ok(RequeueOutcome::Failed(why));
    }
    let pool = pool_of(ctx, &job).await?;
    send_item(ctx, &pool, &WorkItem::new(id.clone(), attempt + 1)).await?;
    let step3 = mutate_job(ctx.store.as_ref(), id, |job| {
        if job.state == JobState::Interrupted && job.attempt == attempt {
            match job.requeue(now, by) {
                Ok(()) => Step::Write(true),
                Err(_) => Step::Keep(false),
            }
        } else {
            Step::Keep(job.attempt == attempt + 1)
        }
    })
    .await?;
    if fallback.is_some() {
        scale_pool(ctx, pool, Waiting::AtLeast(1), None).await?;
    }
    match step3 {
        Some((_, true)) => {
            info!(job_id = %id, attempt = attempt + 1, reason, "job requeued");
            Ok(RequeueOutcome::Requeued(attempt + 1))
        }
        _ => Ok(RequeueOutcome::Stale),
    }
}

/// The on-demand plan and pool a spot job moves to when it is out of
/// attempts and allows it; `None` when it does not allow it, is not on spot,
/// or no on-demand machine can be planned for it.
async fn on_demand_fallback(ctx: &Ctx, job: &Job) -> Result<Option<(Plan, PoolKey)>, HandlerError> {
    let on_demand = match job.plan.cloud {
        Cloud::Ec2spot => Cloud::Ec2,
        Cloud::Gcspot => Cloud::Gcloud,
        _ => return Ok(None),
    };
    if !job.spec.fallback_on_demand {
        return Ok(None);
    }
    let mut spec = job.spec.clone();
    spec.cloud = on_demand;
    let Ok(plan) = ctx.planner.plan(&spec) else {
        return Ok(None);
    };
    let pool = ensure_pool(ctx, &PoolSpec::for_job(&spec, &plan)).await?;
    Ok(Some((plan, pool.key)))
}

// ---------------------------------------------------------------- interruption
