//! The handlers, written once over the ports: one file per function, named
//! as its binary in `functions/`, plus the procedures several of them share.
//!
//! # Layout
//! - [`submit`](mod@submit) (`functions/submit`): a SubmitJob becomes a job, a pool and a work item.
//! - [`scale`](mod@scale) (`functions/scale-on-queue-depth`): every pool swept and resized.
//! - [`sweep`]: what `scale` does to each pool first (stale heartbeats, lifetimes, dead letters).
//! - [`interruption`] (`functions/handle-spot-interruption`): instance events requeue jobs.
//! - [`cleanup`](mod@cleanup) (`functions/cleanup-empty-group`): idle pools torn down.
//! - [`cancel`](mod@cancel): cancelling a job (CLI, `studio ui`, webhook).
//! - [`claim`]: what a worker does with a work item ([`claim_work`]).
//! - [`requeue`](mod@requeue): an attempt is lost, the job runs again ([`requeue()`]).
//! - [`pools`]: a pool made to exist, sent work, and sized from what the fleet reports.
//! - [`context`]: [`Ctx`], [`Settings`], [`HandlerError`] and [`mutate_job`].
//!
//! The webhook (`functions/webhook`) is AWS's edge: `studio_aws::webhook`
//! turns its requests into these handlers' calls.
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

pub mod cancel;
pub mod claim;
pub mod cleanup;
pub mod context;
pub mod interruption;
pub mod pools;
pub mod requeue;
pub mod scale;
pub mod submit;
pub mod sweep;

pub use cancel::{cancel, CancelOutcome};
pub use claim::{claim_work, Claim};
pub use cleanup::{cleanup, CleanupReport};
pub use context::{mutate_job, Ctx, HandlerError, Settings, Step, MAX_RESENDS};
pub use interruption::{
    handle_interruption, InstanceEvent, InstanceEventKind, InterruptionOutcome,
};
pub use pools::{ensure_pool, scale_pool, Waiting};
pub use requeue::{requeue, RequeueOutcome};
pub use scale::scale;
pub use submit::{job_id_from_message, submit, SubmitOutcome};
