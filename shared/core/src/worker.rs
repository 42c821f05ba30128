//! The worker loop, the same on every backend: receive a work item → claim
//! the job → fetch the workspace → run `python3 <script> <args>` → stream its
//! output to the job's log → heartbeat the lease → record the end → ack.
//!
//! While the script runs the worker watches the job record (a `cancel`
//! stops the script with SIGTERM, then SIGKILL after a grace period), the
//! job's maximum duration, and its own shutdown signal (the machine is going
//! away: stop the script and hand the job back at once).
//!
//! **Liveness.** The job record is the lock: the claim is a compare-and-set,
//! the work item is acked right after it, and from claim to the recorded end
//! (workspace download, virtualenv build, the run, the last checkpoint
//! upload) a heartbeat task writes the time on the record. The sweep in
//! `scale` requeues an attempt whose heartbeat is older than the bound, so
//! a run is bounded by nothing a queue imposes (SQS caps a message's
//! visibility at 12 hours; ML jobs run for days).

use crate::clock::Timestamp;
use crate::handlers::{claim_work, mutate_job, requeue, Claim, Ctx, HandlerError, Step};
use crate::ids::{InstanceId, JobId, PoolKey};
use crate::job::{usd, CheckpointRef, Job, JobState};
use crate::notice::{Notice, NoticeSource};
use crate::outputs::OutputsRef;
use crate::ports::{ArtifactStore, InputSource, PortError, Received};
use crate::progress;
use crate::resources::Cloud;
use sha2::Digest;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval, timeout, Instant, MissedTickBehavior};
use tracing::{info, warn};

/// How often a worker polls, reads, beats, tells the fleet and flushes its
/// log. On a cloud machine each is an API call (SQS, DynamoDB, EC2, S3), so
/// these set what a job costs in requests: `studio worker` uses
/// [`Cadence::CLOUD`] there, and the request-count measurement
/// (`tests/tests/chaos_aws.rs`) uses the same values.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub poll_wait: Duration,
    pub heartbeat: Duration,
    pub beat_every: Duration,
    pub seen_every: Duration,
    pub notice_every: Duration,
    pub log_every: Duration,
    pub progress_every: Duration,
}

impl Cadence {
    /// A worker on an EC2 or GCE machine.
    pub const CLOUD: Cadence = Cadence {
        poll_wait: Duration::from_secs(1),
        heartbeat: Duration::from_secs(1),
        // A DynamoDB write (the bound, STUDIO_HEARTBEAT_TIMEOUT, is 2 min).
        beat_every: Duration::from_secs(30),
        // A tag write on the instance: EC2's mutating-call rate is shared by
        // the account, so every few minutes (the bound is 15).
        seen_every: Duration::from_secs(300),
        notice_every: Duration::from_secs(5),
        // Each flush is one object on S3.
        log_every: Duration::from_secs(3),
        // With the heartbeat's own write: progress costs no request.
        progress_every: Duration::from_secs(30),
    };

    /// Sets these on `cfg`.
    pub fn apply(&self, cfg: &mut WorkerConfig) {
        cfg.poll_wait = self.poll_wait;
        cfg.heartbeat = self.heartbeat;
        cfg.beat_every = self.beat_every;
        cfg.seen_every = self.seen_every;
        cfg.notice_every = self.notice_every;
        cfg.log_every = self.log_every;
        cfg.progress_every = self.progress_every;
    }
}

