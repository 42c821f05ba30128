//! The `scale-on-queue-depth` function: every live pool is swept
//! ([`crate::handlers::sweep`]), its target reconciled with the queue and
//! what the fleet reports, and machines that run no worker retired.

use crate::handlers::context::{Ctx, HandlerError};
use crate::handlers::pools::{scale_pool, Waiting};
use crate::handlers::sweep::sweep_pool;
use crate::ids::PoolKey;
use crate::job::JobState;
use crate::pool::{Pool, PoolState};
use crate::ports::PortError;
use tracing::warn;

/// `scale-on-queue-depth`: the sweep, then every live pool reconciled to
/// its policy's size. The sweep, per pool:
/// - a running attempt whose heartbeat is older than
///   [`Settings::heartbeat_timeout`], or whose machine was warned longer
///   than [`Settings::warning_grace`] ago, is lost: it runs again;
/// - a requeue left half-done (`interrupted` for over a minute) is finished;
/// - a job that never started within its `--lifetime` is cancelled.
///
/// # Errors
/// The first error met; every pool is still tried.
pub async fn scale(ctx: &Ctx) -> Result<Vec<(PoolKey, u32)>, HandlerError> {
    let mut sizes = Vec::new();
    let mut first_err = None;
    for pool in ctx.store.live_pools().await? {
        if pool.state != PoolState::Live {
            continue;
        }
        let key = pool.key.clone();
        let said = match retire_silent_machines(ctx, &pool).await {
            Ok(said) => said,
            Err(e) => {
                warn!(pool = %key, error = %e, "retiring silent machines failed");
                first_err.get_or_insert(e);
                None
            }
        };
        let work = match sweep_pool(ctx, &pool).await {
            Ok((waiting, running)) => Waiting::Exactly { waiting, running },
            Err(e) => {
                // Counts left unfinished: the queue's, whatever they lag.
                warn!(pool = %key, error = %e, "sweep failed");
                first_err.get_or_insert(e);
                Waiting::AtLeast(0)
            }
        };
        match scale_pool(ctx, pool, work, said).await {
            Ok(n) => sizes.push((key, n)),
            Err(e) => {
                warn!(pool = %key, error = %e, "scaling failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(sizes),
    }
}

/// Machines that run no live worker (a bootstrap that failed, a worker that
/// died for good) cost money and count as capacity: each is taken out of
/// its group with decrement, and the reconcile that follows raises the
/// group again if work waits. A job on such a machine is requeued by its
/// stale heartbeat.
///
/// The fleet's liveness mark (a GCE label, an EC2 tag) is written by the
/// worker with another permission than the job record: a machine whose
/// mark is old but whose job's heartbeat is fresh has a live worker that
/// cannot write its mark. It is kept, and said loudly, not deleted busy.
///
/// Returns what a retired machine's bootstrap said as it failed, if one
/// did (its console): the pool's launch trouble until a machine of the
/// pool runs a job, so `studio status` says why nothing starts.
async fn retire_silent_machines(ctx: &Ctx, pool: &Pool) -> Result<Option<String>, HandlerError> {
    let gk = pool.group_key();
    let now = ctx.clock.now();
    let mut said = None;
    for id in ctx
        .fleet
        .silent(&gk, ctx.settings.worker_grace, now)
        .await?
    {
        let beating = ctx
            .store
            .jobs_on_instance(&id)
            .await?
            .into_iter()
            .find(|j| {
                j.state == JobState::Running
                    && j.instance.as_ref() == Some(&id)
                    && j.heartbeat_at
                        .is_some_and(|h| now.since(h) < ctx.settings.heartbeat_timeout)
            });
        if let Some(job) = beating {
            warn!(
                pool = %pool.key,
                instance = %id,
                job_id = %job.id,
                "the machine's liveness mark is stale but its job's heartbeat is fresh: its worker \
                 cannot write the mark (check the workers' permission to label their own machine); kept"
            );
            continue;
        }
        match ctx.fleet.silent_why(&gk, &id).await {
            Ok(Some(why)) => {
                warn!(pool = %pool.key, instance = %id, said = %why, "its bootstrap failed; terminating it");
                said = Some(format!(
                    "a machine's bootstrap failed ({id} was retired): {why}"
                ));
            }
            Ok(None) => {
                warn!(pool = %pool.key, instance = %id, "no live worker on this machine; terminating it")
            }
            Err(e) => {
                warn!(pool = %pool.key, instance = %id, error = %e, "no live worker on this machine (its console unread); terminating it")
            }
        }
        match ctx.fleet.terminate(&gk, &id, true).await {
            Ok(()) | Err(PortError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(said)
}
