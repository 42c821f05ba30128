//! A Unix user per attempt, on machines where the worker is root.
//!
//! Every attempt on a cloud machine runs as a uid of its own, leased from a
//! range the machine reserves for jobs (`studio worker --job-uids
//! FIRST-LAST`, none of them in `/etc/passwd`), with the same number as its
//! only group. A uid is taken in turn (the next after the last one used,
//! so a uid comes back only after the whole range) and held by a lock for
//! the attempt's life. Before an attempt gets it, and again when its script
//! ends, every process of that uid is killed at once (`kill(-1)` from a
//! process of that uid, which no fork can outrun), wherever in the process
//! tree it went (`setsid`, double forks): nothing of one job outlives it to
//! read the next one's `/proc/PID/environ` or touch its files, and what a
//! job leaves in the machine's shared temporary directories goes with it.
//!
//! The same module checks, as the attempt's user, that the machine's
//! metadata endpoints (where its role's credentials are) do not answer.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// The uids a cloud machine of Studio's reserves for jobs (its bootstrap
/// passes them to the worker and to the metadata block).
pub const MACHINE_JOB_UIDS: &str = "200000-209999";

/// What keeps jobs' uids from the metadata service (`infra/metadata-block.sh`),
/// installed by both clouds' bootstraps as [`metadata_block_unit`].
pub const METADATA_BLOCK: &str = include_str!("../../../../infra/metadata-block.sh");

/// The systemd unit that runs [`METADATA_BLOCK`] at every boot, before the
/// worker (which requires it), for the uids [`MACHINE_JOB_UIDS`].
pub fn metadata_block_unit() -> String {
    format!(
        "[Unit]\n\
         Description=Keep Studio's jobs from the metadata service\n\
         Before=network-pre.target studio-worker.service\n\
         Wants=network-pre.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/local/lib/studio/metadata-block {MACHINE_JOB_UIDS}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target"
    )
}

/// The uids a machine reserves for jobs: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobUsers {
    pub first: u32,
    pub last: u32,
}

impl JobUsers {
    /// `FIRST-LAST`, e.g. `200000-209999`: at least 2 uids, none below 1000.
    ///
    /// # Errors
    /// What is wrong with the range.
    pub fn parse(text: &str) -> Result<JobUsers, String> {
        let bad = || format!("'{text}': expected FIRST-LAST, e.g. 200000-209999");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first < 1000 || last <= first || last >= u32::MAX - 1 {
            return Err(format!(
                "'{text}': a range of at least two uids, from 1000 up, first before last"
            ));
        }
        Ok(JobUsers { first, last })
    }

    fn count(&self) -> u32 {
        self.last - self.first + 1
    }

