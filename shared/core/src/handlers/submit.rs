//! The `submit` function: a SubmitJob becomes a job record, a pool and a
//! work item, and the pool's target is raised at once.

use crate::catalog::Arch;
use crate::contract::{SubmitJob, WorkItem};
use crate::handlers::context::{Ctx, HandlerError};
use crate::handlers::pools::{ensure_pool, scale_pool, send_item, Waiting};
use crate::ids::JobId;
use crate::job::{Job, JobState};
use crate::pool::PoolSpec;
use crate::ports::Created;
use crate::resources::Cloud;
use tracing::info;

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// A new job, its work item sent.
    Created(JobId),
    /// The job existed (a redelivery or a resubmission); nothing new was made.
    Duplicate(JobId),
}

/// `submit`: validate → plan → create the job (if absent) → ensure the pool →
/// send the work item → raise the pool's target at once.
///
/// `message_id` is the queue's id for the message, the idempotency key when
/// the message has no `job_id`.
///
/// # Errors
/// [`HandlerError::BadInput`], `Plan` and `IdReused` are not retryable (the
/// message belongs in the dead-letter queue); the rest are.
#[tracing::instrument(skip(ctx, body), fields(message_id = %message_id))]
pub async fn submit(
    ctx: &Ctx,
    message_id: &str,
    body: &str,
) -> Result<SubmitOutcome, HandlerError> {
    let spec = SubmitJob::from_json(body)?;
    let id = match &spec.job_id {
        Some(id) => id.clone(),
        None => job_id_from_message(message_id),
    };
    let cap = ctx.settings.max_auto_workers.max(1);
    if let Some(asked) = spec.num_workers.filter(|n| *n > cap) {
        return Err(HandlerError::WorkersAboveCap { asked, cap });
    }
    let arch = spec.arch.unwrap_or(Arch::X86_64);
    if ctx
        .settings
        .archs
        .as_ref()
        .is_some_and(|a| !a.contains(&arch))
    {
        return Err(HandlerError::ArchUnavailable(arch));
    }
    if spec.resources.gpus > 0
        && matches!(spec.cloud, Cloud::Ec2 | Cloud::Ec2spot)
        && !ctx.settings.ec2_gpu_image
    {
        return Err(HandlerError::GpuImageMissing);
    }
    if ctx
        .settings
        .clouds
        .as_ref()
        .is_some_and(|c| !c.contains(&spec.cloud))
    {
        return Err(HandlerError::CloudUnavailable(spec.cloud));
    }
    let plan = ctx.planner.plan(&spec)?;
    let pool_spec = PoolSpec::for_job(&spec, &plan);
    let now = ctx.clock.now();
    let job = Job::new(id.clone(), spec, plan, pool_spec.key(), now, "submit");
    let job = match ctx.store.create_job(&job).await? {
        Created::New(j) => j,
        Created::Existing(existing) => {
            if !same_request(&existing.spec, &job.spec) {
                return Err(HandlerError::IdReused(id));
            }
            if existing.state != JobState::Queued || existing.attempt != 1 {
                return Ok(SubmitOutcome::Duplicate(id));
            }
            // Queued at attempt 1: an earlier delivery may have died before
            // sending the work item, so finish the steps (a duplicate item is
            // recognised and dropped by the worker).
            place_first_attempt(ctx, &pool_spec, &id).await?;
            return Ok(SubmitOutcome::Duplicate(id));
        }
    };
    place_first_attempt(ctx, &pool_spec, &job.id).await?;
    info!(job_id = %job.id, pool = %job.pool, "job submitted");
    Ok(SubmitOutcome::Created(job.id))
}

/// Ensures the pool, sends attempt 1's item and scales for it (the queue's
/// depth counters lag sends by up to a minute on SQS).
async fn place_first_attempt(ctx: &Ctx, spec: &PoolSpec, id: &JobId) -> Result<(), HandlerError> {
    let pool = ensure_pool(ctx, spec).await?;
    send_item(ctx, &pool, &WorkItem::new(id.clone(), 1)).await?;
    scale_pool(ctx, pool, Waiting::AtLeast(1), None).await?;
    Ok(())
}

fn same_request(a: &SubmitJob, b: &SubmitJob) -> bool {
    let mut a = a.clone();
    a.job_id = b.job_id.clone();
    a == *b
}

/// A job id for a message that did not choose one: stable across redeliveries.
pub fn job_id_from_message(message_id: &str) -> JobId {
    let clean: String = message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(60)
        .collect();
    JobId::new(format!("m-{clean}")).unwrap_or_else(|_| JobId::generate())
}
