//! Signals to a whole process group: a script's or a build step's, and
//! whatever it started that stayed in it.

/// Sends `sig` to process group `pgid` (nothing for 0).
pub(crate) fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}