#[derive(Clone)]
pub struct WorkerConfig {
    pub pool: PoolKey,
    pub instance: InstanceId,
    /// How long a received item stays invisible to other workers while it
    /// is claimed (it is acked right after the claim).
    pub lease: Duration,
    /// How often the heartbeat is written on the job record (the control
    /// plane's bound, `Settings::heartbeat_timeout`, is several of these).
    pub beat_every: Duration,
    /// Long-poll wait of one receive.
    pub poll_wait: Duration,
    /// How often the running job's record is read (cancel, warnings, takeover).
    pub heartbeat: Duration,
    /// How often the worker tells the fleet it is alive, busy or idle
    /// (`Fleet::worker_seen`; the control plane retires silent machines).
    pub seen_every: Duration,
    /// Leave after this long without work and with an empty queue.
    pub idle_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a script is stopped.
    pub term_grace: Duration,
    /// Runs go under `<work_root>/<job>/attempt-<n>/workspace`.
    pub work_root: PathBuf,
    pub python: String,
    /// Where interruption notices come from (the machine's metadata service).
    pub notice: Arc<dyn NoticeSource>,
    /// How often the notice source is asked.
    pub notice_every: Duration,
    /// Upload the checkpoint directory at most this often (and only when it changed).
    pub checkpoint_every: Duration,
    /// How often output is shipped to the job's log (each flush is one
    /// object on S3, so cloud workers flush every few seconds).
    pub log_every: Duration,
    /// A changed progress ([`crate::progress`]) is written on the record
    /// at most this often (with a heartbeat when it is one's multiple).
    pub progress_every: Duration,
    /// `Some((uid, gid))`: scripts run as this user (cloud machines: an
    /// unprivileged user the bootstrap creates and cuts off from the
    /// instance metadata service, so a script never gets the machine's
    /// role credentials). Its attempt directory is handed to it.
    pub run_as: Option<(u32, u32)>,
    /// `Some(dir)`: each job runs in a virtualenv under `dir`, built from its
    /// `requirements.txt` and cached by the hash of that file and the
    /// interpreter. `None`: scripts run with `python` as it is.
    pub venv_root: Option<PathBuf>,
    /// Fetches jobs' `inputs`; `None`: a job that names any fails to start,
    /// saying so.
    pub inputs: Option<Arc<dyn InputSource>>,
}

