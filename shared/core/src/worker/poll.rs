//! The loop: receive a work item, claim its job, run the attempt (while
//! the machine is protected from scale-in), ack; leave when idle.

use crate::handlers::{claim_work, Claim, Ctx, HandlerError};
use crate::ids::{InstanceId, PoolKey};
use crate::job::Job;
use crate::notice::Notice;
use crate::ports::{ArtifactStore, PortError, Received};
use crate::worker::collect::RunEnd;
use crate::worker::config::{WorkerConfig, WorkerExit};
use crate::worker::liveness::{spawn_heartbeat, spawn_notices, spawn_seen, Placed};
use crate::worker::run::run_attempt;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Runs until idle, told to stop, or the pool is deleted.
///
/// # Errors
/// None at present: per-item failures are logged and the item is left to
/// its lease; the `Result` is kept for adapters that can fail to start.
pub async fn run_worker(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerExit, HandlerError> {
    let queue = ctx.settings.work_queue(&cfg.pool);
    // Workers of a fixed-size pool stay until cleanup removes the pool: the
    // scale handler keeps the group at its size, so a worker that left idle
    // would only be replaced.
    let (pool_key, _) = crate::pool::split_group_key(&cfg.pool);
    let fixed = matches!(
        ctx.store.get_pool(&pool_key).await,
        Ok(Some(p)) if matches!(p.spec.policy, crate::resources::WorkerPolicy::Fixed(_))
    );
    let _alive = spawn_seen(ctx, cfg);
    let (mut notices, _watching) = spawn_notices(cfg).await;
    let mut idle_since = ctx.clock.now();
    let mut draining = false;
    info!(pool = %cfg.pool, instance = %cfg.instance, "worker started");
    loop {
        if *shutdown.borrow() {
            return Ok(WorkerExit::Shutdown);
        }
        match notices.borrow_and_update().clone() {
            Notice::Terminate(why) => {
                info!(reason = %why, "machine is being reclaimed; leaving");
                return Ok(WorkerExit::Preempted);
            }
            Notice::Rebalance if !draining => {
                info!("rebalance recommendation: taking no new work");
                draining = true;
            }
            _ => {}
        }
        let idle_for = ctx.clock.now().since(idle_since);
        if draining {
            if idle_for >= cfg.idle_timeout {
                leave(ctx, &cfg.pool, &cfg.instance).await?;
                return Ok(WorkerExit::Idle);
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.notice_every.min(cfg.poll_wait)) => {}
                Ok(()) = notices.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        // A long poll (20 s on SQS) is never cut short, for a notice or for
        // a shutdown: SQS goes on serving an abandoned poll, and a message
        // it hands out would stay hidden until its lease ends (Pub/Sub's
        // pull likewise). What it brings then is handed back below. Notices
        // are watched beside it; a shutdown waits for it (at most 20 s, under
        // systemd's 90 s stop timeout).
        let received = ctx.queue.receive(&queue, 1, cfg.lease, cfg.poll_wait).await;
        let msgs = match received {
            Ok(m) => m,
            Err(PortError::NotFound(_)) => return Ok(WorkerExit::PoolGone),
            Err(e) => {
                warn!(error = %e, "receive failed");
                tokio::time::sleep(cfg.poll_wait.min(RETRY_AFTER)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            if leaves_idle(ctx, &queue, fixed, idle_for, cfg.idle_timeout).await {
                // A worker that cannot take its machine out of the group
                // fails, so it is restarted (and the machine is not left
                // running with nothing on it).
                leave(ctx, &cfg.pool, &cfg.instance).await?;
                return Ok(WorkerExit::Idle);
            }
            continue;
        }
        // Told to go (or to drain) while the poll was out: the work goes
        // back at once for another machine.
        if !matches!(*notices.borrow(), Notice::Clear) || *shutdown.borrow() {
            for msg in &msgs {
                let _ = ctx
                    .queue
                    .release(&queue, &msg.receipt, Duration::ZERO)
                    .await;
            }
            continue;
        }
        for msg in msgs {
            let preempted = handle_item(
                ctx,
                artifacts,
                cfg,
                &queue,
                &msg,
                &mut shutdown,
                &mut notices,
            )
            .await;
            idle_since = ctx.clock.now();
            if preempted {
                return Ok(WorkerExit::Preempted);
            }
        }
    }
}

/// Whether a worker whose poll came back empty leaves: not in a fixed-size
/// pool (the group would only replace it), idle for `idle_timeout`, and the
/// queue empty as far as its counters say (on SQS they lag by up to a minute).
pub async fn leaves_idle(
    ctx: &Ctx,
    queue: &str,
    fixed: bool,
    idle_for: Duration,
    idle_timeout: Duration,
) -> bool {
    !fixed && idle_for >= idle_timeout && ctx.queue.depth(queue).await.is_ok_and(|d| d.total() == 0)
}

/// After a failed receive, the longest a worker waits before the next.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An idle worker takes its machine out of the group, lowering the target so
/// it is not replaced.
pub async fn leave(ctx: &Ctx, group: &PoolKey, me: &InstanceId) -> Result<(), PortError> {
    info!(instance = %me, "idle with an empty queue; terminating this machine");
    ctx.fleet
        .terminate(group, me, true)
        .await
        .inspect_err(|e| warn!(error = %e, "could not terminate this machine through the group"))
}

async fn handle_item(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    queue: &str,
    msg: &Received,
    shutdown: &mut watch::Receiver<bool>,
    notices: &mut watch::Receiver<Notice>,
) -> bool {
    let mut preempted = false;
    let ack = match claim_work(ctx, &cfg.instance, msg).await {
        Err(HandlerError::BadInput(e)) => {
            warn!(message_id = %msg.message_id, error = %e, "poison work item");
            if let Err(e) = ctx.queue.dead_letter(queue, msg, &e.to_string()).await {
                warn!(error = %e, "dead-lettering failed");
            }
            return false;
        }
        Err(e) => {
            warn!(message_id = %msg.message_id, error = %e, "claim failed; item will come back");
            let _ = ctx
                .queue
                .release(queue, &msg.receipt, Duration::from_secs(5))
                .await;
            return false;
        }
        Ok(Claim::Drop(why)) => {
            info!(message_id = %msg.message_id, reason = %why, "work item dropped");
            true
        }
        Ok(Claim::Run(job)) => {
            // The claim on the record is the lock from here on: ack the item
            // now, so no queue lease has to outlast the run.
            if let Err(e) = ctx.queue.ack(queue, &msg.receipt).await {
                warn!(error = %e, "ack failed; a redelivery is recognised as a duplicate");
            }
            let end = run_job(ctx, artifacts, cfg, *job, shutdown, notices).await;
            preempted = end.preempted;
            false
        }
    };
    if ack {
        if let Err(e) = ctx.queue.ack(queue, &msg.receipt).await {
            warn!(error = %e, "ack failed; the item will be redelivered and recognised");
        }
    }
    preempted
}

/// Runs one claimed attempt to its end and records it.
async fn run_job(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &mut watch::Receiver<bool>,
    notices: &mut watch::Receiver<Notice>,
) -> RunEnd {
    let id = job.id.clone();
    let attempt = job.attempt;
    let placed = Placed {
        zone: cfg.notice.zone().await,
        machine_uid: cfg.notice.machine_uid().await,
    };
    let (progress_tx, progress_rx) = watch::channel(None::<f32>);
    let (mut seen, _beating) = spawn_heartbeat(ctx, cfg, &id, attempt, placed, progress_rx);
    // Busy: the group must not pick this machine for scale-in or rebalancing.
    if let Err(e) = ctx.fleet.protect(&cfg.pool, &cfg.instance, true).await {
        warn!(error = %e, "could not protect this machine from scale-in");
    }
    let end = run_attempt(
        ctx,
        artifacts,
        cfg,
        job,
        shutdown,
        (&mut seen, notices),
        &progress_tx,
    )
    .await;
    if let Err(e) = ctx.fleet.protect(&cfg.pool, &cfg.instance, false).await {
        warn!(error = %e, "could not lift this machine's scale-in protection");
    }
    end
}
