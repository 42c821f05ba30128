//! The local control plane: what Lambda, EventBridge and Auto Scaling do in
//! the cloud, one [`Driver::tick`] at a time. Each tick runs the same
//! handlers the functions run: submit for every message on the submit queue,
//! handle-spot-interruption for every worker that died, scale-on-queue-depth,
//! the fleet's own reconciliation, and cleanup-empty-group.
//!
//! One process drives a home: [`serve`] takes an exclusive `flock` on
//! `driver.lock` for its whole life, or returns at once when another process
//! holds it, so starting a driver is atomic by construction and any command
//! may try. No command drives the handlers itself: `studio run` only reads
//! the store, so a follower that is stopped (Ctrl-Z), blocked on a full pipe
//! or killed by any signal holds nothing back.
//!
//! Between ticks the driver sleeps until a submit is sent (it is woken,
//! [`crate::wake`]) or the tick's period ends.
//!
//! Leaving without losing work: when a tick finds nothing to do, the driver
//! releases the lock and only then looks once more. Work written before the
//! release is seen by that look (and the driver takes the lock back); work
//! written after it finds the lock free when its writer starts a driver.

use crate::backend::LocalBackend;
use crate::fleet::ProcessFleet;
use crate::queue::SqliteQueue;
use crate::{gc, lock};
use std::io::{Seek, Write};
use std::sync::Arc;
use std::time::Duration;
use studio_core::handlers::{self, Ctx, HandlerError};
use studio_core::ports::{PortError, WorkQueue};
use tracing::{info, warn};

/// What one tick did; returned for tests and logs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickReport {
    pub submitted: usize,
    pub rejected: Vec<String>,
    pub instances_gone: usize,
    pub pools_deleted: usize,
    pub live_pools: usize,
    pub pending_submits: u64,
}

impl TickReport {
    /// Nothing left to drive: no live pool and nothing waiting to be submitted.
    pub fn is_idle(&self) -> bool {
        self.live_pools == 0 && self.pending_submits == 0
    }
}

pub struct Driver {
    pub ctx: Ctx,
    pub queue: Arc<SqliteQueue>,
    pub fleet: Arc<ProcessFleet>,
}

impl Driver {
    /// One pass over every handler.
    ///
    /// # Errors
    /// Only errors that stop the pass (the database is unreachable); a
    /// handler's failure on one message or pool is logged and retried later.
    pub async fn tick(&self) -> Result<TickReport, PortError> {
        let mut report = TickReport::default();
        let submit_q = self.ctx.settings.submit_queue.clone();
        loop {
            let msgs = self
                .queue
                .receive(&submit_q, 10, Duration::from_secs(30), Duration::ZERO)
                .await?;
            let n = msgs.len();
            for m in msgs {
                match handlers::submit(&self.ctx, &m.message_id, &m.body).await {
                    Ok(_) => {
                        report.submitted += 1;
                        self.queue.ack(&submit_q, &m.receipt).await?;
                    }
                    Err(e) if e.is_retryable() => {
                        warn!(message_id = %m.message_id, error = %e, "submit will be retried");
                        self.queue
                            .release(&submit_q, &m.receipt, Duration::from_secs(1))
                            .await?;
                    }
                    Err(e) => {
                        warn!(message_id = %m.message_id, error = %e, "submit rejected; message dead-lettered");
                        report.rejected.push(e.to_string());
                        self.queue
                            .dead_letter(&submit_q, &m, &e.to_string())
                            .await?;
                    }
                }
            }
            if n < 10 {
                break;
            }
        }
        for event in self.fleet.reap()? {
            report.instances_gone += 1;
            if let Err(e) = handlers::handle_interruption(&self.ctx, &event).await {
                warn!(instance = %event.instance, error = %e, "interruption handling failed; next tick retries");
            }
        }
        log_err("scale", handlers::scale(&self.ctx).await.map(|_| ()));
        log_err(
            "reconcile",
            self.fleet.reconcile().map_err(HandlerError::from),
        );
        match handlers::cleanup(&self.ctx).await {
            Ok(r) => report.pools_deleted = r.deleted.len(),
            Err(e) => log_err("cleanup", Err(e)),
        }
        report.live_pools = self.ctx.store.live_pools().await?.len();
        report.pending_submits = self.queue.depth(&submit_q).await?.total();
        if report.submitted + report.instances_gone + report.pools_deleted > 0 {
            info!(?report, "tick");
        }
        Ok(report)
    }
}

