//! The `handle-spot-interruption` function: an instance event (spot
//! warning, rebalance, state change, GCE preemption) requeues the jobs on
//! that instance. Idempotent on the event.

use crate::clock::Timestamp;
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
    /// The cloud's unique id of the machine the event is about, where the
    /// name alone is not unique over time: a GCE managed instance group
    /// recreates a preempted VM under the same name (its numeric
    /// `instance_id` is new). `None` on EC2, whose instance ids are never
    /// reused.
    pub machine_uid: Option<String>,
    /// When it happened, where the source says precisely (GCE's audit-log
    /// `timestamp`); an attempt started after it is not about it.
    pub at: Option<Timestamp>,
}

impl InstanceEvent {
    /// Whether the event is about `job`'s current attempt: on the event's
    /// machine by name, and, where a name can be used again, the same
    /// machine (its unique id when both are known, else an attempt that
    /// started no later than the event).
    pub fn concerns(&self, job: &Job) -> bool {
        if job.instance.as_ref() != Some(&self.instance) {
            return false;
        }
        let Some(a) = job.attempts.iter().rev().find(|a| a.number == job.attempt) else {
            return true;
        };
        match (&self.machine_uid, &a.machine_uid, self.at) {
            (Some(ev), Some(ours), _) => ev == ours,
            (_, _, Some(at)) => a.started_at <= at,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InterruptionOutcome {
    /// No job of ours runs on that instance: recorded and dropped.
    NoJobOnInstance,
    /// The jobs on a machine of that name run on a newer machine than the
    /// event's (same name, another unique id, or started after it).
    EarlierMachine,
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
    // A machine of the same name later (GCE recreates a preempted VM under
    // its name) may run the next attempt: a late event about the earlier
    // machine must not take it away.
    let (jobs, earlier): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| event.concerns(j));
    if jobs.is_empty() {
        info!(
            jobs = earlier.len(),
            "the event is about an earlier machine of this name; its jobs' attempts run on a newer one"
        );
        return Ok(InterruptionOutcome::EarlierMachine);
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
