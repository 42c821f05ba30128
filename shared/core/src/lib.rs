//! Studio's domain, written once for every cloud.
//!
//! # Layout
//! - [`size`]: size strings (`16g`, `3.75 GiB`), all binary units.
//! - [`resources`]: clouds, markets, resource requests, bids, worker policies.
//! - [`ids`]: `JobId`, `PoolKey`, `InstanceId`.
//! - [`contract`]: the public messages, [`contract::SubmitJob`] and [`contract::WorkItem`].
//! - [`job`]: the job record and its state machine.
//! - [`plan`]: the planner port and the local planner.
//! - [`pool`]: pool keys, pool records, the scaling policy.
//! - [`clock`]: the injected clock.
//! - [`ports`]: the traits adapters implement (store, queue, fleet, artifacts).
//! - [`handlers`]: submit, scale, interruption, cleanup, cancel, and the worker's claim rules.
//! - [`worker`]: the worker loop that runs scripts.
//! - [`workspace`]: reproducible workspace tarballs.
//!
//! No cloud SDK is a dependency of this crate.

pub mod clock;
pub mod contract;
pub mod handlers;
pub mod ids;
pub mod job;
pub mod plan;
pub mod pool;
pub mod ports;
pub mod resources;
pub mod size;
pub mod worker;
pub mod workspace;
