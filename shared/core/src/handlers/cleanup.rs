//! The `cleanup-empty-group` function: a pool with nothing queued or
//! running past its grace loses its group, template and queue.

use crate::handlers::context::{Ctx, HandlerError};
use crate::ids::PoolKey;
use crate::job::JobState;
use crate::pool::{Pool, PoolState};
use crate::ports::PortError;
use tracing::{info, warn};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CleanupReport {
    pub deleted: Vec<PoolKey>,
    /// Pools idle, but not yet for the whole grace period.
    pub waiting: Vec<PoolKey>,
}

/// `cleanup-empty-group`: a pool with no active job for longer than the grace
/// period loses its group, template and queue, and is marked deleted.
///
/// # Errors
/// The first error met; every pool is still tried.
pub async fn cleanup(ctx: &Ctx) -> Result<CleanupReport, HandlerError> {
    let mut report = CleanupReport::default();
    let mut first_err = None;
    for pool in ctx.store.live_pools().await? {
        let key = pool.key.clone();
        match cleanup_pool(ctx, pool).await {
            Ok(Some(true)) => report.deleted.push(key),
            Ok(Some(false)) => report.waiting.push(key),
            Ok(None) => {}
            Err(e) => {
                warn!(pool = %key, error = %e, "cleanup failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// `Some(true)` deleted, `Some(false)` idle but in grace, `None` busy.
async fn cleanup_pool(ctx: &Ctx, mut pool: Pool) -> Result<Option<bool>, HandlerError> {
    let now = ctx.clock.now();
    if pool.state == PoolState::Live {
        let active = ctx
            .store
            .list_jobs(Some(&pool.key), &JobState::ACTIVE)
            .await?;
        if !active.is_empty() {
            if pool.idle_since.is_some() {
                pool.idle_since = None;
                keep_or_conflict(ctx.store.update_pool(&pool).await)?;
            }
            return Ok(None);
        }
        let Some(since) = pool.idle_since else {
            pool.idle_since = Some(now);
            keep_or_conflict(ctx.store.update_pool(&pool).await)?;
            return Ok(Some(false));
        };
        if now.since(since) < ctx.settings.pool_grace {
            return Ok(Some(false));
        }
        pool.state = PoolState::Deleting;
        pool.updated_at = now;
        pool = match ctx.store.update_pool(&pool).await {
            Ok(p) => p,
            // Submit touched the pool after we read it: it is not idle.
            Err(PortError::Conflict) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    }
    // Deleting (now, or left so by an earlier run): finish it.
    let gk = pool.group_key();
    ctx.fleet.delete_group(&gk).await?;
    ctx.queue
        .delete_queue(&ctx.settings.work_queue(&gk))
        .await?;
    pool.state = PoolState::Deleted;
    pool.target = 0;
    pool.updated_at = now;
    keep_or_conflict(ctx.store.update_pool(&pool).await)?;
    info!(pool = %pool.key, "pool deleted");
    Ok(Some(true))
}

fn keep_or_conflict(r: Result<Pool, PortError>) -> Result<(), HandlerError> {
    match r {
        Ok(_) | Err(PortError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- cancel