fn log_err(what: &str, r: Result<(), HandlerError>) {
    if let Err(e) = r {
        warn!(error = %e, "{what} failed; next tick retries");
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Another process drives this home; nothing was done.
    AlreadyDriven,
    /// Nothing was left to look after.
    Idle,
    /// Told to stop (SIGTERM, from `studio down`): the tick under way was
    /// finished, then the lock released.
    Stopped,
}

/// Whether anything needs a driver: a pool (its workers, its grace) or a
/// submit message not yet handled.
///
/// # Errors
/// Database errors.
pub async fn needs_driver(be: &LocalBackend) -> Result<bool, PortError> {
    Ok(
        be.queue.depth(&be.ctx.settings.submit_queue).await?.total() > 0
            || !be.ctx.store.live_pools().await?.is_empty(),
    )
}

/// Drives the home until nothing is left, if no other process does.
///
/// # Errors
/// The lock file cannot be opened, or the database fails.
pub async fn serve(be: &LocalBackend, every: Duration) -> Result<Served, PortError> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    serve_until(be, every, stop).await
}

/// [`serve`], until `stop` turns true: the tick under way is finished (a
/// handler is never cut short), then the lock is released and the driver
/// leaves, launching nothing more.
///
/// # Errors
/// The lock file cannot be opened, or the database fails.
pub async fn serve_until(
    be: &LocalBackend,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Served, PortError> {
    let path = be.driver_lock_path();
    let io = |e: std::io::Error| PortError::backend("local driver", e);
    let Some(mut held) = lock::try_lock(&path).map_err(io)? else {
        return Ok(Served::AlreadyDriven);
    };
    let d = be.driver();
    let mut failures = 0u32;
    // A submit wakes the driver at once; scaling, reaping and cleanup run
    // on the tick.
    let mut submits = be
        .db
        .wake()
        .subscribe(&crate::wake::queue_topic(&be.ctx.settings.submit_queue));
    loop {
        // Who drives, for people and tests (the lock, not this, is the truth).
        let _ = held.set_len(0).and_then(|_| held.rewind());
        let _ = writeln!(held, "{}", std::process::id());
        info!(pid = std::process::id(), "driving");
        loop {
            let idle = match d.tick().await {
                Ok(r) => {
                    failures = 0;
                    r.is_idle()
                }
                // A minute of failures in a row: the database is gone or
                // broken; leave, and let the next command start a driver.
                Err(e) if failures >= 240 => return Err(e),
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "tick failed; retrying");
                    false
                }
            };
            if let Err(e) = gc::prune_ended(be).await {
                warn!(error = %e, "pruning ended jobs failed; next tick retries");
            }
            if let Err(e) = gc::collect_if_due(be, be.ctx.clock.now()).await {
                warn!(error = %e, "collection failed; next tick retries");
            }
            if *stop.borrow() {
                let _ = held.set_len(0);
                info!("told to stop; leaving");
                return Ok(Served::Stopped);
            }
            if idle && !gc::prune_pending(be)? {
                break;
            }
            tokio::select! {
                _ = submits.wait_until(tokio::time::Instant::now() + every) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = held.set_len(0);
        drop(held);
        if !needs_driver(be).await? {
            info!("nothing left to drive; leaving");
            return Ok(Served::Idle);
        }
        match lock::try_lock(&path).map_err(io)? {
            Some(again) => held = again,
            // Someone started driving after we let go: the work is theirs.
            None => return Ok(Served::Idle),
        }
    }
}

impl LocalBackend {
    /// The driver of this home's handlers.
    pub fn driver(&self) -> Driver {
        Driver {
            ctx: self.ctx.clone(),
            queue: self.queue.clone(),
            fleet: self.fleet.clone(),
        }
    }
}
