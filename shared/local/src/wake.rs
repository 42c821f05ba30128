//! Waking a waiting process when the home changes, instead of polling.
//!
//! A writer, once its transaction has committed, *touches* a topic: it
//! opens and closes `<home>/wake/<topic>` for writing ([`notify`]). A
//! waiter watches that directory with inotify (one descriptor and one
//! reader task per open home, [`Wake`]), subscribes to its topic *before*
//! it looks at the database, and then sleeps until the topic is touched or
//! its own deadline passes ([`Waiter::wait_until`]). So a write that lands
//! after the look wakes the waiter, and one that landed before it was seen
//! by the look: nothing is missed, and an idle waiter uses no CPU.
//!
//! Topics: `queue.<name>` (a message sent, released or deleted; see
//! [`crate::queue`]) and [`job_topic`] (a job record written or a log
//! appended; followers). Where inotify is not available (another OS, the
//! per-user limit of instances reached) a waiter sleeps to its deadline, or
//! polls at the interval it asked for ([`Waiter::polling_every`]: a queue's
//! receive, every 50 ms, as before).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Jobs' records and logs are spread over this many topics, so a follower
/// is woken by its own job and by few others, and the directory holds a
/// bounded number of files.
const JOB_TOPICS: u32 = 64;

/// The topic of a job's record writes and log appends (shared with the
/// jobs whose ids hash alike).
pub fn job_topic(id: &str) -> String {
    // FNV-1a: the same in every process, unlike std's hasher.
    let h = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("jobs.{}", h % JOB_TOPICS)
}

/// The directory of a home's topics.
pub fn dir(home: &Path) -> PathBuf {
    home.join("wake")
}

/// The topic of a queue: its name, with anything a file name should not
/// hold replaced (SQS names are `[A-Za-z0-9_-]`, so nothing is, in practice).
pub fn queue_topic(queue: &str) -> String {
    let safe: String = queue
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("queue.{safe}")
}

/// Wakes every waiter of `topic` in `home`. Call it after the change is
/// committed. Best effort: a waiter that is not woken still looks again at
/// its own deadline.
pub fn notify(home: &Path, topic: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    // Closing a file opened for writing is the event (IN_CLOSE_WRITE);
    // nothing is written. No link is followed, and a FIFO put here is not
    // waited on.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir(home).join(topic));
}

/// A home's inotify watch, shared by every waiter of this process.
pub struct Wake {
    dir: PathBuf,
    /// Made on the first subscription (it needs a runtime); `None` inside
    /// when inotify could not be had.
    hub: OnceLock<Option<Hub>>,
}

type Topics = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

struct Hub {
    topics: Topics,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Wake {
    /// The watch of `home`'s topics (the directory is made here).
    pub fn new(home: &Path) -> Wake {
        let _ = crate::files::create_dir_all(&dir(home));
        Wake {
            dir: dir(home),
            hub: OnceLock::new(),
        }
    }

    /// A waiter on `topic`, woken by every [`notify`] from now on. Call it
    /// before looking at what the topic guards. Must be called from inside
    /// a Tokio runtime.
    pub fn subscribe(&self, topic: &str) -> Waiter {
        let hub = self.hub.get_or_init(|| Hub::start(&self.dir));
        let rx = hub.as_ref().filter(|h| !h.reader.is_finished()).map(|h| {
            let mut topics = h.topics.lock().unwrap_or_else(|p| p.into_inner());
            topics
                .entry(topic.to_string())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        });
        Waiter { rx, poll: None }
    }
}

impl Hub {
    #[cfg(target_os = "linux")]
    fn start(dir: &Path) -> Option<Hub> {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no inotify; polling");
            return None;
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO,
            )
        };
        if wd < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no inotify watch; polling");
            return None;
        }
        // Outside a runtime there is nothing to read events on: poll. (A
        // runtime without I/O would panic below; Studio's enable it all.)
        tokio::runtime::Handle::try_current().ok()?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the
        // same until it is dropped.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .ok()?;
        let topics: Topics = Arc::default();
        let reader = tokio::spawn(read_events(fd, topics.clone()));
        Some(Hub { topics, reader })
    }

    #[cfg(not(target_os = "linux"))]
    fn start(_dir: &Path) -> Option<Hub> {
        None
    }
}

