//! The four handlers, written once over the ports, plus the two shared
//! procedures every path uses: [`requeue`] (an attempt is lost: run the job
//! again) and [`claim_work`] (what a worker does with a work item).
//!
//! Every handler is idempotent: SQS, Pub/Sub and EventBridge deliver at least
//! once, and a lambda may die between any two writes. The rules that make
//! that safe:
//! - each job write is a compare-and-set on the record's version, re-read and
//!   re-decided on conflict;
//! - a work item names the attempt it is for, so a stale or duplicate item is
//!   recognised and dropped instead of starting a second run;
//! - a requeue writes `interrupted` first, then sends the next attempt's item,
//!   then writes `queued`; whoever sees an `interrupted` job finishes the same
//!   steps, so a crash between them loses nothing.

use crate::catalog::Arch;
use crate::clock::{Clock, Timestamp};
use crate::contract::{ContractError, SubmitJob, WorkItem};
use crate::ids::{InstanceId, JobId, PoolKey};
use crate::job::{Job, JobState};
use crate::plan::{Plan, PlanError, Planner};
use crate::pool::{desired_workers, queue_name, Pool, PoolSample, PoolSpec, PoolState, QueueDepth};
use crate::ports::{
    dead_letter_queue, Created, Fleet, GroupStatus, JobStore, PortError, Received, WorkQueue,
};
use crate::resources::{Cloud, WorkerPolicy};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tracing::{info, warn};

/// Knobs the handlers read; one value per deployment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Queue the `SubmitJob` messages arrive on.
    pub submit_queue: String,
    /// First part of every queue name Studio creates (`<prefix>-work-<pool>`).
    pub queue_prefix: String,
    /// How long a pool must have had no active job before cleanup deletes it.
    pub pool_grace: Duration,
    /// Attempts a job gets; an interruption past the last one fails it.
    pub max_attempts: u32,
    /// Cap on workers a pool has: an auto-sized pool grows to it, a fixed
    /// size above it is refused at submit.
    pub max_auto_workers: u32,
    /// An attempt whose worker has not written its heartbeat on the job
    /// record for this long is lost and runs again (the sweep in
    /// [`scale`], or the next worker to receive its item).
    pub heartbeat_timeout: Duration,
    /// After a spot warning, how long the worker has to save and hand the
    /// job back before the control plane requeues it itself.
    pub warning_grace: Duration,
    /// A running machine whose worker has not been seen (nor the machine
    /// launched) for this long is taken out of its group.
    pub worker_grace: Duration,
    /// The machine architectures this deployment has a worker image for;
    /// `None`: any (the local backend). A job for another is refused at
    /// submit, before anything is created.
    pub archs: Option<Vec<Arch>>,
    /// The clouds this deployment runs machines on; `None`: any. A job for
    /// another is refused at submit, before anything is created.
    pub clouds: Option<Vec<Cloud>>,
    /// How often scaling records a pool's size and queue depth on its
    /// record (the chart of `studio ui`); [`crate::pool::SAMPLES_KEPT`] are kept.
    pub pool_sample_every: Duration,
}

/// How often the sweep sends a dead-lettered work item of a queued job
/// again before the job fails with the reason.
pub const MAX_RESENDS: u32 = 3;

impl Settings {
    /// The work queue of a pool.
    pub fn work_queue(&self, key: &PoolKey) -> String {
        queue_name(&self.queue_prefix, key)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            submit_queue: "studio-submit".into(),
            queue_prefix: "studio".into(),
            pool_grace: Duration::from_secs(60),
            max_attempts: 3,
            max_auto_workers: 2,
            heartbeat_timeout: Duration::from_secs(30),
            warning_grace: Duration::from_secs(180),
            worker_grace: Duration::from_secs(15 * 60),
            archs: None,
            clouds: None,
            // The schedule's own period on AWS: one sample per run.
            pool_sample_every: Duration::from_secs(60),
        }
    }
}

/// The ports and settings every handler gets; built once per process.
#[derive(Clone)]
pub struct Ctx {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub fleet: Arc<dyn Fleet>,
    pub planner: Arc<dyn Planner>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
}

