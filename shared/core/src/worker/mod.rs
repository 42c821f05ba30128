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
//!
//! # Layout, one file per phase
//! - [`config`]: [`WorkerConfig`], [`Cadence`], [`WorkerExit`].
//! - [`poll`]: the loop ([`run_worker`]): receive, claim, run, ack, leave when idle.
//! - [`liveness`]: the heartbeat from claim to end, what it sees, budgets.
//! - [`environment`]: directories, workspace, inputs, checkpoint restored, handed to the job's user.
//! - [`pyenv`]: the job's Python environment, built with uv as the job's user, cached per owner.
//! - [`run`]: the script's process, its output and progress, and its stops.
//! - [`limits`]: a local job's `--cpus` and `--ram` held (affinity, a memory watch).
//! - [`process`]: signals to a process group.
//! - [`users`]: a uid per attempt, every process of it killed at its end; the metadata check.
//! - [`jobfs`]: the job's files read by root through descriptors, never through a link.
//! - [`rules`]: the rules above as functions (claim, beat, finish, hand back, leave).
//! - [`collect`]: checkpoints and outputs saved, the end recorded, or the job handed back.

mod collect;
mod config;
mod environment;
pub(crate) mod jobfs;
mod limits;
mod liveness;
mod poll;
mod process;
pub mod pyenv;
mod run;
pub mod users;

/// The worker's rules, one function each, as [`run_worker`] applies them;
/// the simulation (`studio simulate`) drives the same functions over its
/// own clock instead of processes.
pub mod rules {
    pub use super::collect::{finish, hand_back};
    pub use super::liveness::{beat, Placed, Seen};
    pub use super::poll::{leave, leaves_idle};
    pub use crate::handlers::{claim_work, Claim};
}

pub use config::{Cadence, WorkerConfig, WorkerExit, CHECKPOINT_LIMIT};
pub use poll::run_worker;
pub use users::JobUsers;
