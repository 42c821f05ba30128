//! What `studio down` needs from the home: stop its driver so that no
//! worker is launched any more, hold its queues so that no worker starts a
//! new job, and tell idle workers from busy ones.
//!
//! Both holds are `flock`s that `studio down` keeps for as long as it runs:
//! the driver's own `driver.lock` (a driver started meanwhile by another
//! command finds it taken and leaves at once), and `queues.lock`, which
//! every receive checks inside its write transaction. A `down` that is
//! killed releases both, and the home goes on as before.

use crate::backend::LocalBackend;
use crate::{lock, process};
use std::fs::File;
use std::path::Path;
use std::time::Duration;
use studio_core::ports::PortError;
use tracing::warn;

const PORT: &str = "local down";

pub use crate::lock::queues_lock_path;

/// The pid of the process that drives the home, if one does.
pub fn driver_pid(be: &LocalBackend) -> Option<i32> {
    let path = be.driver_lock_path();
    if !lock::is_held(&path) {
        return None;
    }
    std::fs::read_to_string(&path).ok()?.trim().parse().ok()
}

/// Whether `pid` is alive and runs `studio … --home HOME … SUB`.
pub fn runs_studio(pid: i32, home: &Path, sub: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let home = home.as_os_str().as_encoded_bytes();
    args.windows(2).any(|w| w[0] == b"--home" && w[1] == home) && args.contains(&sub.as_bytes())
}

/// Holds the home's queues: from the return on, no worker receives an
/// item (what is queued stays queued). `None` when another `studio down`
/// holds them.
///
/// # Errors
/// The lock file cannot be opened, or the database fails.
pub fn hold_queues(be: &LocalBackend) -> Result<Option<File>, PortError> {
    let path = queues_lock_path(&be.home);
    let io = |e: std::io::Error| PortError::backend(PORT, e);
    // A receive checks with a shared lock held for an instant: try a
    // little while before deciding someone else holds it.
    let mut held = None;
    for _ in 0..40 {
        held = lock::try_lock(&path).map_err(io)?;
        if held.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let Some(held) = held else {
        return Ok(None);
    };
    // A barrier: a receive that began before the lock was taken commits
    // before this write transaction can start; every later one sees it.
    be.db
        .conn()
        .execute_batch("BEGIN IMMEDIATE; COMMIT;")
        .map_err(crate::db::sql(PORT))?;
    Ok(Some(held))
}

/// How [`stop_driver`] went.
pub struct DriverStopped {
    /// The driver lock, now ours: held, no driver can start.
    pub lock: File,
    /// The pid of the driver that was stopped, if one ran.
    pub pid: Option<i32>,
}

/// Stops the home's driver (SIGTERM: it finishes the tick under way and
/// leaves; SIGKILL past `grace`) and takes its lock, so that none starts
/// again while the caller holds it.
///
/// # Errors
/// The lock file cannot be opened.
pub async fn stop_driver(be: &LocalBackend, grace: Duration) -> Result<DriverStopped, PortError> {
    let path = be.driver_lock_path();
    let io = |e: std::io::Error| PortError::backend(PORT, e);
    let mut stopped = None;
    let mut since = tokio::time::Instant::now();
    loop {
        if let Some(lock) = lock::try_lock(&path).map_err(io)? {
            return Ok(DriverStopped { lock, pid: stopped });
        }
        if let Some(pid) = driver_pid(be).filter(|p| runs_studio(*p, &be.home, "driver")) {
            if stopped != Some(pid) {
                // A new driver (another command started one): SIGTERM it too.
                stopped = Some(pid);
                since = tokio::time::Instant::now();
                signal(pid, libc::SIGTERM);
            } else if since.elapsed() >= grace {
                warn!(pid, "the driver ignored SIGTERM; killing it");
                signal(pid, libc::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a worker runs anything besides itself (a script, what the script
/// started, a build of the job's environment).
pub fn runs_something(worker_pid: i32) -> bool {
    process::session_members(worker_pid)
        .into_iter()
        .any(|p| p != worker_pid)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on a worker or driver of this home, found alive.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
