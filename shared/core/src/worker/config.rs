//! How a worker is set up ([`WorkerConfig`]) and how often it talks to
//! its cloud ([`Cadence`]).

use crate::ids::{InstanceId, PoolKey};
use crate::notice::NoticeSource;
use crate::ports::InputSource;
use crate::worker::users::JobUsers;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
        // SQS's longest long poll: an idle worker makes 180 receives an
        // hour, not 3,600; notices are watched beside it.
        poll_wait: Duration::from_secs(20),
        // A DynamoDB read of the running job's record (a cancel, a warning,
        // a takeover): 720 an hour, not 3,600; a cancel is acted on within
        // about 6 s (this read, then the run loop's next 1 s check).
        heartbeat: Duration::from_secs(5),
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

    /// A worker of the local default, whose calls are SQLite reads and file
    /// writes: a receive is woken by the send (its wait bounds only how late
    /// an idle worker sees its idle timeout), a cancel is seen within a
    /// second, output and progress show within one; the heartbeat is written
    /// every quarter of `lease`, the bound the driver checks.
    pub fn local(lease: Duration) -> Cadence {
        Cadence {
            poll_wait: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
            beat_every: lease / 4,
            log_every: Duration::from_millis(200),
            progress_every: Duration::from_secs(1),
            ..Cadence::CLOUD
        }
    }

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
    /// `Some(range)`: every attempt runs as a uid of its own from this
    /// range ([`crate::worker::users`]; cloud machines, where the worker is
    /// root and holds the machine's role). Its attempt directory is handed
    /// to it, and taken back and removed when it ends.
    pub job_users: Option<JobUsers>,
    /// The machine's metadata endpoints (its role's credentials): before a
    /// script starts, the worker checks, as the attempt's user, that none
    /// answers, and runs no job on a machine where one does.
    pub metadata: Vec<std::net::SocketAddr>,
    /// Jobs' Python environments ([`crate::worker::pyenv`]) are kept here,
    /// a directory per owner.
    pub env_root: PathBuf,
    /// uv; `None`: looked for on `PATH`, then beside this binary, when a
    /// job needs it ([`crate::worker::pyenv::find_uv`]).
    pub uv: Option<PathBuf>,
    /// The environment uv gets (its settings, proxies, `PATH`): where
    /// scripts run as another user, a build sees nothing else of the worker's.
    pub uv_env: Vec<(String, String)>,
    /// Fetches jobs' `inputs`; `None`: a job that names any fails to start,
    /// saying so.
    pub inputs: Option<Arc<dyn InputSource>>,
    /// Hold each script to its request's `--cpus` and `--ram`
    /// ([`crate::worker::limits`]): local workers share one machine; a
    /// cloud machine was sized to its job.
    pub local_limits: bool,
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
