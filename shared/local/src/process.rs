//! Process hygiene for the background processes of the local backend (the
//! driver and the workers): what they must not inherit, and how the fleet
//! finds everything a dead worker left running.
//!
//! Every worker is started as the leader of its own session (`setsid`), so
//! its session id is its pid, and everything it starts (the script, and the
//! script's own children, whatever process group they move to) stays in that
//! session. When the worker dies, the fleet kills the whole session, as a
//! machine's death would. A script that calls `setsid` itself leaves the
//! session and escapes this; that is documented, not prevented.

use std::path::Path;

/// Makes sure no file descriptor from 3 up, except `keep`, survives the
/// coming `exec`. Meant for `pre_exec`: it allocates nothing and makes only
/// async-signal-safe calls, so a pipe or socket the caller's shell handed us
/// (a CI step's output, the write end of `| cat`) never stays open in a
/// process that outlives the command.
///
/// The descriptors are marked close-on-exec rather than closed
/// (`close_range(.., CLOSE_RANGE_CLOEXEC)`), so the pipe through which the
/// standard library reports a failed `exec` still works; on kernels without
/// it (before 5.11) they are closed.
pub fn close_inherited_fds(keep: Option<i32>) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    let ranges: [(u32, u32); 2] = match keep {
        Some(k) if k >= 3 => [(3, k as u32 - 1), (k as u32 + 1, u32::MAX)],
        _ => [(3, u32::MAX), (1, 0)],
    };
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only affects descriptors of this process.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) };
        if r == 0 {
            continue;
        }
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r != 0 {
            // Kernels before 5.9: close them one by one, up to the limit.
            // SAFETY: sysconf and close are async-signal-safe.
            let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(256, 1 << 16) as u32;
            for fd in first..=last.min(max) {
                unsafe {
                    libc::close(fd as i32);
                }
            }
        }
    }
}

/// `(session id, process group)` of a live process, from `/proc/<pid>/stat`;
/// `None` for a zombie (it has ended; only its parent's wait is missing).
fn stat_ids(stat: &str) -> Option<(i32, i32)> {
    // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parens.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    if matches!(f.next()?, "Z" | "X") {
        return None;
    }
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some((session, pgrp))
}

/// Pids of this user's processes in session `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    if sid <= 1 {
        return Vec::new();
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let path = Path::new("/proc").join(pid.to_string());
        if std::fs::metadata(&path).map_or(true, |m| m.uid() != me) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        if stat_ids(&stat).is_some_and(|(s, _)| s == sid) {
            out.push(pid);
        }
    }
    out
}

/// Sends `sig` to every process of session `sid` (but never to this process);
/// returns how many were signalled.
pub fn signal_session(sid: i32, sig: i32) -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in session_members(sid) {
        if pid == me {
            continue;
        }
        // SAFETY: kill(2) on a pid just read from /proc, owned by this user.
        if unsafe { libc::kill(pid, sig) } == 0 {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (my (odd) name) S 1 4242 4240 0 -1 4194560 100";
        assert_eq!(stat_ids(line), Some((4240, 4242)));
        assert_eq!(stat_ids("garbage"), None);
        assert_eq!(stat_ids("7 (sleep) Z 1 7 7 0"), None, "zombies have ended");
    }

    #[test]
    fn a_session_and_its_children_are_found_and_killed() {
        use std::os::unix::process::CommandExt;
        // A shell in its own session starting a grandchild in another group.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "(sleep 300 &) ; sleep 300"]);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let sid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while session_members(sid).len() < 3 {
            assert!(std::time::Instant::now() < deadline, "children started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(signal_session(sid, libc::SIGKILL) >= 3);
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The orphaned sleep is reaped by init; wait until it is gone.
        while !session_members(sid).is_empty() {
            assert!(std::time::Instant::now() < deadline, "session emptied");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
