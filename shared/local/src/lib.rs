//! Studio's embedded backend: everything on this machine, no account needed.
//!
//! # Layout
//! - [`db`]: the SQLite file under `$STUDIO_HOME` (WAL; shared by all processes).
//! - [`store`]: the job store (compare-and-set on a version column).
//! - [`queue`]: queues with leases, receive counts and dead-letter queues.
//! - [`fleet`]: worker processes as instances, kept at each group's target.
//! - [`artifacts`]: workspaces and logs as files.
//! - [`driver`]: runs the handlers on a timer, as the cloud's events would.
//! - [`lock`]: `flock` helpers (instance liveness, one driver at a time).

pub mod artifacts;
pub mod db;
pub mod driver;
pub mod fleet;
pub mod lock;
pub mod queue;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use studio_core::clock::Clock;
use studio_core::handlers::{Ctx, Settings};
use studio_core::plan::LocalPlanner;
use studio_core::ports::{PortError, WorkQueue};

/// Every local adapter, opened on one `$STUDIO_HOME`.
pub struct LocalBackend {
    pub home: PathBuf,
    pub db: Arc<db::Db>,
    pub store: Arc<store::SqliteStore>,
    pub queue: Arc<queue::SqliteQueue>,
    pub fleet: Arc<fleet::ProcessFleet>,
    pub artifacts: Arc<artifacts::DirArtifacts>,
    pub ctx: Ctx,
}

impl LocalBackend {
    /// Opens (creating if needed) the backend in `home`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub async fn open(
        home: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
        launcher: fleet::Launcher,
    ) -> Result<LocalBackend, PortError> {
        let db = Arc::new(db::Db::open(home)?);
        let store = Arc::new(store::SqliteStore::new(db.clone()));
        let queue = Arc::new(queue::SqliteQueue::new(db.clone(), clock.clone()));
        let fleet = Arc::new(fleet::ProcessFleet::new(
            db.clone(),
            home.join("instances"),
            launcher,
            clock.clone(),
        ));
        let artifacts = Arc::new(artifacts::DirArtifacts::new(home.to_path_buf()));
        queue.ensure_queue(&settings.submit_queue).await?;
        let ctx = Ctx {
            store: store.clone(),
            queue: queue.clone(),
            fleet: fleet.clone(),
            planner: Arc::new(LocalPlanner),
            clock,
            settings,
        };
        Ok(LocalBackend {
            home: home.to_path_buf(),
            db,
            store,
            queue,
            fleet,
            artifacts,
            ctx,
        })
    }

    pub fn driver(&self) -> driver::Driver {
        driver::Driver {
            ctx: self.ctx.clone(),
            queue: self.queue.clone(),
            fleet: self.fleet.clone(),
        }
    }

    /// The lock held by whichever process drives the handlers.
    pub fn driver_lock_path(&self) -> PathBuf {
        self.home.join("driver.lock")
    }
}
