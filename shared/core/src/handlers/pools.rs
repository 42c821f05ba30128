//! What handlers do to a pool: make it exist with its queue and worker
//! group ([`ensure_pool`]), send it a work item ([`send_item`]), and set its
//! group's target from what the fleet reports now ([`scale_pool`]).

use crate::contract::WorkItem;
use crate::handlers::context::{Ctx, HandlerError, CAS_TRIES};
use crate::job::Job;
use crate::pool::{
    desired_workers, LaunchTrouble, Pool, PoolSample, PoolSpec, PoolState, QueueDepth,
};
use crate::ports::{Created, GroupStatus, PortError};
use crate::resources::WorkerPolicy;
use tracing::{info, warn};

pub(crate) async fn send_item(ctx: &Ctx, pool: &Pool, item: &WorkItem) -> Result<(), HandlerError> {
    ctx.queue
        .send(
            &ctx.settings.work_queue(&pool.group_key()),
            &[item.to_json()],
        )
        .await?;
    Ok(())
}

/// The live pool a job belongs to, revived (as a new generation) if cleanup
/// removed it.
pub(crate) async fn pool_of(ctx: &Ctx, job: &Job) -> Result<Pool, HandlerError> {
    match ctx.store.get_pool(&job.pool).await? {
        Some(p) if p.state == PoolState::Live => Ok(p),
        _ => ensure_pool(ctx, &PoolSpec::for_job(&job.spec, &job.plan)).await,
    }
}

