//! Studio's embedded backend: everything on this machine, no account needed.
//!
//! # Layout
//! - [`backend`]: [`LocalBackend`], every adapter below opened on one home.
//! - [`db`]: the SQLite file under `$STUDIO_HOME` (WAL; shared by all processes).
//! - [`store`]: the job store (compare-and-set on a version column).
//! - [`queue`]: queues with leases, receive counts and dead-letter queues.
//! - [`fleet`]: worker processes as instances, kept at each group's target.
//! - [`artifacts`]: workspaces and logs as files.
//! - [`driver`]: runs the handlers on a timer, as the cloud's events would;
//!   one driver process per home ([`driver::serve`]).
//! - [`down`]: what `studio down` needs: stopping the driver, holding the
//!   queues, the live workers.
//! - [`lock`]: `flock` helpers (instance liveness, one driver at a time).
//! - [`process`]: what background processes must not inherit; killing a
//!   dead worker's whole session.
//! - [`files`]: `0700` directories and `0600` files under the home.
//! - [`gc`]: what `studio gc` removes, and when.
//! - [`wake`]: a waiting worker, driver or follower is woken by the change
//!   it waits for (inotify on `<home>/wake`), not by polling.

pub mod artifacts;
pub mod backend;
pub mod db;
pub mod down;
pub mod driver;
pub mod files;
pub mod fleet;
pub mod gc;
pub mod lock;
pub mod process;
pub mod queue;
pub mod store;
pub mod wake;

pub use backend::LocalBackend;
