//! Studio's domain, written once for every cloud.
//!
//! # Layout
//! - [`size`]: size strings (`16g`, `3.75 GiB`), all binary units.
//! - [`resources`]: clouds, markets, resource requests, bids, worker policies.
//! - [`ids`]: `JobId`, `PoolKey`, `InstanceId`.
//! - [`contract`]: the public messages, [`contract::SubmitJob`] and [`contract::WorkItem`].
//! - [`job`]: the job record and its state machine.
//! - [`catalog`]: the EC2 catalogue and the choice of the cheapest fitting types.
//! - [`gce`]: GCE custom machine shapes, upsizing and the rate table.
//! - [`plan`]: the planner port, the local planner and the catalogue planner (bids too).
//! - [`pool`]: pool keys, pool records, the scaling policy.
//! - [`clock`]: the injected clock.
//! - [`ports`]: the traits adapters implement (store, queue, fleet, artifacts).
//! - [`handlers`]: submit, scale, interruption, cleanup, cancel, and the worker's claim rules.
//! - [`worker`]: the worker loop that runs scripts.
//! - [`notice`]: interruption notices from the EC2 and GCE metadata services.
//! - [`workspace`]: reproducible workspace tarballs.
//! - [`outputs`]: what attempts leave behind, stored by content, and pulling it back.
//!
//! No cloud SDK is a dependency of this crate.

pub mod catalog;
pub mod clock;
pub mod contract;
pub mod gce;
pub mod handlers;
pub mod ids;
pub mod job;
pub mod notice;
pub mod outputs;
pub mod plan;
pub mod pool;
pub mod ports;
pub mod progress;
pub mod resources;
pub mod route;
pub mod size;
pub mod url;
pub mod worker;
pub mod workspace;