    /// The next free uid after the last one leased, held until the lease
    /// is dropped; its leftovers (processes, temporary files) are gone
    /// before it is returned. `state` is a root-owned directory of the
    /// worker's (`<work_root>/.uids`).
    ///
    /// # Errors
    /// Every uid is held, or the state directory cannot be used.
    pub(crate) fn lease(&self, state: &Path) -> std::io::Result<Lease> {
        std::fs::create_dir_all(state)?;
        let dir = super::jobfs::Dir::open(state)?;
        let next = lock_file(dir.raw(), "next", true)?.expect("a blocking lock is taken");
        let mut buf = [0u8; 16];
        // SAFETY: pread into a buffer we own, on a descriptor we own.
        let n = unsafe { libc::pread(next.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let start: u32 = std::str::from_utf8(&buf[..n.max(0) as usize])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        for i in 0..self.count() {
            let slot = (start.wrapping_add(i)) % self.count();
            let uid = self.first + slot;
            if let Some(lock) = lock_file(dir.raw(), &uid.to_string(), false)? {
                let after = format!("{:<15}\n", (slot + 1) % self.count());
                // SAFETY: pwrite from a buffer we own.
                unsafe { libc::pwrite(next.as_raw_fd(), after.as_ptr().cast(), after.len(), 0) };
                clear(uid)?;
                return Ok(Lease { uid, _lock: lock });
            }
        }
        Err(std::io::Error::other(format!(
            "every job uid {}-{} is in use on this machine",
            self.first, self.last
        )))
    }
}

/// One attempt's uid (and gid, the same number), held while this lives.
pub(crate) struct Lease {
    pub(crate) uid: u32,
    _lock: OwnedFd,
}

impl Lease {
    pub(crate) fn ids(&self) -> (u32, u32) {
        (self.uid, self.uid)
    }
}

/// `<dir>/<name>`, created 0600, locked exclusively: waiting for the lock
/// when `wait`, else `None` if another holds it.
pub(crate) fn lock_file(dir: i32, name: &str, wait: bool) -> std::io::Result<Option<OwnedFd>> {
    let c = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: openat with a NUL-terminated name; the descriptor is ours.
    let raw = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
        return Ok(Some(fd));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Makes `cmd` run as `uid:gid` with no other group, and die with the
/// worker. Replaces std's `uid`/`gid`, so that the order is ours:
/// groups, then gid, then uid, then the parent-death signal (which a
/// change of credentials would clear).
pub(crate) fn run_as(cmd: &mut tokio::process::Command, uid: u32, gid: u32) {
    let groups = [gid as libc::gid_t];
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid,
    // prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Kills every process of `uid`, then removes what it left in the
/// machine's shared temporary directories. Returns once none of its
/// processes is alive (zombies aside), or after 30 s.
///
/// # Errors
/// The killing process could not be started.
pub(crate) fn clear(uid: u32) -> std::io::Result<()> {
    kill_all(uid)?;
    for tmp in ["/tmp", "/var/tmp", "/dev/shm"] {
        remove_owned(Path::new(tmp), uid);
    }
    Ok(())
}

fn kill_all(uid: u32) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/");
    // SAFETY: only async-signal-safe calls between fork and _exit: the
    // child becomes `uid` and signals every process it may (all of that
    // uid's, never itself), atomically with respect to their forks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        });
    }
    let status = cmd.status()?;
    if status.code() == Some(2) {
        return Err(std::io::Error::other(format!("cannot become uid {uid}")));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(uid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether a process of `uid` (real or effective) lives, zombies aside.
pub fn alive(uid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Ok(status) = std::fs::read_to_string(p.path().join("status")) else {
            return false;
        };
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        let ours = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(2)
                    .any(|v| v == uid.to_string())
            });
        ours && !zombie
    })
}

/// Removes the entries of `dir` owned by `uid` (links themselves, trees
/// without following links).
fn remove_owned(dir: &Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.uid() != uid {
            continue;
        }
        let _ = if m.is_dir() {
            // std's remove_dir_all never follows a link.
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
    }
}

/// The first of `endpoints` that answers a TCP connection from `uid:gid`
/// within `wait`, or `None`: all of them refuse, drop or cannot be routed.
///
/// # Errors
/// The probing process could not be started.
pub fn reachable_as(
    uid: u32,
    gid: u32,
    endpoints: &[SocketAddr],
    wait: Duration,
) -> std::io::Result<Option<SocketAddr>> {
    for (i, addr) in endpoints.iter().enumerate() {
        if probe(uid, gid, addr, wait)? {
            return Ok(Some(endpoints[i]));
        }
    }
    Ok(None)
}

/// One connection attempt from a child that is `uid:gid`: exit 0 if it
/// connected, 1 if not.
fn probe(uid: u32, gid: u32, addr: &SocketAddr, wait: Duration) -> std::io::Result<bool> {
    use std::os::unix::process::CommandExt;
    let (family, raw, len) = sockaddr(addr);
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    let mut cmd = std::process::Command::new("/");
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid,
    // socket, fcntl, connect, poll, getsockopt, _exit) between fork and _exit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            let s = libc::socket(family, libc::SOCK_STREAM, 0);
            if s < 0 {
                libc::_exit(1);
            }
            libc::fcntl(s, libc::F_SETFL, libc::O_NONBLOCK);
            let r = libc::connect(s, raw.as_ptr().cast(), len);
            if r == 0 {
                libc::_exit(0);
            }
            if *libc::__errno_location() != libc::EINPROGRESS {
                libc::_exit(1);
            }
            let mut p = libc::pollfd {
                fd: s,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut p, 1, ms) != 1 {
                libc::_exit(1);
            }
            let mut err: libc::c_int = 0;
            let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut l,
            );
            libc::_exit(if err == 0 { 0 } else { 1 });
        });
    }
    match cmd.status()?.code() {
        Some(0) => Ok(true),
        Some(2) => Err(std::io::Error::other(format!("cannot become uid {uid}"))),
        _ => Ok(false),
    }
}

/// `addr` as the bytes of a `sockaddr_in`/`sockaddr_in6`, made before the
/// fork (the child only passes them on).
fn sockaddr(addr: &SocketAddr) -> (i32, [u8; 28], libc::socklen_t) {
    let mut raw = [0u8; 28];
    match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let n = std::mem::size_of::<libc::sockaddr_in>();
            // SAFETY: copies the plain struct's bytes into a large enough buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sa as *const libc::sockaddr_in).cast(),
                    raw.as_mut_ptr(),
                    n,
                )
            };
            (libc::AF_INET, raw, n as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            let n = std::mem::size_of::<libc::sockaddr_in6>();
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&sa as *const libc::sockaddr_in6).cast(),
                    raw.as_mut_ptr(),
                    n,
                )
            };
            (libc::AF_INET6, raw, n as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_two_uids_or_more_above_the_system_ones() {
        assert_eq!(
            JobUsers::parse("200000-209999").unwrap(),
            JobUsers {
                first: 200000,
                last: 209999
            }
        );
        for bad in ["", "5", "100-200", "3000-3000", "4000-3000", "a-b"] {
            assert!(JobUsers::parse(bad).is_err(), "{bad}");
        }
    }
}
