//! What every handler is given ([`Ctx`]: the ports, the clock, the
//! [`Settings`]) and the rule every job write follows ([`mutate_job`]: a
//! compare-and-set, re-read and re-decided on conflict).

use crate::catalog::Arch;
use crate::clock::Clock;
use crate::contract::ContractError;
use crate::ids::{JobId, PoolKey};
use crate::job::Job;
use crate::plan::{PlanError, Planner};
use crate::pool::queue_name;
use crate::ports::{Fleet, JobStore, PortError, WorkQueue};
use crate::resources::Cloud;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

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
    /// Whether GPU jobs may run on EC2: the deployment has an image with
    /// the NVIDIA driver (`STUDIO_WORKER_GPU_AMI`). Without one a GPU pool
    /// would boot the plain image, with the GPUs billed and unusable, so
    /// such a job is refused at submit.
    pub ec2_gpu_image: bool,
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
            ec2_gpu_image: true,
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
    #[error("this deployment has no GPU worker image for EC2 (an image with the NVIDIA driver: STUDIO_WORKER_GPU_AMI, scripts/deploy --gpu-ami AMI, e.g. an AWS Deep Learning Base AMI): the plain image cannot use the GPUs it would bill; run without --gpus or add the image")]
    GpuImageMissing,
    #[error("this deployment does not run {0} machines: its GCP settings (STUDIO_GCP_PROJECT, STUDIO_GCP_ZONE, ...) are not set; see docs/gcp.md")]
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
            HandlerError::GpuImageMissing => "GpuImageMissing",
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

pub(crate) const CAS_TRIES: usize = 16;

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
            Step::Write(t) => match store.update_job_owned(job).await {
                Ok(stored) => return Ok(Some((stored, t))),
                Err(PortError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(HandlerError::Contention(id.clone()))
}

// ---------------------------------------------------------------- submit
