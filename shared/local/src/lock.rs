//! `flock(2)` helpers. A lock is released by the kernel when its holder
//! dies, however it dies, which makes it the local fleet's liveness signal
//! and the driver's single-runner guard.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        crate::files::create_dir_all(dir)?;
    }
    crate::files::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Takes the lock if nobody holds it; `None` when someone does.
///
/// # Errors
/// The lock file cannot be opened.
pub fn try_lock(path: &Path) -> std::io::Result<Option<File>> {
    let f = open(path)?;
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok(if r == 0 { Some(f) } else { None })
}

/// Waits for the lock.
///
/// # Errors
/// The lock file cannot be opened or locked.
pub fn lock(path: &Path) -> std::io::Result<File> {
    let f = open(path)?;
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if r == 0 {
        Ok(f)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether some live process holds the lock at `path`.
pub fn is_held(path: &Path) -> bool {
    matches!(try_lock(path), Ok(None))
}

/// Whether some other process holds the lock at `path` exclusively, found
/// with a shared lock that is never created and never kept: many processes
/// may ask at once without getting in each other's way.
pub fn is_held_by_other(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own (released when `f` drops).
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0
}

/// The lock `studio down` holds while it stops the home: no queue of the
/// home hands out an item meanwhile (here, beside the other locks, so the
/// queue reads it without depending on `down`).
pub fn queues_lock_path(home: &std::path::Path) -> std::path::PathBuf {
    home.join("queues.lock")
}