/// Makes sure the pool is live, its queue and group exist, and marks it
/// active now. The write is a compare-and-set, which is what keeps cleanup
/// from deleting a pool that submit has just used.
///
/// A pool revived after cleanup starts a new generation: new queue and group
/// names, because SQS refuses a deleted queue's name for 60 s (and loses
/// what is sent to it) and Auto Scaling keeps a force-deleted group's name
/// for minutes. The queue and group are created only while the record does
/// not show them created (Auto Scaling's API is rate-limited, and a create
/// must never touch a live group's settings); [`scale`] recreates drift.
///
/// # Errors
/// [`HandlerError::PoolBusy`] while cleanup is deleting the pool.
pub async fn ensure_pool(ctx: &Ctx, spec: &PoolSpec) -> Result<Pool, HandlerError> {
    let key = spec.key();
    for _ in 0..CAS_TRIES {
        let now = ctx.clock.now();
        let mut pool = match ctx.store.get_pool(&key).await? {
            None => match ctx.store.create_pool(&Pool::new(spec.clone(), now)).await? {
                Created::New(p) => p,
                Created::Existing(_) => continue,
            },
            Some(p) if p.state == PoolState::Deleting => return Err(HandlerError::PoolBusy(key)),
            Some(mut p) => {
                if p.state == PoolState::Deleted {
                    p.state = PoolState::Live;
                    p.target = 0;
                    p.generation += 1;
                    p.created = false;
                    p.created_at = now;
                }
                p.idle_since = None;
                p.updated_at = now;
                match ctx.store.update_pool(&p).await {
                    Ok(p) => p,
                    Err(PortError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if !pool.created {
            create_pool_resources(ctx, &pool).await?;
            pool.created = true;
            pool = match ctx.store.update_pool(&pool).await {
                Ok(p) => p,
                // Another writer got in first; the next submit creates
                // again (idempotently) and records it.
                Err(PortError::Conflict) => pool,
                Err(e) => return Err(e.into()),
            };
        }
        return Ok(pool);
    }
    Err(HandlerError::PoolBusy(key))
}

/// Creates this generation's queue and group (both idempotent creates).
async fn create_pool_resources(ctx: &Ctx, pool: &Pool) -> Result<(), HandlerError> {
    let gk = pool.group_key();
    ctx.queue
        .ensure_queue(&ctx.settings.work_queue(&gk))
        .await?;
    ctx.fleet.ensure_group(&gk, &pool.spec).await?;
    Ok(())
}

// ---------------------------------------------------------------- scale

/// The jobs of a pool that wait for a machine, as its caller knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A lower bound (the item a submit or a requeue just sent): the queue's
    /// visible count may know of more.
    AtLeast(u64),
    /// Counted from the store by the sweep, with the running ones: the
    /// queue's counts are not read into it. SQS's lag behind deletes by up
    /// to a minute still shows items already claimed, which the running
    /// count holds too: a machine more per claim.
    Exactly { waiting: u64, running: u64 },
}

/// Reconciles one pool's group with the work there is; returns the target.
///
/// It starts from the group as the fleet reports it now (an idle worker
/// that left with decrement lowered it; someone may have changed it by
/// hand), never from the pool record's copy of the last target, and from
/// the work there is: the sweep's exact counts from the store, or, given
/// only a lower bound (the item the caller just sent), the queue's counts
/// where they are larger (they lag sends and deletes by up to a minute on
/// SQS). A missing group or queue of a live pool is recreated; a group
/// whose maximum no longer matches the configuration is moved to it in the
/// same call.
///
/// # Errors
/// Port errors from the queue or the fleet.
pub async fn scale_pool(
    ctx: &Ctx,
    mut pool: Pool,
    work: Waiting,
    bootstrap_failed: Option<String>,
) -> Result<u32, HandlerError> {
    let gk = pool.group_key();
    let max = match pool.spec.policy {
        WorkerPolicy::Fixed(n) => n,
        WorkerPolicy::Auto => ctx.settings.max_auto_workers.max(1),
    };
    let queue = ctx.settings.work_queue(&gk);
    let mut depth = match ctx.queue.depth(&queue).await {
        Ok(d) => d,
        Err(PortError::NotFound(_)) => {
            warn!(pool = %pool.key, queue, "work queue missing; recreating it");
            ctx.queue.ensure_queue(&queue).await?;
            QueueDepth::default()
        }
        Err(e) => return Err(e.into()),
    };
    let (waiting, running) = match work {
        Waiting::AtLeast(n) => {
            depth.visible = depth.visible.max(n);
            (depth.visible, 0)
        }
        Waiting::Exactly { waiting, running } => {
            // Items are acked once claimed, so running jobs are not in
            // flight in the queue: both counts are the store's.
            depth = QueueDepth {
                visible: waiting,
                in_flight: running,
            };
            (waiting, running)
        }
    };
    let group = match ctx.fleet.group(&gk).await? {
        Some(g) => g,
        None => {
            warn!(pool = %pool.key, group = %gk, "group missing; recreating it");
            ctx.fleet.ensure_group(&gk, &pool.spec).await?;
            GroupStatus {
                desired: 0,
                max: Some(max),
            }
        }
    };
    let want = desired_workers(pool.spec.policy, depth, group.desired, max);
    let new_max = group.max.filter(|m| *m != max).map(|_| max);
    if want != group.desired || new_max.is_some() {
        ctx.fleet.set_target(&gk, want, new_max).await?;
        info!(pool = %pool.key, from = group.desired, to = want, max, visible = depth.visible, in_flight = depth.in_flight, "pool resized");
    }
    let now = ctx.clock.now();
    let sample_due = pool
        .samples
        .last()
        .is_none_or(|s| now.since(s.at) >= ctx.settings.pool_sample_every);
    // The machines there now: one more (free) describe call per sample.
    let actual = if sample_due {
        match ctx.fleet.instances(&gk).await {
            Ok(i) => Some(i.len() as u32),
            Err(e) => {
                warn!(pool = %pool.key, error = %e, "could not count the group's machines");
                None
            }
        }
    } else {
        None
    };
    let sampled = actual.is_some_and(|actual| {
        pool.record_sample(
            PoolSample {
                at: now,
                target: want,
                actual,
                visible: depth.visible,
                in_flight: depth.in_flight,
            },
            ctx.settings.pool_sample_every,
        )
    });
    // Machines asked for and not there: ask the fleet why, once a sample,
    // so `studio status` can say why nothing starts instead of waiting.
    // A machine whose bootstrap failed was launched fine, so the group's
    // launches cannot say it: that reason holds until the pool runs a job
    // or has none waiting.
    let held = pool.launch_trouble.as_ref().is_some_and(|t| t.bootstrap);
    let trouble_changed = if let Some(reason) = bootstrap_failed {
        let same = pool
            .launch_trouble
            .as_ref()
            .is_some_and(|t| t.bootstrap && t.reason == reason);
        if !same {
            pool.launch_trouble = Some(LaunchTrouble {
                since: now,
                reason,
                bootstrap: true,
            });
        }
        !same
    } else if held {
        // A job runs (some machine's bootstrap worked), or none waits for
        // a machine any more.
        (running > 0 || waiting == 0) && pool.launch_trouble.take().is_some()
    } else {
        match actual {
            Some(actual) if want > actual => match ctx.fleet.launch_trouble(&gk).await {
                Ok(Some(reason)) => {
                    let same = pool
                        .launch_trouble
                        .as_ref()
                        .is_some_and(|t| t.reason == reason);
                    if !same {
                        warn!(pool = %pool.key, reason, "machines fail to launch");
                        pool.launch_trouble = Some(LaunchTrouble {
                            since: now,
                            reason,
                            bootstrap: false,
                        });
                    }
                    !same
                }
                Ok(None) => pool.launch_trouble.take().is_some(),
                Err(e) => {
                    warn!(pool = %pool.key, error = %e, "could not read the group's launches");
                    false
                }
            },
            Some(_) => pool.launch_trouble.take().is_some(),
            None => false,
        }
    };
    if pool.target != want || sampled || trouble_changed {
        pool.target = want;
        pool.updated_at = now;
        match ctx.store.update_pool(&pool).await {
            // Someone else wrote the pool; the record's target is only for display.
            Ok(_) | Err(PortError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(want)
}
