//! `studio down [--force]`: stop this home's driver and workers, leaving no
//! process of the home.
//!
//! The order keeps every job as it should be: the queues are held first (no
//! worker starts a new job), then the driver is stopped and its lock kept
//! (nothing launches a worker or replaces one); idle workers get SIGTERM
//! (an idle worker just leaves), busy ones are left to finish their job
//! (SIGTERM would make them hand it back), or with `--force` their jobs are
//! cancelled as `studio cancel` does; each leaves once idle. Then the dead
//! workers are reaped and pools with nothing queued are deleted at once
//! (no grace), so no later command starts anything for them. Queued jobs
//! are kept: the next command on this home starts a driver for them.

use crate::backend::{ensure_driver, open};
use crate::context::{Env, Globals};
use crate::error::CliError;
use clap::Args;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::clock::SystemClock;
use studio_core::handlers::{self, CancelOutcome};
use studio_core::ids::{InstanceId, JobId};
use studio_core::job::JobState;
use studio_core::ports::{JobStore as _, WorkQueue as _};
use studio_local::down as home;
use studio_local::LocalBackend;
use tokio::time::Instant;

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Cancel running jobs (as `studio cancel` does) instead of waiting for them.
    #[arg(long)]
    pub force: bool,
}

/// How long a driver or an idle worker gets to leave on SIGTERM.
const GRACE: Duration = Duration::from_secs(30);
/// How often a waiting `down` says it still waits.
const SAY_EVERY: Duration = Duration::from_secs(10);

pub(crate) async fn down(g: &Globals, env: &Env, a: DownArgs) -> Result<ExitCode, CliError> {
    let where_ = g.home.display().to_string();
    if !g.home.join("studio.sqlite3").exists() {
        eprintln!("studio: nothing is running in {where_}");
        return Ok(ExitCode::SUCCESS);
    }
    // Opened, never driven: no driver is started from here.
    let be = open(g).await?;
    let Some(queues) = home::hold_queues(&be)? else {
        return Err(CliError::Other(anyhow::anyhow!(
            "another studio down is stopping {where_}"
        )));
    };
    let driver = home::stop_driver(&be, GRACE).await?;
    let workers_at_start = be.fleet.live_workers()?.len();
    let running = running_jobs(&be).await?;
    let mut cancelled = Vec::new();
    if a.force {
        let by = format!("cli:{} (studio down --force)", env.user);
        for id in running.values() {
            if cancel(&be, id, &by).await? {
                cancelled.push(id.clone());
            }
        }
        if !cancelled.is_empty() {
            eprintln!(
                "studio: cancelled {} running job(s): {}",
                cancelled.len(),
                list(&cancelled)
            );
        }
    } else if !running.is_empty() {
        let ids: Vec<JobId> = running.values().cloned().collect();
        eprintln!(
            "studio: waiting for {} running job(s) to finish: {} (Ctrl-C stops waiting; studio down --force cancels them)",
            ids.len(),
            list(&ids)
        );
    }
    let stopped = match stop_workers(&be).await? {
        Some(n) => n,
        None => {
            // Ctrl-C: give the home back as it is now.
            let left = running_jobs(&be).await?;
            drop(driver.lock);
            drop(queues);
            ensure_driver(g, &be).await?;
            let ids: Vec<JobId> = left.values().cloned().collect();
            eprintln!(
                "studio: stopped waiting: {} job(s) still running ({}), with their workers; the driver is started again, idle workers come back as work needs them",
                ids.len(),
                list(&ids)
            );
            return Ok(ExitCode::from(130));
        }
    };
    tidy(&be).await?;
    let queued = be.store.list_jobs(None, &[JobState::Queued]).await?.len();
    drop(driver.lock);
    drop(queues);
    if driver.pid.is_none() && workers_at_start == 0 {
        eprintln!("studio: nothing is running in {where_}");
    } else {
        eprintln!(
            "studio: stopped {} and {stopped} worker(s) of {where_}",
            if driver.pid.is_some() {
                "the driver"
            } else {
                "no driver (none ran)"
            },
        );
    }
    if queued > 0 {
        eprintln!(
            "studio: {queued} queued job(s) kept: they start with the next studio command on this home"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Running jobs of this home, by the worker that runs them.
async fn running_jobs(be: &LocalBackend) -> Result<HashMap<InstanceId, JobId>, CliError> {
    Ok(be
        .store
        .list_jobs(None, &[JobState::Running])
        .await?
        .into_iter()
        .filter_map(|j| Some((j.instance?, j.id)))
        .collect())
}

/// Cancels a running job as `studio cancel` does; whether it was.
async fn cancel(be: &LocalBackend, id: &JobId, by: &str) -> Result<bool, CliError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match handlers::cancel(be.store.as_ref(), &SystemClock, id, by).await? {
            CancelOutcome::Cancelled => return Ok(true),
            CancelOutcome::AlreadyEnded(_) | CancelOutcome::NotFound => return Ok(false),
            CancelOutcome::Busy if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            CancelOutcome::Busy => return Ok(false),
        }
    }
}

/// SIGTERM to each worker once it is idle, until none is left; how many
/// were stopped, or `None` on Ctrl-C (or SIGTERM to this command).
async fn stop_workers(be: &LocalBackend) -> Result<Option<usize>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
    let mut term = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
    let started = Instant::now();
    let mut said = Instant::now();
    let mut sent: HashMap<InstanceId, Instant> = HashMap::new();
    loop {
        let workers = be.fleet.live_workers()?;
        if workers.is_empty() {
            return Ok(Some(sent.len()));
        }
        let running = running_jobs(be).await?;
        for w in &workers {
            match sent.get(&w.id) {
                Some(at) if at.elapsed() >= GRACE => {
                    tracing::warn!(instance = %w.id, "worker ignored SIGTERM; killing it");
                    home::signal(w.pid, libc::SIGKILL);
                }
                Some(_) => {}
                None => {
                    // An item received just before the queues were held is
                    // about to be claimed: wait for its claim.
                    let queue = be.ctx.settings.work_queue(&w.group);
                    let claiming = be.queue.depth(&queue).await.is_ok_and(|d| d.in_flight > 0);
                    if !claiming && !running.contains_key(&w.id) && !home::runs_something(w.pid) {
                        home::signal(w.pid, libc::SIGTERM);
                        sent.insert(w.id.clone(), Instant::now());
                    }
                }
            }
        }
        if said.elapsed() >= SAY_EVERY && !running.is_empty() {
            said = Instant::now();
            let ids: Vec<JobId> = running.values().cloned().collect();
            eprintln!(
                "studio: still waiting ({}s) for {}",
                started.elapsed().as_secs(),
                list(&ids)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = int.recv() => return Ok(None),
            _ = term.recv() => return Ok(None),
        }
    }
}

/// With every worker gone: what the driver would record (each worker's end,
/// and what its session left is killed), and pools with nothing queued or
/// running deleted now rather than after their grace.
async fn tidy(be: &LocalBackend) -> Result<(), CliError> {
    for event in be.fleet.reap()? {
        if let Err(e) = handlers::handle_interruption(&be.ctx, &event).await {
            tracing::warn!(instance = %event.instance, error = %e, "recording a worker's end failed; the next driver retries");
        }
    }
    let mut ctx = be.ctx.clone();
    ctx.settings.pool_grace = Duration::ZERO;
    // The first pass marks idle pools, the second deletes them.
    for _ in 0..2 {
        if let Err(e) = handlers::cleanup(&ctx).await {
            tracing::warn!(error = %e, "deleting idle pools failed; the next driver retries");
        }
    }
    Ok(())
}

fn list(ids: &[JobId]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
