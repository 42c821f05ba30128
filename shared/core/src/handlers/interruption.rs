//! The `handle-spot-interruption` function: an instance event (spot
//! warning, rebalance, state change, GCE preemption) requeues the jobs on
//! that instance. Idempotent on the event.

use crate::handlers::context::{mutate_job, Ctx, HandlerError, Step};
use crate::handlers::requeue::{requeue, RequeueOutcome};
use crate::ids::{InstanceId, JobId};
use crate::job::{Job, JobState};
use tracing::info;

/// What happened to a machine, from whichever source tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEventKind {
    /// A spot/preemption notice: the machine will be reclaimed shortly.
    SpotWarning,
    /// Advisory: the machine is at elevated risk. Nothing is killed.
    Rebalance,
    /// The machine is stopping, stopped or gone (`state` as the cloud says it).
    Gone { state: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    /// The event's own id; repeated deliveries carry the same one.
    pub event_id: String,
    pub instance: InstanceId,
    pub kind: InstanceEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InterruptionOutcome {
    /// No job of ours runs on that instance: recorded and dropped.
    NoJobOnInstance,
    /// Advice only; no job was touched.
    Advisory,
    /// A spot warning: recorded on these jobs, whose worker now saves and
    /// hands them back; the sweep requeues any it has not handed back
    /// within [`Settings::warning_grace`], and the machine's
    /// `shutting-down` event requeues them at once.
    Warned(Vec<JobId>),
    /// Per job on the instance, what happened to it.
    Handled(Vec<(JobId, RequeueOutcome)>),
}

/// `handle-spot-interruption`: the jobs on that instance run again elsewhere.
/// Idempotent on the event: a repeat finds the jobs already moved on.
///
/// A spot *warning* does not take the job away: the worker has the notice
/// too (EC2 gives two minutes) and uses it to stop the script gracefully,
/// save a last checkpoint and hand the job back. Acting at once would race
/// it (the worker would see its attempt taken over and stop the script
/// without the grace, and the next attempt would start from an older
/// checkpoint). So a warning is recorded on the job, and the job is taken
/// away only when the machine is going (`shutting-down`, `terminated`,
/// `stopping`, `stopped`) or the worker misses the bound.
///
/// # Errors
/// Port errors (retry the event).
#[tracing::instrument(skip(ctx), fields(event_id = %event.event_id, instance = %event.instance))]
pub async fn handle_interruption(
    ctx: &Ctx,
    event: &InstanceEvent,
) -> Result<InterruptionOutcome, HandlerError> {
    let jobs: Vec<Job> = ctx
        .store
        .jobs_on_instance(&event.instance)
        .await?
        .into_iter()
        .filter(|j| matches!(j.state, JobState::Running | JobState::Interrupted))
        .collect();
    if jobs.is_empty() {
        info!("no job of ours on this instance; event dropped");
        return Ok(InterruptionOutcome::NoJobOnInstance);
    }
    let reason = match &event.kind {
        InstanceEventKind::Rebalance => {
            info!("rebalance recommendation recorded; jobs keep running");
            return Ok(InterruptionOutcome::Advisory);
        }
        InstanceEventKind::SpotWarning => {
            let now = ctx.clock.now();
            let mut warned = Vec::new();
            for job in jobs {
                let (attempt, instance) = (job.attempt, event.instance.clone());
                mutate_job(ctx.store.as_ref(), &job.id, |j| {
                    if j.runs(attempt, &instance) && j.warned_at.is_none() {
                        j.warned_at = Some(now);
                        Step::Write(())
                    } else {
                        Step::Keep(())
                    }
                })
                .await?;
                warned.push(job.id);
            }
            info!(
                jobs = warned.len(),
                "spot warning recorded; workers hand their jobs back"
            );
            return Ok(InterruptionOutcome::Warned(warned));
        }
        InstanceEventKind::Gone { state } => format!("instance {} {state}", event.instance),
    };
    let by = format!("interruption:{}", event.event_id);
    let mut out = Vec::new();
    for job in jobs {
        let r = requeue(ctx, &job.id, job.attempt, &reason, &by).await?;
        out.push((job.id, r));
    }
    Ok(InterruptionOutcome::Handled(out))
}

// ---------------------------------------------------------------- cleanup
