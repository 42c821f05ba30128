//! The script's run: its process group, its output pumped to the job's
//! log, its progress, and the stops (cancel, notice, shutdown, limits).

use crate::handlers::Ctx;
use crate::ids::JobId;
use crate::job::Job;
use crate::notice::Notice;
use crate::ports::ArtifactStore;
use crate::progress;
use crate::worker::collect::{
    fail_to_start, finish, hand_back, last_lines, mark_script_ended, save_outputs, sync_checkpoint,
    RunEnd, Saved,
};
use crate::worker::config::WorkerConfig;
use crate::worker::environment::{prepare, AttemptDirs};
use crate::worker::limits::{allowed_cpus, Limits};
use crate::worker::liveness::{end_over_budget, over_budget, Seen};
use crate::worker::process::signal_group;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

pub(crate) enum Stop {
    Cancelled,
    /// The metadata service gave notice.
    Preempted(String),
    MaxDuration(Duration),
    Shutdown,
    /// The record moved on without us (our lease lapsed and another took over).
    Lost,
    /// The job's cost would pass its `max_cost_cents` before the next check.
    Budget(String),
    /// Over its `--ram` on this machine ([`crate::worker::limits`]): killed at once.
    Memory(String),
}

pub(crate) async fn run_attempt(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &mut watch::Receiver<bool>,
    (seen, notices): (&mut watch::Receiver<Seen>, &mut watch::Receiver<Notice>),
    progress_tx: &watch::Sender<Option<f32>>,
) -> RunEnd {
    let id = job.id.clone();
    let attempt = job.attempt;
    let me = format!("worker:{}", cfg.instance);
    let dirs = AttemptDirs::new(&cfg.work_root, &id, attempt);
    let mut saved = Saved::default();
    info!(job_id = %id, attempt, "running");
    if attempt > 1 {
        let line = format!("[studio] --- attempt {attempt} on {} ---\n", cfg.instance);
        let _ = artifacts.append_log(&id, line.as_bytes()).await;
    }

    // The attempt's own user (cloud machines), and the check that it
    // cannot reach the machine's credentials.
    let lease = match cfg.job_users {
        Some(users) => {
            let state = cfg.work_root.join(".uids");
            match tokio::task::spawn_blocking(move || users.lease(&state)).await {
                Ok(Ok(l)) => Some(l),
                Ok(Err(e)) => {
                    let why = format!("no user to run the job as: {e}");
                    return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
                }
                Err(e) => {
                    let why = format!("no user to run the job as: {e}");
                    return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
                }
            }
        }
        None => None,
    };
    let ids = lease.as_ref().map(|l| l.ids());
    if let Some((uid, gid)) = ids {
        if let Some(open) = metadata_open(cfg, uid, gid).await {
            // Not the job's fault: it runs elsewhere, and this machine
            // takes no more work.
            tracing::error!(job_id = %id, uid, endpoint = %open, "the metadata endpoint answers the job's user; refusing to run jobs here");
            let line = format!(
                "[studio] {} refused the job: its metadata endpoint {open} answers the job's user (the block is missing); the job runs elsewhere\n",
                cfg.instance
            );
            let _ = artifacts.append_log(&id, line.as_bytes()).await;
            hand_back(
                ctx,
                &job,
                attempt,
                "the machine's metadata endpoint was open to jobs",
                &me,
            )
            .await;
            return RunEnd { preempted: true };
        }
    }
    let python = match prepare(artifacts, cfg, ids, &job, &dirs, &mut saved, seen.clone()).await {
        Ok(python) => python,
        Err(why) => return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await,
    };
    match *seen.borrow() {
        Seen::Cancelled | Seen::Lost => {
            info!(job_id = %id, "attempt ended before its script started");
            return RunEnd::default();
        }
        Seen::Ours | Seen::Warned => {}
    }
    let mut cmd = Command::new(&python);
    if ids.is_some() {
        // Nothing of the worker's environment: what a machine's script
        // needs (PATH, locale, proxies) and what the job set.
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if PASSED_ON.contains(&name.as_ref()) || name.starts_with("LC_") {
                cmd.env(k, v);
            }
        }
    }
    cmd.arg(&job.spec.entrypoint)
        .args(&job.spec.args)
        .current_dir(&dirs.workspace)
        .env("TMPDIR", dirs.attempt.join("tmp"))
        .envs(&job.spec.env)
        .env("STUDIO_JOB_ID", id.as_str())
        .env("STUDIO_ATTEMPT", attempt.to_string())
        .env("STUDIO_CHECKPOINT_DIR", &dirs.checkpoints)
        .env("STUDIO_OUTPUT_DIR", &dirs.outputs)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((uid, gid)) = ids {
        let user = format!("studio-job-{uid}");
        cmd.env("HOME", &dirs.workspace)
            .env("USER", &user)
            .env("LOGNAME", &user);
        // Its own uid and group, and it dies with the worker.
        crate::worker::users::run_as(&mut cmd, uid, gid);
    } else {
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If the worker dies, so does its script, as on a real machine.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let limits = if cfg.local_limits {
        Limits::for_request(&job.spec.resources, &allowed_cpus(), id.as_str())
    } else {
        Limits::default()
    };
    limits.apply(&mut cmd, &job.spec.env);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start {}: {e}", python.display());
            return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
        }
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    // Files are the job's only if its user owns them (where it has one).
    let owner = ids.map(|(uid, _)| uid);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, tx));
    }

    let mut buf: Vec<u8> = Vec::new();
    let mut flush_tick = interval(cfg.log_every);
    let mut tail: Vec<u8> = Vec::new();
    // The loop's own checks (what the heartbeat saw, the kill after the
    // grace, the maximum duration) at least every second: they cost no
    // request, while the heartbeat's read of the record may be slower.
    let mut beat = interval(cfg.heartbeat.min(Duration::from_secs(1)));
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let max = job.spec.max_duration_secs.map(Duration::from_secs);
    let mut last_sync = Instant::now();
    let mut stop: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut reports = progress::Reports::default();
    let mut memory_tick = interval(Duration::from_millis(500));
    let status = loop {
        let mut new_stop = None;
        tokio::select! {
            st = child.wait() => break st,
            Some(chunk) = rx.recv() => {
                buf.extend_from_slice(&chunk);
                keep_tail(&mut tail, &chunk);
                if reports.output(&chunk) {
                    progress_tx.send_replace(reports.latest());
                }
            }
            _ = flush_tick.tick() => flush(artifacts, &id, &mut buf).await,
            _ = memory_tick.tick(), if limits.memory_mib.is_some() && stop.is_none() => {
                if let Some(why) = limits.over(pgid) {
                    signal_group(pgid, libc::SIGKILL);
                    new_stop = Some(Stop::Memory(why));
                }
            }
            r = shutdown.changed(), if stop.is_none() => {
                let _ = r;
                new_stop = Some(Stop::Shutdown);
            }
            // The notice watch (`liveness::spawn_notices`): acted on as soon
            // as it changes, not at the next beat.
            Ok(()) = notices.changed(), if stop.is_none() => {
                match notices.borrow_and_update().clone() {
                    Notice::Terminate(why) => new_stop = Some(Stop::Preempted(why)),
                    Notice::Rebalance => info!("rebalance recommendation; the job goes on"),
                    Notice::Clear => {}
                }
            }
            _ = beat.tick() => {
                if reports.file(&dirs.checkpoints, owner) {
                    progress_tx.send_replace(reports.latest());
                }
                if last_sync.elapsed() >= cfg.checkpoint_every {
                    last_sync = Instant::now();
                    sync_checkpoint(ctx, artifacts, &id, attempt, &dirs.checkpoints, owner, &mut saved).await;
                }
                // A notice already standing when the script started.
                if stop.is_none() {
                    if let Notice::Terminate(why) = &*notices.borrow() {
                        new_stop = Some(Stop::Preempted(why.clone()));
                    }
                }
                // The flag as well as its change: a stop must not depend on
                // which wait saw the change first (the bench once saw a
                // SIGTERM during an attempt go unanswered until its end).
                if stop.is_none() && new_stop.is_none() && *shutdown.borrow() {
                    new_stop = Some(Stop::Shutdown);
                }
                if stop.is_none() && new_stop.is_none() {
                    new_stop = match *seen.borrow() {
                        Seen::Cancelled => Some(Stop::Cancelled),
                        Seen::Lost => Some(Stop::Lost),
                        // The control plane heard the spot warning first:
                        // the same graceful path as our own notice.
                        Seen::Warned => Some(Stop::Preempted("spot interruption warning".into())),
                        Seen::Ours => None,
                    };
                    if let Some(m) = max.filter(|m| started.elapsed() >= *m) {
                        new_stop.get_or_insert(Stop::MaxDuration(m));
                    }
                    if let Some(b) = over_budget(&job, ctx.clock.now(), cfg.heartbeat) {
                        new_stop.get_or_insert(Stop::Budget(b));
                    }
                }
                if kill_at.is_some_and(|k| Instant::now() >= k) {
                    signal_group(pgid, libc::SIGKILL);
                }
            }
        }
        if let Some(s) = new_stop {
            let what = match &s {
                Stop::Cancelled => "job cancelled".to_string(),
                Stop::MaxDuration(m) => {
                    format!("max duration {} exceeded", humantime::format_duration(*m))
                }
                Stop::Shutdown => "worker shutting down".to_string(),
                Stop::Preempted(why) => format!("interruption notice: {why}"),
                Stop::Lost => "attempt taken over elsewhere".to_string(),
                Stop::Budget(why) | Stop::Memory(why) => why.clone(),
            };
            info!(job_id = %id, reason = %what, "stopping script with SIGTERM");
            signal_group(pgid, libc::SIGTERM);
            let grace = if matches!(s, Stop::Preempted(_)) {
                cfg.notice.grace()
            } else {
                cfg.term_grace
            };
            kill_at = Some(Instant::now() + grace);
            stop = Some(s);
        }
    };
    // Anything the script left behind in its process group goes too; and,
    // where the attempt has a user of its own, every process of that user
    // (a child that left the group with setsid included), before its files
    // are read, so nothing changes them while they are.
    signal_group(pgid, libc::SIGKILL);
    if let Some((uid, _)) = ids {
        let _ = tokio::task::spawn_blocking(move || crate::worker::users::clear(uid)).await;
    }
    while let Ok(Some(chunk)) = timeout(Duration::from_secs(2), rx.recv()).await {
        buf.extend_from_slice(&chunk);
        keep_tail(&mut tail, &chunk);
        reports.output(&chunk);
    }
    let last_lines = last_lines(&tail);
    flush(artifacts, &id, &mut buf).await;
    // The last checkpoint and the outputs are saved (and recorded) before
    // the end is, so the next attempt and whoever waits on the job see them.
    sync_checkpoint(
        ctx,
        artifacts,
        &id,
        attempt,
        &dirs.checkpoints,
        owner,
        &mut saved,
    )
    .await;
    let outputs = save_outputs(artifacts, &job, attempt, &dirs, owner).await;
    // The script's last word on its progress goes with its end.
    reports.file(&dirs.checkpoints, owner);
    if ids.is_some() {
        crate::worker::environment::remove(&dirs);
    }
    mark_script_ended(ctx, &id, attempt, &cfg.instance, outputs, reports.latest()).await;

    let (code, signal) = match &status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            (st.code(), st.signal())
        }
        Err(_) => (None, None),
    };
    match stop {
        None => {
            let failure = match (code, signal) {
                (Some(_), _) => None,
                (None, Some(sig)) => Some(format!("killed by signal {sig}")),
                (None, None) => Some("lost track of the script".to_string()),
            };
            finish(ctx, &id, attempt, &cfg.instance, code, failure, last_lines).await;
            RunEnd::default()
        }
        Some(stop @ (Stop::MaxDuration(_) | Stop::Memory(_))) => {
            let why = match stop {
                Stop::Memory(why) => why,
                _ => format!(
                    "max duration {} exceeded",
                    humantime::format_duration(max.unwrap_or_default())
                ),
            };
            finish(
                ctx,
                &id,
                attempt,
                &cfg.instance,
                code,
                Some(why),
                last_lines,
            )
            .await;
            RunEnd::default()
        }
        Some(Stop::Cancelled) | Some(Stop::Lost) => RunEnd::default(),
        Some(Stop::Budget(why)) => {
            end_over_budget(ctx, &id, attempt, &cfg.instance, &why, last_lines).await;
            RunEnd::default()
        }
        Some(Stop::Shutdown) => {
            hand_back(
                ctx,
                &job,
                attempt,
                "worker stopped (instance terminating)",
                &me,
            )
            .await;
            RunEnd::default()
        }
        Some(Stop::Preempted(why)) => {
            hand_back(ctx, &job, attempt, &why, &me).await;
            RunEnd { preempted: true }
        }
    }
}

/// What of the worker's environment a script on a machine gets.
const PASSED_ON: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The first metadata endpoint that answers `uid:gid`, if any does.
async fn metadata_open(cfg: &WorkerConfig, uid: u32, gid: u32) -> Option<std::net::SocketAddr> {
    if cfg.metadata.is_empty() {
        return None;
    }
    let endpoints = cfg.metadata.clone();
    let wait = Duration::from_secs(2);
    let r = tokio::task::spawn_blocking(move || {
        crate::worker::users::reachable_as(uid, gid, &endpoints, wait)
    })
    .await;
    match r {
        Ok(Ok(open)) => open,
        // Unchecked is not safe: as if open.
        _ => cfg.metadata.first().copied(),
    }
}

pub(crate) async fn flush(artifacts: &dyn ArtifactStore, id: &JobId, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    if let Err(e) = artifacts.append_log(id, buf).await {
        warn!(job_id = %id, error = %e, "log upload failed; lines dropped");
    }
    buf.clear();
}

async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut chunk = vec![0u8; 8192];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 || tx.send(chunk[..n].to_vec()).await.is_err() {
            break;
        }
    }
}

/// Keeps the last 8 KiB of output.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > 8192 {
        tail.drain(..tail.len() - 8192);
    }
}