/// Reads inotify events for as long as the hub lives, and bumps the
/// topic of each (every topic when the kernel's queue overflowed).
#[cfg(target_os = "linux")]
async fn read_events(fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>, topics: Topics) {
    use std::os::fd::AsRawFd;
    // Room for many events at once; each is 16 bytes and its name.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => {}
            }
            // Waiters then sleep to their deadlines.
            tracing::warn!(error = %e, "reading inotify failed; waiters wake at their deadlines");
            return;
        }
        let mut touched = Vec::new();
        let mut overflow = false;
        let mut at = 0usize;
        let n = n as usize;
        while at + 16 <= n {
            let word = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
            let mask = word(4);
            let len = word(12) as usize;
            let name = &buf[at + 16..(at + 16 + len).min(n)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                overflow = true;
            } else if let Ok(name) = std::str::from_utf8(name) {
                touched.push(name.to_string());
            }
            at += 16 + len;
        }
        let topics = topics.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, tx) in topics.iter() {
            if overflow || touched.iter().any(|t| t == topic) {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }
}

/// One subscription to a topic.
pub struct Waiter {
    rx: Option<watch::Receiver<u64>>,
    /// Without notifications, look again this often (else at the deadline).
    poll: Option<Duration>,
}

impl Waiter {
    /// Without inotify, wake every `every` rather than only at the deadline.
    pub fn polling_every(mut self, every: Duration) -> Waiter {
        self.poll = Some(every);
        self
    }

    /// Returns when the topic was touched since the subscription (or the
    /// last return), or at `until`, whichever is first. Without inotify it
    /// returns at `until`, or after its poll interval.
    pub async fn wait_until(&mut self, until: Instant) {
        match &mut self.rx {
            Some(rx) => {
                if let Ok(Err(_)) = tokio::time::timeout_at(until, rx.changed()).await {
                    // The hub was dropped (its Db with it): no more wakes.
                    self.rx = None;
                }
            }
            None => {
                let at = match self.poll {
                    Some(every) => until.min(Instant::now() + every),
                    None => until,
                };
                tokio::time::sleep_until(at).await;
            }
        }
    }

    /// Whether this waiter is woken by notifications (not polling).
    pub fn is_notified(&self) -> bool {
        self.rx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_touch_after_the_subscription_wakes_the_waiter_and_another_topic_does_not() {
        let home = tempfile::tempdir().unwrap();
        let wake = Wake::new(home.path());
        let mut w = wake.subscribe("queue.a");
        assert!(w.is_notified(), "inotify is available on the test machine");
        // Another topic: the waiter sleeps to its deadline.
        notify(home.path(), "queue.b");
        let far = Instant::now() + Duration::from_millis(300);
        w.wait_until(far).await;
        assert!(Instant::now() >= far, "woken by another topic");
        // Its own topic, touched before the wait began: the wait returns at once.
        notify(home.path(), "queue.a");
        let far = Instant::now() + Duration::from_secs(600);
        w.wait_until(far).await;
        assert!(Instant::now() < far);
    }

    #[tokio::test]
    async fn a_touch_from_another_thread_wakes_a_waiting_task() {
        let home = tempfile::tempdir().unwrap();
        let wake = Wake::new(home.path());
        let mut w = wake.subscribe(&job_topic("01job"));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let p = home.path().to_path_buf();
        let t = std::thread::spawn(move || {
            go_rx.recv().unwrap();
            notify(&p, &job_topic("01job"));
        });
        go_tx.send(()).unwrap();
        let far = Instant::now() + Duration::from_secs(600);
        w.wait_until(far).await;
        assert!(Instant::now() < far);
        t.join().unwrap();
    }

    #[test]
    fn job_topics_are_stable_and_few() {
        assert_eq!(job_topic("01abc"), job_topic("01abc"));
        let topics: std::collections::HashSet<_> =
            (0..10_000).map(|i| job_topic(&format!("job{i}"))).collect();
        assert_eq!(topics.len(), JOB_TOPICS as usize);
    }

    #[test]
    fn queue_topics_are_file_names() {
        assert_eq!(queue_topic("studio-work-a_b"), "queue.studio-work-a_b");
        assert_eq!(queue_topic("../x/y"), "queue..._x_y");
        assert!(!queue_topic(&"x".repeat(500)).contains('/'));
    }
}