#[derive(Debug, Error)]
pub enum HandlerError {
    /// The message is wrong and always will be: dead-letter it.
    #[error(transparent)]
    BadInput(#[from] ContractError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("job id '{0}' was already used for a different request")]
    IdReused(JobId),
    #[error("--num-workers {asked} is above this deployment's cap of {cap} workers (STUDIO_MAX_WORKERS)")]
    WorkersAboveCap { asked: u32, cap: u32 },
    #[error("this deployment has no {0} worker image (on AWS: STUDIO_WORKER_AMI_ARM64, scripts/deploy --worker-ami-arm64); run with --arch x86_64 or add the image")]
    ArchUnavailable(Arch),
    #[error("this deployment does not run {0} machines: its GCP settings (STUDIO_GCP_PROJECT, STUDIO_GCP_ZONE, ...) are not set; see the README, \"GCP\"")]
    CloudUnavailable(Cloud),
    #[error("pool {0} is being deleted; retry shortly")]
    PoolBusy(PoolKey),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("job {0}: gave up after repeated conflicting writes")]
    Contention(JobId),
}

impl HandlerError {
    /// The kind of failure, by name: what a failed Lambda invocation shows
    /// as its `errorType` (CloudWatch, the Invoke API's answer).
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::BadInput(_) => "BadInput",
            HandlerError::Plan(_) => "Plan",
            HandlerError::IdReused(_) => "IdReused",
            HandlerError::WorkersAboveCap { .. } => "WorkersAboveCap",
            HandlerError::ArchUnavailable(_) => "ArchUnavailable",
            HandlerError::CloudUnavailable(_) => "CloudUnavailable",
            HandlerError::PoolBusy(_) => "PoolBusy",
            HandlerError::Port(_) => "Port",
            HandlerError::Contention(_) => "Contention",
        }
    }

    /// Whether delivering the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HandlerError::Port(_) | HandlerError::PoolBusy(_) | HandlerError::Contention(_)
        )
    }
}

/// What a mutation closure decided.
pub enum Step<T> {
    /// Write the changed job (compare-and-set) and return `T`.
    Write(T),
    /// Leave the job as it is and return `T`.
    Keep(T),
}

const CAS_TRIES: usize = 16;

