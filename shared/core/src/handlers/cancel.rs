//! Cancelling a job (the CLI, `studio ui`, the webhook).

use crate::clock::Clock;
use crate::handlers::context::{mutate_job, HandlerError, Step};
use crate::ids::JobId;
use crate::job::JobState;
use crate::ports::JobStore;

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    Cancelled,
    /// It had already ended in this state.
    AlreadyEnded(JobState),
    /// Mid-requeue; ask again in a moment.
    Busy,
    NotFound,
}

/// Cancels a queued or running job; a running script gets SIGTERM from its
/// worker, which watches the record.
///
/// # Errors
/// Port errors.
pub async fn cancel(
    store: &dyn JobStore,
    clock: &dyn Clock,
    id: &JobId,
    by: &str,
) -> Result<CancelOutcome, HandlerError> {
    let now = clock.now();
    let r = mutate_job(store, id, |job| match job.state {
        JobState::Queued | JobState::Running => match job.cancel(now, by, "cancelled by user") {
            Ok(()) => Step::Write(CancelOutcome::Cancelled),
            Err(_) => Step::Keep(CancelOutcome::Busy),
        },
        JobState::Interrupted => Step::Keep(CancelOutcome::Busy),
        s => Step::Keep(CancelOutcome::AlreadyEnded(s)),
    })
    .await?;
    Ok(r.map_or(CancelOutcome::NotFound, |(_, o)| o))
}

// ---------------------------------------------------------------- worker side
