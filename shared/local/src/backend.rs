//! [`LocalBackend`]: every local adapter, opened on one `$STUDIO_HOME`.

use crate::{artifacts, db, files, fleet, queue, store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use studio_core::clock::{Clock, SystemClock};
use studio_core::handlers::{Ctx, Settings};
use studio_core::job::Job;
use studio_core::plan::LocalPlanner;
use studio_core::ports::{Created, PortError, WorkQueue};

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
    /// Opens (creating if needed) the backend in `home`, on the system's
    /// clocks: the wall clock for records, the monotonic clock for leases.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub async fn open_system(
        home: &Path,
        settings: Settings,
        launcher: fleet::Launcher,
    ) -> Result<LocalBackend, PortError> {
        LocalBackend::open_with_clocks(
            home,
            settings,
            Arc::new(SystemClock),
            Arc::new(queue::MonotonicClock),
            launcher,
        )
        .await
    }

    /// Opens (creating if needed) the backend in `home`, with one clock for
    /// everything, leases included (tests that move a manual clock).
    ///
    /// # Errors
    /// The database cannot be opened.
    pub async fn open(
        home: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
        launcher: fleet::Launcher,
    ) -> Result<LocalBackend, PortError> {
        LocalBackend::open_with_clocks(home, settings, clock.clone(), clock, launcher).await
    }

    /// Opens (creating if needed) the backend in `home`; `lease_clock` keeps
    /// the queues' visibility timeouts.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub async fn open_with_clocks(
        home: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
        lease_clock: Arc<dyn Clock>,
        launcher: fleet::Launcher,
    ) -> Result<LocalBackend, PortError> {
        let db = Arc::new(db::Db::open(home)?);
        let store = Arc::new(store::SqliteStore::new(db.clone()));
        let queue = Arc::new(queue::SqliteQueue::with_lease_clock(
            db.clone(),
            clock.clone(),
            lease_clock,
        ));
        let fleet = Arc::new(fleet::ProcessFleet::new(
            db.clone(),
            home.join("instances"),
            launcher,
            clock.clone(),
        ));
        let artifacts = Arc::new(artifacts::DirArtifacts::new(home.to_path_buf()));
        for dir in ["jobs", "instances", "artifacts"] {
            files::create_dir_all(&home.join(dir))
                .map_err(|e| PortError::backend("local store", e))?;
        }
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

    /// Writes a new job (queued, attempt 1) and its `SubmitJob` message in
    /// one transaction, so the id can be printed and cancelled at once. The
    /// driver's submit handler then finds the job and only finishes the
    /// steps (pool, work item, target). An existing job with that id is
    /// returned as it is, and nothing is sent.
    ///
    /// # Errors
    /// Database errors.
    pub fn submit(&self, job: &Job, body: &str) -> Result<Created<Job>, PortError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db::sql("local store"))?;
        let created = store::create_in(&tx, job)?;
        if matches!(created, Created::New(_)) {
            self.queue
                .send_in(&tx, &self.ctx.settings.submit_queue, &[body.to_string()])?;
        }
        tx.commit().map_err(db::sql("local store"))?;
        if matches!(created, Created::New(_)) {
            self.queue.notify(&self.ctx.settings.submit_queue);
            self.db.notify(&crate::wake::job_topic(job.id.as_str()));
        }
        Ok(created)
    }

    /// The lock held by whichever process drives the handlers.
    pub fn driver_lock_path(&self) -> PathBuf {
        self.home.join("driver.lock")
    }
}