/// Read-decide-write on one job, re-reading and re-deciding when another
/// writer got in first. `None` when the job does not exist.
///
/// # Errors
/// Port errors, or [`HandlerError::Contention`] after many lost races.
pub async fn mutate_job<T>(
    store: &dyn JobStore,
    id: &JobId,
    mut decide: impl FnMut(&mut Job) -> Step<T>,
) -> Result<Option<(Job, T)>, HandlerError> {
    for _ in 0..CAS_TRIES {
        let Some(mut job) = store.get_job(id).await? else {
            return Ok(None);
        };
        match decide(&mut job) {
            Step::Keep(t) => return Ok(Some((job, t))),
            Step::Write(t) => match store.update_job(&job).await {
                Ok(stored) => return Ok(Some((stored, t))),
                Err(PortError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(HandlerError::Contention(id.clone()))
}

// ---------------------------------------------------------------- submit

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// A new job, its work item sent.
    Created(JobId),
    /// The job existed (a redelivery or a resubmission); nothing new was made.
    Duplicate(JobId),
}

/// `submit`: validate → plan → create the job (if absent) → ensure the pool →
/// send the work item → raise the pool's target at once.
///
/// `message_id` is the queue's id for the message, the idempotency key when
/// the message has no `job_id`.
///
/// # Errors
/// [`HandlerError::BadInput`], `Plan` and `IdReused` are not retryable (the
/// message belongs in the dead-letter queue); the rest are.
#[tracing::instrument(skip(ctx, body), fields(message_id = %message_id))]
pub async fn submit(
    ctx: &Ctx,
    message_id: &str,
    body: &str,
) -> Result<SubmitOutcome, HandlerError> {
    let spec = SubmitJob::from_json(body)?;
    let id = match &spec.job_id {
        Some(id) => id.clone(),
        None => job_id_from_message(message_id),
    };
    let cap = ctx.settings.max_auto_workers.max(1);
    if let Some(asked) = spec.num_workers.filter(|n| *n > cap) {
        return Err(HandlerError::WorkersAboveCap { asked, cap });
    }
    let arch = spec.arch.unwrap_or(Arch::X86_64);
    if ctx
        .settings
        .archs
        .as_ref()
        .is_some_and(|a| !a.contains(&arch))
    {
        return Err(HandlerError::ArchUnavailable(arch));
    }
    if ctx
        .settings
        .clouds
        .as_ref()
        .is_some_and(|c| !c.contains(&spec.cloud))
    {
        return Err(HandlerError::CloudUnavailable(spec.cloud));
    }
    let plan = ctx.planner.plan(&spec)?;
    let pool_spec = PoolSpec::for_job(&spec, &plan);
    let now = ctx.clock.now();
    let job = Job::new(id.clone(), spec, plan, pool_spec.key(), now, "submit");
    let job = match ctx.store.create_job(&job).await? {
        Created::New(j) => j,
        Created::Existing(existing) => {
            if !same_request(&existing.spec, &job.spec) {
                return Err(HandlerError::IdReused(id));
            }
            if existing.state != JobState::Queued || existing.attempt != 1 {
                return Ok(SubmitOutcome::Duplicate(id));
            }
            // Queued at attempt 1: an earlier delivery may have died before
            // sending the work item, so finish the steps (a duplicate item is
            // recognised and dropped by the worker).
            place_first_attempt(ctx, &pool_spec, &id).await?;
            return Ok(SubmitOutcome::Duplicate(id));
        }
    };
    place_first_attempt(ctx, &pool_spec, &job.id).await?;
    info!(job_id = %job.id, pool = %job.pool, "job submitted");
    Ok(SubmitOutcome::Created(job.id))
}

/// Ensures the pool, sends attempt 1's item and scales for it (the queue's
/// depth counters lag sends by up to a minute on SQS).
async fn place_first_attempt(ctx: &Ctx, spec: &PoolSpec, id: &JobId) -> Result<(), HandlerError> {
    let pool = ensure_pool(ctx, spec).await?;
    send_item(ctx, &pool, &WorkItem::new(id.clone(), 1)).await?;
    scale_pool(ctx, pool, 1, 0).await?;
    Ok(())
}

fn same_request(a: &SubmitJob, b: &SubmitJob) -> bool {
    let mut a = a.clone();
    a.job_id = b.job_id.clone();
    a == *b
}

/// A job id for a message that did not choose one: stable across redeliveries.
pub fn job_id_from_message(message_id: &str) -> JobId {
    let clean: String = message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(60)
        .collect();
    JobId::new(format!("m-{clean}")).unwrap_or_else(|_| JobId::generate())
}

async fn send_item(ctx: &Ctx, pool: &Pool, item: &WorkItem) -> Result<(), HandlerError> {
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
async fn pool_of(ctx: &Ctx, job: &Job) -> Result<Pool, HandlerError> {
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

/// Reconciles one pool's group with the work there is; returns the target.
///
/// It starts from the group as the fleet reports it now (an idle worker
/// that left with decrement lowered it; someone may have changed it by
/// hand), never from the pool record's copy of the last target, and from
/// the work waiting: the queue's visible count, which lags sends by up to a
/// minute on SQS, or `waiting` (jobs the store shows queued, or the item
/// the caller just sent), whichever is larger. A missing group or queue of
/// a live pool is recreated; a group whose maximum no longer matches the
/// configuration is moved to it in the same call.
///
/// # Errors
/// Port errors from the queue or the fleet.
pub async fn scale_pool(
    ctx: &Ctx,
    mut pool: Pool,
    waiting: u64,
    running: u64,
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
    depth.visible = depth.visible.max(waiting);
    // Items are acked once claimed, so running jobs are not in flight in
    // the queue: count them from the store.
    depth.in_flight = depth.in_flight.max(running);
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
    if pool.target != want || sampled {
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
        if let Err(e) = retire_silent_machines(ctx, &pool).await {
            warn!(pool = %key, error = %e, "retiring silent machines failed");
            first_err.get_or_insert(e);
        }
        let (waiting, running) = match sweep_pool(ctx, &pool).await {
            Ok(n) => n,
            Err(e) => {
                warn!(pool = %key, error = %e, "sweep failed");
                first_err.get_or_insert(e);
                (0, 0)
            }
        };
        match scale_pool(ctx, pool, waiting, running).await {
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
async fn retire_silent_machines(ctx: &Ctx, pool: &Pool) -> Result<(), HandlerError> {
    let gk = pool.group_key();
    let now = ctx.clock.now();
    for id in ctx
        .fleet
        .silent(&gk, ctx.settings.worker_grace, now)
        .await?
    {
        warn!(pool = %pool.key, instance = %id, "no live worker on this machine; terminating it");
        match ctx.fleet.terminate(&gk, &id, true).await {
            Ok(()) | Err(PortError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why the running attempt of `job` is lost, if it is.
fn lost_attempt(ctx: &Ctx, job: &Job, now: Timestamp) -> Option<String> {
    if job.state != JobState::Running {
        return None;
    }
    let holder = job.instance.as_ref().map_or("?".into(), |i| i.to_string());
    if let Some(w) = job.warned_at {
        if now.since(w) > ctx.settings.warning_grace {
            return Some(format!(
                "spot interruption of {holder}: its worker did not hand the job back within {}",
                humantime::format_duration(ctx.settings.warning_grace)
            ));
        }
    }
    let quiet = now.since(job.last_beat());
    (quiet > ctx.settings.heartbeat_timeout).then(|| {
        format!(
            "no heartbeat from {holder} for {}",
            humantime::format_duration(Duration::from_secs(quiet.as_secs()))
        )
    })
}

/// Why a queued job is dropped for its `--lifetime`: it bounds the wait for
/// a first start only, so a job that ran (and was interrupted) is retried.
fn lifetime_over(job: &Job, now: Timestamp) -> Option<String> {
    let l = Duration::from_secs(job.spec.lifetime_secs?);
    let waited = now.since(job.created_at);
    (job.state == JobState::Queued && job.attempts.is_empty() && waited > l).then(|| {
        format!(
            "waited {}, longer than its lifetime of {} without starting",
            humantime::format_duration(Duration::from_secs(waited.as_secs())),
            humantime::format_duration(l)
        )
    })
}

/// The sweep of one pool (see [`scale`]); returns how many jobs wait and
/// how many run.
async fn sweep_pool(ctx: &Ctx, pool: &Pool) -> Result<(u64, u64), HandlerError> {
    let (mut waiting, mut running) = (0, 0);
    let mut first_err = None;
    for job in ctx
        .store
        .list_jobs(Some(&pool.key), &JobState::ACTIVE)
        .await?
    {
        let now = ctx.clock.now();
        let r = match job.state {
            JobState::Interrupted if now.since(job.updated_at) > Duration::from_secs(60) => {
                requeue(ctx, &job.id, job.attempt, "requeue resumed", "scale")
                    .await
                    .map(|_| ())
            }
            JobState::Running => match lost_attempt(ctx, &job, now) {
                Some(why) => requeue(ctx, &job.id, job.attempt, &why, "scale")
                    .await
                    .map(|_| ()),
                None => {
                    running += 1;
                    Ok(())
                }
            },
            JobState::Queued => match lifetime_over(&job, now) {
                Some(why) => drop_for_lifetime(ctx, &job.id, &why, "scale").await,
                None => {
                    waiting += 1;
                    Ok(())
                }
            },
            _ => Ok(()),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = resend_dead_lettered(ctx, pool).await {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok((waiting, running)),
    }
}

/// Work items the queue gave up on (dead-lettered after repeated failed
/// claims) would leave their jobs queued forever: each one whose job still
/// waits for that attempt is sent again, up to [`MAX_RESENDS`] times, after
/// which the job fails with the reason. Items for jobs that moved on are
/// dropped from the dead-letter queue; bodies that are not work items stay.
async fn resend_dead_lettered(ctx: &Ctx, pool: &Pool) -> Result<(), HandlerError> {
    let dlq = dead_letter_queue(&ctx.settings.work_queue(&pool.group_key()));
    // At most 100 a run: a flood is worked off over several runs.
    for _ in 0..10 {
        let msgs = match ctx
            .queue
            .receive(&dlq, 10, Duration::from_secs(60), Duration::ZERO)
            .await
        {
            Ok(m) => m,
            Err(PortError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let n = msgs.len();
        for msg in msgs {
            match WorkItem::from_json(&msg.body) {
                Ok(item) => {
                    resend_item(ctx, pool, &item).await?;
                    ctx.queue.ack(&dlq, &msg.receipt).await?;
                }
                // A poison body stays as evidence, out of the next runs' way
                // (SQS keeps it 14 days).
                Err(_) => {
                    ctx.queue
                        .release(&dlq, &msg.receipt, Duration::from_secs(12 * 3600))
                        .await?
                }
            }
        }
        if n < 10 {
            break;
        }
    }
    Ok(())
}

/// Sends a dead-lettered item again if its job still waits for it.
async fn resend_item(ctx: &Ctx, pool: &Pool, item: &WorkItem) -> Result<(), HandlerError> {
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), &item.job_id, |j| {
        if j.state != JobState::Queued || j.attempt != item.attempt {
            return Step::Keep(false);
        }
        if j.items_resent >= MAX_RESENDS {
            let why = format!(
                "its work item was dead-lettered {} times: no worker could claim it",
                MAX_RESENDS + 1
            );
            return match j.fail_queued(now, "scale", &why) {
                Ok(()) => Step::Write(false),
                Err(_) => Step::Keep(false),
            };
        }
        j.items_resent += 1;
        Step::Write(true)
    })
    .await?;
    if let Some((_, true)) = r {
        warn!(job_id = %item.job_id, attempt = item.attempt, "work item was dead-lettered; sent again");
        send_item(ctx, pool, item).await?;
    }
    Ok(())
}

/// Cancels a job that waited past its lifetime without starting.
async fn drop_for_lifetime(ctx: &Ctx, id: &JobId, why: &str, by: &str) -> Result<(), HandlerError> {
    let now = ctx.clock.now();
    mutate_job(ctx.store.as_ref(), id, |job| {
        if lifetime_over(job, now).is_some() && job.cancel(now, by, why).is_ok() {
            Step::Write(())
        } else {
            Step::Keep(())
        }
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- requeue

#[derive(Debug, Clone, PartialEq)]
pub enum RequeueOutcome {
    /// Queued again as this attempt.
    Requeued(u32),
    /// Out of attempts: failed with a reason.
    Failed(String),
    /// The job is no longer on that attempt (already moved on, or ended).
    Stale,
}

/// Attempt `attempt` of the job is lost (machine gone, lease lapsed, worker
/// told to stop): run it again, or fail it when it is out of attempts.
///
/// # Errors
/// Port errors; repeating the call after one is safe.
pub async fn requeue(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    reason: &str,
    by: &str,
) -> Result<RequeueOutcome, HandlerError> {
    let max = ctx.settings.max_attempts.max(1);
    let now = ctx.clock.now();
    // Out of attempts on spot with `fallback_on_demand`: prepare the
    // on-demand pool first, so the write below only has to move the job.
    let fallback = match ctx.store.get_job(id).await? {
        Some(job)
            if job.state == JobState::Running && job.attempt == attempt && job.attempt >= max =>
        {
            on_demand_fallback(ctx, &job).await?
        }
        _ => None,
    };
    let step1 = mutate_job(ctx.store.as_ref(), id, |job| {
        if job.attempt != attempt {
            return Step::Keep(None);
        }
        match job.state {
            JobState::Running if job.attempt >= max && fallback.is_some() => {
                let (plan, pool) = fallback.clone().expect("checked");
                let why =
                    format!("{reason}; out of spot attempts, moving to on-demand pool {pool}");
                match job.interrupt(now, by, &why) {
                    Ok(()) => {
                        job.plan = plan.for_record();
                        job.pool = pool;
                        Step::Write(Some(Ok(())))
                    }
                    Err(_) => Step::Keep(None),
                }
            }
            JobState::Running if job.attempt >= max => {
                let why = format!("interrupted on attempt {attempt} of {max} ({reason})");
                match job.complete(None, Some(why.clone()), now, by) {
                    Ok(()) => Step::Write(Some(Err(why))),
                    Err(_) => Step::Keep(None),
                }
            }
            JobState::Running => match job.interrupt(now, by, reason) {
                Ok(()) => Step::Write(Some(Ok(()))),
                Err(_) => Step::Keep(None),
            },
            JobState::Interrupted => Step::Keep(Some(Ok(()))),
            _ => Step::Keep(None),
        }
    })
    .await?;
    let (job, decision) = match step1 {
        None | Some((_, None)) => return Ok(RequeueOutcome::Stale),
        Some((job, Some(d))) => (job, d),
    };
    if let Err(why) = decision {
        warn!(job_id = %id, reason = %why, "job failed: out of attempts");
        return Ok(RequeueOutcome::Failed(why));
    }
    let pool = pool_of(ctx, &job).await?;
    send_item(ctx, &pool, &WorkItem::new(id.clone(), attempt + 1)).await?;
    let step3 = mutate_job(ctx.store.as_ref(), id, |job| {
        if job.state == JobState::Interrupted && job.attempt == attempt {
            match job.requeue(now, by) {
                Ok(()) => Step::Write(true),
                Err(_) => Step::Keep(false),
            }
        } else {
            Step::Keep(job.attempt == attempt + 1)
        }
    })
    .await?;
    if fallback.is_some() {
        scale_pool(ctx, pool, 1, 0).await?;
    }
    match step3 {
        Some((_, true)) => {
            info!(job_id = %id, attempt = attempt + 1, reason, "job requeued");
            Ok(RequeueOutcome::Requeued(attempt + 1))
        }
        _ => Ok(RequeueOutcome::Stale),
    }
}

/// The on-demand plan and pool a spot job moves to when it is out of
/// attempts and allows it; `None` when it does not allow it, is not on spot,
/// or no on-demand machine can be planned for it.
async fn on_demand_fallback(ctx: &Ctx, job: &Job) -> Result<Option<(Plan, PoolKey)>, HandlerError> {
    let on_demand = match job.plan.cloud {
        Cloud::Ec2spot => Cloud::Ec2,
        Cloud::Gcspot => Cloud::Gcloud,
        _ => return Ok(None),
    };
    if !job.spec.fallback_on_demand {
        return Ok(None);
    }
    let mut spec = job.spec.clone();
    spec.cloud = on_demand;
    let Ok(plan) = ctx.planner.plan(&spec) else {
        return Ok(None);
    };
    let pool = ensure_pool(ctx, &PoolSpec::for_job(&spec, &plan)).await?;
    Ok(Some((plan, pool.key)))
}

// ---------------------------------------------------------------- interruption

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
}

#[derive(Debug, Clone, PartialEq)]
pub enum InterruptionOutcome {
    /// No job of ours runs on that instance: recorded and dropped.
    NoJobOnInstance,
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

/// What a worker should do with a work item.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run it: the job is now `running` on this worker.
    Run(Box<Job>),
    /// Ack and forget it, for this reason.
    Drop(String),
}

/// Decides what a received work item means and claims the job if it is ours
/// to run. The rules (attempt `a` in the item, job at attempt `j`):
/// - job ended, or `j > a`: stale, drop;
/// - queued and `j == a`: claim (compare-and-set); the worker then acks the
///   item at once and keeps the claim alive with its heartbeat on the
///   record, so no queue lease (nor SQS's 12-hour cap) bounds a run;
/// - queued past its `--lifetime` without ever starting: cancel, drop;
/// - running `a` with a stale heartbeat: its worker is gone: requeue as
///   `a + 1` and drop this item;
/// - running `a` otherwise: a duplicate delivery, drop;
/// - interrupted: finish the requeue, drop this item.
///
/// # Errors
/// [`HandlerError::BadInput`] for a body that is not a work item (dead-letter
/// it); port errors otherwise.
pub async fn claim_work(
    ctx: &Ctx,
    instance: &InstanceId,
    msg: &Received,
) -> Result<Claim, HandlerError> {
    let item = WorkItem::from_json(&msg.body)?;
    for _ in 0..CAS_TRIES {
        let Some(mut job) = ctx.store.get_job(&item.job_id).await? else {
            return Ok(Claim::Drop(format!("job {} does not exist", item.job_id)));
        };
        if job.state.is_terminal() {
            return Ok(Claim::Drop(format!("job already {}", job.state)));
        }
        if job.attempt > item.attempt {
            return Ok(Claim::Drop(format!(
                "stale: job is on attempt {}",
                job.attempt
            )));
        }
        match job.state {
            JobState::Interrupted => {
                requeue(
                    ctx,
                    &job.id,
                    job.attempt,
                    "requeue resumed",
                    &format!("worker:{instance}"),
                )
                .await?;
                if job.attempt + 1 == item.attempt {
                    continue; // our item is the next attempt's: claim it now
                }
                return Ok(Claim::Drop("requeue finished".into()));
            }
            _ if job.attempt < item.attempt => {
                return Ok(Claim::Drop(format!(
                    "item is for attempt {} but job is on {}",
                    item.attempt, job.attempt
                )))
            }
            JobState::Queued => {
                let now = ctx.clock.now();
                if let Some(why) = lifetime_over(&job, now) {
                    drop_for_lifetime(ctx, &job.id, &why, &format!("worker:{instance}")).await?;
                    return Ok(Claim::Drop(why));
                }
                if job.claim(instance, &msg.message_id, now).is_err() {
                    continue;
                }
                match ctx.store.update_job(&job).await {
                    Ok(stored) => return Ok(Claim::Run(Box::new(stored))),
                    Err(PortError::Conflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            JobState::Running => {
                let Some(why) = lost_attempt(ctx, &job, ctx.clock.now()) else {
                    return Ok(Claim::Drop(format!(
                        "duplicate delivery: attempt {} already runs elsewhere",
                        job.attempt
                    )));
                };
                let by = format!("worker:{instance}");
                let r = requeue(ctx, &job.id, job.attempt, &why, &by).await?;
                return Ok(Claim::Drop(format!("{why}: {r:?}")));
            }
            _ => return Ok(Claim::Drop(format!("job is {}", job.state))),
        }
    }
    Err(HandlerError::Contention(item.job_id))
}