/// Largest checkpoint directory the worker uploads.
pub const CHECKPOINT_LIMIT: u64 = 2 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// No work for `idle_timeout` and the queue is empty.
    Idle,
    /// Told to stop.
    Shutdown,
    /// The pool's queue is gone (cleanup deleted the pool).
    PoolGone,
    /// The machine is being reclaimed; the job was handed back.
    Preempted,
}

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
    let mut idle_since = ctx.clock.now();
    let mut draining = false;
    let mut last_notice: Option<Instant> = None;
    info!(pool = %cfg.pool, instance = %cfg.instance, "worker started");
    loop {
        if *shutdown.borrow() {
            return Ok(WorkerExit::Shutdown);
        }
        if last_notice.is_none_or(|t| t.elapsed() >= cfg.notice_every) {
            last_notice = Some(Instant::now());
            match cfg.notice.check().await {
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
        }
        let idle_for = ctx.clock.now().since(idle_since);
        if draining {
            if idle_for >= cfg.idle_timeout {
                leave(ctx, cfg).await?;
                return Ok(WorkerExit::Idle);
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.notice_every.min(cfg.poll_wait)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let received = tokio::select! {
            r = ctx.queue.receive(&queue, 1, cfg.lease, cfg.poll_wait) => r,
            r = shutdown.changed() => {
                if r.is_err() { return Ok(WorkerExit::Shutdown); }
                continue;
            }
        };
        let msgs = match received {
            Ok(m) => m,
            Err(PortError::NotFound(_)) => return Ok(WorkerExit::PoolGone),
            Err(e) => {
                warn!(error = %e, "receive failed");
                tokio::time::sleep(cfg.poll_wait).await;
                continue;
            }
        };
        if msgs.is_empty() {
            if !fixed
                && idle_for >= cfg.idle_timeout
                && ctx.queue.depth(&queue).await.is_ok_and(|d| d.total() == 0)
            {
                // A worker that cannot take its machine out of the group
                // fails, so it is restarted (and the machine is not left
                // running with nothing on it).
                leave(ctx, cfg).await?;
                return Ok(WorkerExit::Idle);
            }
            continue;
        }
        for msg in msgs {
            let preempted = handle_item(ctx, artifacts, cfg, &queue, &msg, &mut shutdown).await;
            idle_since = ctx.clock.now();
            if preempted {
                return Ok(WorkerExit::Preempted);
            }
        }
    }
}

/// An idle worker takes its machine out of the group, lowering the target so
/// it is not replaced.
async fn leave(ctx: &Ctx, cfg: &WorkerConfig) -> Result<(), PortError> {
    info!(instance = %cfg.instance, "idle with an empty queue; terminating this machine");
    ctx.fleet
        .terminate(&cfg.pool, &cfg.instance, true)
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
            let end = run_job(ctx, artifacts, cfg, *job, shutdown).await;
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

#[derive(Default)]
struct RunEnd {
    preempted: bool,
}

enum Stop {
    Cancelled,
    /// The metadata service gave notice.
    Preempted(String),
    MaxDuration(Duration),
    Shutdown,
    /// The record moved on without us (our lease lapsed and another took over).
    Lost,
    /// The job's cost would pass its `max_cost_cents` before the next check.
    Budget(String),
}

/// What the heartbeat task last saw on the job record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Still our attempt.
    Ours,
    /// Still ours, and the cloud warned that the machine will be reclaimed.
    Warned,
    Cancelled,
    /// The record moved on without us (the attempt was declared lost).
    Lost,
}

/// Keeps the claim alive from claim to the recorded end: every
/// `cfg.heartbeat` it reads the record (what it sees goes to the returned
/// channel), and every `cfg.beat_every` it writes the time on it. Dropping
/// the returned guard stops it.
fn spawn_heartbeat(
    ctx: &Ctx,
    cfg: &WorkerConfig,
    id: &JobId,
    attempt: u32,
    zone: Option<String>,
    progress: watch::Receiver<Option<f32>>,
) -> (watch::Receiver<Seen>, AbortOnDrop) {
    let (tx, rx) = watch::channel(Seen::Ours);
    let (ctx, id, me) = (ctx.clone(), id.clone(), cfg.instance.clone());
    let (check, beat, progress_every) = (cfg.heartbeat, cfg.beat_every, cfg.progress_every);
    let task = tokio::spawn(async move {
        let mut last_write = Instant::now();
        let mut last_progress = Instant::now();
        let mut tick = interval(check.min(beat));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Monotonic: a wall-clock step neither skips nor doubles beats.
            let due = last_write.elapsed() >= beat;
            let report = *progress.borrow();
            let progress_due = due || last_progress.elapsed() >= progress_every;
            let now = ctx.clock.now();
            let r = mutate_job(ctx.store.as_ref(), &id, |j| {
                if j.state == JobState::Cancelled {
                    return Step::Keep(Seen::Cancelled);
                }
                if !j.runs(attempt, &me) {
                    return Step::Keep(Seen::Lost);
                }
                let seen = if j.warned_at.is_some() {
                    Seen::Warned
                } else {
                    Seen::Ours
                };
                // The zone goes on the attempt with the first look.
                let zoned = match (
                    &zone,
                    j.attempts.iter_mut().rev().find(|a| a.number == attempt),
                ) {
                    (Some(z), Some(a)) if a.zone.is_none() => {
                        a.zone = Some(z.clone());
                        true
                    }
                    _ => false,
                };
                if due {
                    j.heartbeat_at = Some(now);
                }
                let progressed = match report {
                    Some(p) if progress_due && j.progress != Some(p) => {
                        j.progress = Some(p);
                        true
                    }
                    _ => false,
                };
                if due || zoned || progressed {
                    Step::Write(seen)
                } else {
                    Step::Keep(seen)
                }
            })
            .await;
            match r {
                Ok(Some((_, seen))) => {
                    if due && matches!(seen, Seen::Ours | Seen::Warned) {
                        last_write = Instant::now();
                    }
                    if progress_due {
                        last_progress = Instant::now();
                    }
                    let _ = tx.send(seen);
                }
                Ok(None) => {
                    let _ = tx.send(Seen::Lost);
                }
                Err(e) => warn!(job_id = %id, error = %e, "heartbeat failed; retrying"),
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// Tells the fleet every `cfg.seen_every` that this worker lives, for as
/// long as the returned guard is held.
fn spawn_seen(ctx: &Ctx, cfg: &WorkerConfig) -> AbortOnDrop {
    let (ctx, pool, me, every) = (
        ctx.clone(),
        cfg.pool.clone(),
        cfg.instance.clone(),
        cfg.seen_every,
    );
    AbortOnDrop(tokio::spawn(async move {
        // The first after one period: the bound counts from the launch.
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = ctx.fleet.worker_seen(&pool, &me, ctx.clock.now()).await {
                warn!(error = %e, "could not tell the fleet this worker lives");
            }
        }
    }))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one claimed attempt to its end and records it.
async fn run_job(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &mut watch::Receiver<bool>,
) -> RunEnd {
    let id = job.id.clone();
    let attempt = job.attempt;
    let zone = cfg.notice.zone().await;
    let (progress_tx, progress_rx) = watch::channel(None::<f32>);
    let (mut seen, _beating) = spawn_heartbeat(ctx, cfg, &id, attempt, zone, progress_rx);
    // Busy: the group must not pick this machine for scale-in or rebalancing.
    if let Err(e) = ctx.fleet.protect(&cfg.pool, &cfg.instance, true).await {
        warn!(error = %e, "could not protect this machine from scale-in");
    }
    let end = run_attempt(ctx, artifacts, cfg, job, shutdown, &mut seen, &progress_tx).await;
    if let Err(e) = ctx.fleet.protect(&cfg.pool, &cfg.instance, false).await {
        warn!(error = %e, "could not lift this machine's scale-in protection");
    }
    end
}

async fn run_attempt(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    job: Job,
    shutdown: &mut watch::Receiver<bool>,
    seen: &mut watch::Receiver<Seen>,
    progress_tx: &watch::Sender<Option<f32>>,
) -> RunEnd {
    let id = job.id.clone();
    let attempt = job.attempt;
    let me = format!("worker:{}", cfg.instance);
    let job_dir = cfg.work_root.join(id.as_str());
    let ws = job_dir.join(format!("attempt-{attempt}")).join("workspace");
    let ckpt = job_dir
        .join(format!("attempt-{attempt}"))
        .join("checkpoints");
    let out_dir = job_dir.join(format!("attempt-{attempt}")).join("outputs");
    let mut saved = Saved::default();
    info!(job_id = %id, attempt, "running");
    if attempt > 1 {
        let line = format!("[studio] --- attempt {attempt} on {} ---\n", cfg.instance);
        let _ = artifacts.append_log(&id, line.as_bytes()).await;
    }

    let prepared = async {
        let bytes = artifacts
            .get_workspace(&job.spec.workspace)
            .await
            .map_err(|e| e.to_string())?;
        crate::workspace::unpack(&bytes, &ws).map_err(|e| e.to_string())?;
        for i in &job.spec.inputs {
            let Some(src) = &cfg.inputs else {
                return Err(format!(
                    "input {}: this worker has no way to fetch it",
                    i.url
                ));
            };
            let dest = ws.join(&i.path);
            let got = src
                .fetch(&i.url, &dest)
                .await
                .map_err(|e| format!("input {}: {e}", i.url))?;
            let line = format!(
                "[studio] input {} -> {}: {} file(s), {} bytes\n",
                i.url, i.path, got.files, got.bytes
            );
            let _ = artifacts.append_log(&id, line.as_bytes()).await;
        }
        std::fs::create_dir_all(&ckpt).map_err(|e| format!("checkpoint dir: {e}"))?;
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("output dir: {e}"))?;
        // The checkpoint the record names, so the script resumes instead of
        // starting over. Only a recorded one is fetched: under least
        // privilege a probe for a missing key is a 403, not a "none".
        if let Some(c) = &job.checkpoint {
            let tar = artifacts
                .get_checkpoint(&id, c)
                .await
                .map_err(|e| format!("checkpoint of attempt {}: {e}", c.attempt))?;
            let sha = hex::encode(sha2::Sha256::digest(&tar));
            if sha != c.sha256 {
                return Err(format!(
                    "checkpoint of attempt {} is corrupt (sha256 {sha}, recorded {})",
                    c.attempt, c.sha256
                ));
            }
            crate::workspace::unpack(&tar, &ckpt).map_err(|e| format!("checkpoint: {e}"))?;
            saved.sha256 = Some(sha);
        }
        saved.fingerprint = Some(fingerprint(&ckpt).map_err(|e| format!("checkpoint dir: {e}"))?);
        Ok::<(), String>(())
    }
    .await;
    if let Err(why) = prepared {
        return fail_to_start(
            ctx,
            &id,
            attempt,
            &cfg.instance,
            format!("workspace: {why}"),
        )
        .await;
    }

    let python = match &cfg.venv_root {
        None => cfg.python.clone().into(),
        Some(root) => match ensure_venv(root, &cfg.python, &ws).await {
            Ok((python, created)) => {
                if created {
                    let line = format!(
                        "[studio] built the python environment {}\n",
                        python.display()
                    );
                    let _ = artifacts.append_log(&id, line.as_bytes()).await;
                }
                python
            }
            Err(why) => {
                let why = format!("python environment: {why}");
                return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
            }
        },
    };
    match *seen.borrow() {
        Seen::Cancelled | Seen::Lost => {
            info!(job_id = %id, "attempt ended before its script started");
            return RunEnd::default();
        }
        Seen::Ours | Seen::Warned => {}
    }
    if let Some((uid, gid)) = cfg.run_as {
        let attempt_dir = job_dir.join(format!("attempt-{attempt}"));
        if let Err(e) = chown_tree(&attempt_dir, uid, gid) {
            let why = format!("handing {} to uid {uid}: {e}", attempt_dir.display());
            return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
        }
    }
    let mut cmd = Command::new(&python);
    cmd.arg(&job.spec.entrypoint)
        .args(&job.spec.args)
        .current_dir(&ws)
        .envs(&job.spec.env)
        .env("STUDIO_JOB_ID", id.as_str())
        .env("STUDIO_ATTEMPT", attempt.to_string())
        .env("STUDIO_CHECKPOINT_DIR", &ckpt)
        .env("STUDIO_OUTPUT_DIR", &out_dir)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((uid, gid)) = cfg.run_as {
        cmd.uid(uid).gid(gid).env("HOME", &ws);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // If the worker dies, so does its script, as on a real machine.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start {}: {e}", python.display());
            return fail_to_start(ctx, &id, attempt, &cfg.instance, why).await;
        }
    };
    let pgid = child.id().map_or(0, |p| p as i32);
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
    let mut beat = interval(cfg.heartbeat);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let max = job.spec.max_duration_secs.map(Duration::from_secs);
    let mut last_notice = Instant::now();
    let mut last_sync = Instant::now();
    let mut stop: Option<Stop> = None;
    let mut kill_at: Option<Instant> = None;
    let mut reports = progress::Reports::default();
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
            r = shutdown.changed(), if stop.is_none() => {
                let _ = r;
                new_stop = Some(Stop::Shutdown);
            }
            _ = beat.tick() => {
                if reports.file(&ckpt) {
                    progress_tx.send_replace(reports.latest());
                }
                if last_sync.elapsed() >= cfg.checkpoint_every {
                    last_sync = Instant::now();
                    sync_checkpoint(ctx, artifacts, &id, attempt, &ckpt, &mut saved).await;
                }
                if stop.is_none() && last_notice.elapsed() >= cfg.notice_every {
                    last_notice = Instant::now();
                    match cfg.notice.check().await {
                        Notice::Terminate(why) => new_stop = Some(Stop::Preempted(why)),
                        Notice::Rebalance => info!("rebalance recommendation; the job goes on"),
                        Notice::Clear => {}
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
                Stop::Budget(why) => why.clone(),
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
    // Anything the script left behind in its process group goes too.
    signal_group(pgid, libc::SIGKILL);
    while let Ok(Some(chunk)) = timeout(Duration::from_secs(2), rx.recv()).await {
        buf.extend_from_slice(&chunk);
        keep_tail(&mut tail, &chunk);
        reports.output(&chunk);
    }
    let last_lines = last_lines(&tail);
    flush(artifacts, &id, &mut buf).await;
    // The last checkpoint and the outputs are saved (and recorded) before
    // the end is, so the next attempt and whoever waits on the job see them.
    sync_checkpoint(ctx, artifacts, &id, attempt, &ckpt, &mut saved).await;
    let outputs = save_outputs(artifacts, &job, attempt, &out_dir, &ws).await;
    // The script's last word on its progress goes with its end.
    reports.file(&ckpt);
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
        Some(Stop::MaxDuration(m)) => {
            let why = format!("max duration {} exceeded", humantime::format_duration(m));
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

/// The machine is going away: the job runs again elsewhere at once.
///
/// Except when that would mean moving it to an on-demand pool (a spot job
/// out of attempts with `--fallback-on-demand`): workers never create fleet
/// resources, so the attempt is left to the control plane, which requeues
/// it when the machine's `shutting-down` event arrives or its heartbeat
/// stops.
async fn hand_back(ctx: &Ctx, job: &Job, attempt: u32, why: &str, me: &str) {
    let spot = matches!(job.plan.cloud, Cloud::Ec2spot | Cloud::Gcspot);
    if spot && job.spec.fallback_on_demand && attempt >= ctx.settings.max_attempts.max(1) {
        info!(job_id = %job.id, "out of spot attempts; the control plane moves the job to on-demand");
        return;
    }
    match requeue(ctx, &job.id, attempt, why, me).await {
        Ok(r) => info!(job_id = %job.id, outcome = ?r, "job handed back"),
        Err(e) => {
            warn!(job_id = %job.id, error = %e, "hand-back failed; the sweep requeues it when the heartbeat stops")
        }
    }
}

/// What the worker knows of its attempt's checkpoint directory.
#[derive(Default)]
struct Saved {
    /// The directory's fingerprint when it was last uploaded, or when the
    /// attempt started (empty, or as restored): unchanged means nothing to save.
    fingerprint: Option<u64>,
    /// The hash of the last checkpoint this attempt stored.
    sha256: Option<String>,
}

/// Uploads the checkpoint directory if it changed since the last upload and
/// records it on the job. Change is detected from file names, sizes and
/// modification times (cheap: no file is read); packing runs off the
/// runtime's threads, so a large checkpoint never starves the heartbeat.
async fn sync_checkpoint(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    id: &JobId,
    attempt: u32,
    dir: &std::path::Path,
    saved: &mut Saved,
) {
    let d = dir.to_path_buf();
    let Ok(Ok(fp)) = tokio::task::spawn_blocking(move || fingerprint(&d)).await else {
        return;
    };
    if saved.fingerprint == Some(fp) {
        return;
    }
    let d = dir.to_path_buf();
    let tar =
        match tokio::task::spawn_blocking(move || crate::workspace::pack_dir(&d, CHECKPOINT_LIMIT))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(job_id = %id, error = %e, "checkpoint not saved");
                return;
            }
            Err(e) => {
                warn!(job_id = %id, error = %e, "checkpoint not saved");
                return;
            }
        };
    let sha = hex::encode(sha2::Sha256::digest(&tar));
    if saved.sha256.as_deref() == Some(sha.as_str()) {
        saved.fingerprint = Some(fp);
        return;
    }
    let r = CheckpointRef {
        attempt,
        sha256: sha.clone(),
        bytes: tar.len() as u64,
    };
    if let Err(e) = artifacts.put_checkpoint(id, &r, &tar).await {
        warn!(job_id = %id, error = %e, "checkpoint upload failed");
        return;
    }
    let recorded = mutate_job(ctx.store.as_ref(), id, |j| {
        // Never over a later attempt's checkpoint, nor once the next
        // attempt has started (it restored what was recorded before).
        let later = j.checkpoint.as_ref().is_some_and(|c| c.attempt > attempt);
        let next_started =
            j.attempt > attempt + 1 || (j.attempt == attempt + 1 && j.state != JobState::Queued);
        if later || next_started || j.checkpoint.as_ref() == Some(&r) {
            Step::Keep(false)
        } else {
            j.checkpoint = Some(r.clone());
            Step::Write(true)
        }
    })
    .await;
    match recorded {
        Ok(Some((_, true))) => {
            info!(job_id = %id, bytes = tar.len(), "checkpoint saved");
            saved.sha256 = Some(sha);
            saved.fingerprint = Some(fp);
        }
        Ok(_) => {
            saved.sha256 = Some(sha);
            saved.fingerprint = Some(fp);
        }
        Err(e) => warn!(job_id = %id, error = %e, "checkpoint saved but not recorded; retrying"),
    }
}

/// Gives `dir` and everything under it to `uid:gid` (symlinks themselves,
/// never their targets).
fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_tree(&e.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// A hash of every entry's relative path, size and modification time
/// (nanoseconds on Linux file systems).
fn fingerprint(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let meta = e.metadata()?;
            let rel = e.path();
            rel.strip_prefix(dir).unwrap_or(&rel).hash(&mut h);
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(h.finish())
}

/// Records on the attempt that its script is gone and its output shipped
/// (followers of a cancelled job stop waiting for more output then).
async fn mark_script_ended(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    outputs: Option<OutputsRef>,
    progress: Option<f32>,
) {
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), id, |j| {
        match j
            .attempts
            .iter_mut()
            .find(|a| a.number == attempt && a.instance == *me && a.script_ended_at.is_none())
        {
            Some(a) => {
                a.script_ended_at = Some(now);
                a.outputs = outputs.clone();
                if progress.is_some() {
                    j.progress = progress;
                }
                Step::Write(())
            }
            None => Step::Keep(()),
        }
    })
    .await;
    if let Err(e) = r {
        warn!(job_id = %id, error = %e, "could not record the script's end");
    }
}

/// `Some(why)` when the job's cost, by the time of the next check (`every`
/// from `now`), would pass its budget.
fn over_budget(job: &Job, now: Timestamp, every: Duration) -> Option<String> {
    let budget = job.spec.max_cost_cents?.saturating_mul(10_000);
    let price = job
        .attempts
        .last()
        .map_or(0, |a| a.price_micro_usd_per_hour);
    let spent = job.cost_micro_usd(now);
    let next = (u128::from(price) * every.as_millis() / 3_600_000) as u64;
    (spent.saturating_add(next) >= budget)
        .then(|| format!("budget of {} reached: {} spent", usd(budget), usd(spent)))
}

/// The budget stopped the job: `cancelled`, with the reason.
async fn end_over_budget(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    why: &str,
    last_lines: Vec<String>,
) {
    let by = format!("worker:{me}");
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), id, |j| {
        if j.runs(attempt, me) && j.cancel(now, &by, why).is_ok() {
            j.last_lines = last_lines.clone();
            Step::Write(())
        } else {
            Step::Keep(())
        }
    })
    .await;
    match r {
        Ok(Some(_)) => info!(job_id = %id, reason = %why, "job stopped at its budget"),
        Ok(None) => {}
        Err(e) => {
            warn!(job_id = %id, error = %e, "could not record the budget stop; the sweep ends the attempt")
        }
    }
}

/// Uploads what the attempt left in `out_dir` and the workspace paths the
/// job names; says in the job's log what was saved and what was missing.
/// Files the job's earlier attempts stored are not sent again.
async fn save_outputs(
    artifacts: &dyn ArtifactStore,
    job: &Job,
    attempt: u32,
    out_dir: &std::path::Path,
    ws: &std::path::Path,
) -> Option<OutputsRef> {
    let (o, w, named) = (
        out_dir.to_path_buf(),
        ws.to_path_buf(),
        job.spec.outputs.clone(),
    );
    let (files, missing) =
        tokio::task::spawn_blocking(move || crate::outputs::gather(&o, &w, &named))
            .await
            .ok()?;
    let scratch = out_dir.with_file_name(".studio");
    let mut known = std::collections::HashSet::new();
    if !files.is_empty() {
        for r in job
            .attempts
            .iter()
            .filter(|a| a.number < attempt)
            .filter_map(|a| a.outputs.as_ref())
        {
            if let Ok(m) = crate::outputs::manifest(artifacts, &job.id, r, &scratch).await {
                known.extend(m.files.into_iter().map(|f| f.sha256));
                known.insert(r.manifest.clone());
            }
        }
    }
    let mut note = String::new();
    for m in &missing {
        note.push_str(&format!(
            "[studio] output {m} not found (or not a regular file or directory)\n"
        ));
    }
    let saved = crate::outputs::upload(artifacts, &job.id, &files, &known, &scratch).await;
    let outputs = match saved {
        Ok(u) => {
            if let Some(r) = &u.outputs {
                let unchanged = if u.sent < r.files {
                    format!(", {} already stored (same content)", r.files - u.sent)
                } else {
                    String::new()
                };
                note.push_str(&format!(
                    "[studio] outputs of attempt {attempt}: {} file(s), {} bytes{unchanged}\n",
                    r.files, r.bytes
                ));
            }
            u.outputs
        }
        Err(e) => {
            warn!(job_id = %job.id, error = %e, "outputs not saved");
            note.push_str(&format!(
                "[studio] outputs of attempt {attempt} not saved: {e}\n"
            ));
            None
        }
    };
    if !note.is_empty() {
        let _ = artifacts.append_log(&job.id, note.as_bytes()).await;
    }
    outputs
}

/// The attempt failed before its script could start (workspace, Python
/// environment, interpreter).
async fn fail_to_start(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    why: String,
) -> RunEnd {
    finish(ctx, id, attempt, me, None, Some(why), Vec::new()).await;
    RunEnd::default()
}

/// Records the end of our attempt, if the job is still ours. A failing
/// store is retried for a while: until the end is recorded the heartbeat
/// stops, and the sweep would run the job again.
async fn finish(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    code: Option<i32>,
    failure: Option<String>,
    last_lines: Vec<String>,
) {
    let by = format!("worker:{me}");
    let mut wait = Duration::from_millis(200);
    for _ in 0..6 {
        let now: Timestamp = ctx.clock.now();
        let r = mutate_job(ctx.store.as_ref(), id, |job| {
            if job.runs(attempt, me) {
                job.last_lines = last_lines.clone();
                match job.complete(code, failure.clone(), now, &by) {
                    Ok(()) => Step::Write(()),
                    Err(_) => Step::Keep(()),
                }
            } else {
                Step::Keep(())
            }
        })
        .await;
        match r {
            Ok(Some((job, ()))) => {
                info!(job_id = %id, state = %job.state, exit_code = ?code, "attempt ended");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                warn!(job_id = %id, error = %e, "could not record the end; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

async fn flush(artifacts: &dyn ArtifactStore, id: &JobId, buf: &mut Vec<u8>) {
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

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// The interpreter of the job's virtualenv, building it first unless a job
/// with the same `requirements.txt` (and interpreter) already did; `true`
/// when it was built now. Concurrent workers on one machine wait for each
/// other on a lock file instead of building the same environment twice.
async fn ensure_venv(
    root: &std::path::Path,
    python: &str,
    ws: &std::path::Path,
) -> Result<(PathBuf, bool), String> {
    let requirements = ws.join("requirements.txt");
    let content = std::fs::read(&requirements).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(python.as_bytes());
    h.update([0]);
    h.update(&content);
    let key = &hex::encode(h.finalize())[..16];
    let dir = root.join(key);
    let bin = dir.join("bin").join("python");
    let ready = dir.join(".studio-ready");
    if ready.exists() {
        return Ok((bin, false));
    }
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            Ok(f)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("lock: {e}"))?;
    if ready.exists() {
        return Ok((bin, false));
    }
    let _ = std::fs::remove_dir_all(&dir);
    run_quiet(
        Command::new(python).arg("-m").arg("venv").arg(&dir),
        "python -m venv",
    )
    .await?;
    if content.iter().any(|b| !b.is_ascii_whitespace()) {
        run_quiet(
            Command::new(&bin)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--quiet",
                    "-r",
                ])
                .arg(&requirements)
                .current_dir(ws),
            "pip install -r requirements.txt",
        )
        .await?;
    }
    std::fs::write(&ready, b"").map_err(|e| e.to_string())?;
    drop(lock);
    Ok((bin, true))
}

async fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!(
        "{what} failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Keeps the last 8 KiB of output.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > 8192 {
        tail.drain(..tail.len() - 8192);
    }
}

/// The last 20 lines of output.
fn last_lines(tail: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InstanceId, PoolKey};

    /// A job with a 1-cent budget on a $3.60/h machine (1 cent per 10 s),
    /// claimed at t = 0.
    fn budgeted() -> Job {
        let mut spec = crate::contract::tests::sample();
        spec.max_cost_cents = Some(1);
        let mut plan = crate::plan::Plan::local(&Default::default());
        plan.price_micro_usd_per_hour = 3_600_000;
        let mut j = Job::new(
            JobId::new("j").unwrap(),
            spec,
            plan,
            PoolKey::new("p").unwrap(),
            Timestamp(0),
            "t",
        );
        j.claim(&InstanceId::new("w").unwrap(), "m", Timestamp(0))
            .unwrap();
        j
    }

    #[test]
    fn the_budget_stops_a_job_before_the_next_check_would_pass_it() {
        let j = budgeted();
        let every = Duration::from_secs(1); // 1,000 micro-USD per check
        assert_eq!(over_budget(&j, Timestamp(8_999), every), None);
        let why = over_budget(&j, Timestamp(9_000), every).expect("stops");
        assert_eq!(why, "budget of $0.0100 reached: $0.0090 spent");
        let mut free = j.clone();
        free.spec.max_cost_cents = None;
        assert_eq!(over_budget(&free, Timestamp(1 << 40), every), None);
    }
}
