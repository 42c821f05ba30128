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
//! - [`error`]: [`error::PortError`], what every port returns.
//! - [`ports`]: the traits adapters implement (store, queue, fleet, artifacts).
//! - [`handlers`]: one file per function (submit, scale, interruption,
//!   cleanup), the sweep, cancel, and the worker's claim rule.
//! - [`worker`]: the worker loop that runs scripts, one file per phase.
//! - [`notice`]: interruption notices from the EC2 and GCE metadata services.
//! - [`workspace`]: reproducible workspace tarballs.
//! - [`outputs`]: what attempts leave behind: manifests, hashing, the walk.
//! - [`outputs_store`]: outputs uploaded to and pulled from an artifact store.
//! - [`progress`]: what a script says of its progress.
//! - [`route`]: one fleet and one queue over several clouds, routed by pool.
//! - [`url`]: percent-encoding of paths, queries and forms.
//!
//! The modules are layered, each importing only those above it:
//! primitives (`size`, `ids`, `clock`, `url`, `error`, `resources`,
//! `catalog`, `gce`) → the wire contract (`contract`) → the domain (`plan`,
//! `outputs`, `job`, `pool`, `progress`, `workspace`, `notice`) → the
//! ports (`ports`, `outputs_store`) → what runs over them (`handlers`,
//! `route`, `worker`). A test (`tests/tests/layout.rs`) keeps it so.
//!
//! No cloud SDK is a dependency of this crate.

pub mod catalog;
pub mod clock;
pub mod contract;
pub mod error;
pub mod gce;
pub mod handlers;
pub mod ids;
pub mod job;
pub mod notice;
pub mod outputs;
pub mod outputs_store;
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
