//! What the CLI's end-to-end tests share: a temporary `STUDIO_HOME` with
//! the real `studio` binary, and the process helpers (polls with a
//! deadline, never sleeps standing in for a signal).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Says what a test of size and seed did, on the real stderr: libtest
/// captures `eprintln!` of passing tests, and CI's log must show the sizes
/// and seeds of every run.
#[allow(unused_macros)]
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub const STUDIO: &str = env!("CARGO_BIN_EXE_studio");

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub struct Home {
    pub dir: tempfile::TempDir,
    /// The home, relative to `dir` (or `dir` itself); commands get it as an
    /// absolute path unless a test hands it on as it is.
    pub home: PathBuf,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        Home {
            home: dir.path().to_path_buf(),
            dir,
        }
    }

    /// A home at `rel` under the temporary directory (given to commands as is,
    /// so it may be relative to their working directory).
    pub fn at(rel: &str) -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
            home: PathBuf::from(rel),
        }
    }

    /// The home as a path from here.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.home)
    }

    /// Commands run in a copy of `examples/` of this home's own, so the
    /// outputs `studio run` pulls (`./studio-out/`) never land in the repository.
    pub fn work(&self) -> PathBuf {
        let work = self.dir.path().join("work");
        if !work.exists() {
            std::fs::create_dir_all(&work).unwrap();
            for f in ["hello.py", "train.py"] {
                std::fs::copy(examples().join(f), work.join(f)).unwrap();
            }
        }
        work
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(STUDIO);
        c.args(args)
            .env("STUDIO_HOME", self.path())
            .env("STUDIO_POOL_GRACE", "1s")
            .env("STUDIO_MAX_WORKERS", "4")
            .env_remove("STUDIO_LOG")
            // Jobs' environments are built offline: packages come from
            // their workspaces, Pythons from this machine.
            .env("UV_OFFLINE", "1")
            .env("UV_PYTHON_DOWNLOADS", "never")
            .current_dir(self.work());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    pub fn jobs(&self) -> Vec<Value> {
        let out = self.run(&["status", "--output", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn job(&self, id: &str) -> Value {
        let out = self.run(&["status", id, "--output", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        let path = self.path().join("studio.sqlite3");
        if !path.exists() {
            return 0;
        }
        let db = rusqlite::Connection::open(path).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        match db.query_row(sql, [], |r| r.get(0)) {
            Ok(n) => n,
            // The file exists a moment before the store's first run made
            // its tables (a driver starting now): nothing in it yet.
            Err(e) if e.to_string().contains("no such table") => 0,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.path().join("jobs").join(id).join("log")).unwrap_or_default()
    }

    /// Processes whose command line (arguments joined by spaces) matches
    /// `<home>[^ ]* <pattern>`, read from /proc (no procps needed).
    pub fn pids(&self, pattern: &str) -> Vec<i32> {
        let re = regex::Regex::new(&format!(
            "{}[^ ]* {}",
            regex::escape(&self.dir.path().display().to_string()),
            pattern
        ))
        .unwrap();
        processes_matching(&re)
    }
}

impl Home {
    /// Makes the `train.py` this home's commands run hold before epoch
    /// `hold + 1` until the returned gate file exists (the test creates it
    /// once it has done what must happen while the script runs: a kill, a
    /// cancel), printing `held at epoch N` every 0.1 s meanwhile (so a
    /// follower keeps writing). A resumed attempt holds too, until the gate
    /// is there; everything else is `examples/train.py`'s: checkpoints,
    /// SIGTERM, outputs. No test then depends on how long epochs take.
    pub fn hold_train_at(&self, hold: u32) -> PathBuf {
        let gate = self.dir.path().join("gate");
        let train = std::fs::read_to_string(examples().join("train.py")).unwrap();
        let lp = "while state[\"epoch\"] < args.epochs:\n";
        assert!(train.contains(lp), "train.py's epoch loop moved");
        let held = train.replacen(
            lp,
            &format!(
                "{lp}    while state[\"epoch\"] >= {hold} and not os.path.exists({gate:?}):\n\
                 \x20       print(f\"held at epoch {{state['epoch']}}\", flush=True)\n\
                 \x20       time.sleep(0.1)\n"
            ),
            1,
        );
        std::fs::write(self.work().join("train.py"), held).unwrap();
        gate
    }

    /// SIGKILL to the worker process running job `id` (as the OOM killer
    /// or a lost machine would end it); returns its instance id.
    pub fn kill_worker_of(&self, id: &str) -> String {
        let worker = self.job(id)["instance"].as_str().unwrap().to_string();
        let pids = self.pids(&format!("worker --pool .* --instance-id {worker}"));
        assert_eq!(pids.len(), 1, "one worker process for {worker}");
        signal(pids[0] as u32, libc::SIGKILL);
        worker
    }
}

/// Every process whose command line (arguments joined by spaces) matches.
pub fn processes_matching(re: &regex::Regex) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if re.is_match(&line) {
            found.push(pid);
        }
    }
    found
}

impl Drop for Home {
    fn drop(&mut self) {
        // Never leave a driver or worker behind, whatever the test did, nor
        // what a worker started (its script runs in the worker's session).
        for pid in self.pids("") {
            kill_session(pid);
        }
        let home = format!("--home {}", self.dir.path().display());
        for pid in processes_matching(&regex::Regex::new(&regex::escape(&home)).unwrap()) {
            signal(pid as u32, libc::SIGKILL);
        }
    }
}

/// Session id of a live process (`None` once it is gone or a zombie).
pub fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f.first() != Some(&"Z")).then(|| f.get(3)?.parse().ok())?
}

/// Whether `pid` is alive and runs `what` (so a reused pid is not mistaken for it).
pub fn alive(pid: i32, what: &str) -> bool {
    session_of(pid).is_some()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
}

/// SIGKILL to every process of the session led by `sid` (a worker's, or a
/// driver's): what a test started, and only that.
pub fn kill_session(sid: i32) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if session_of(pid) == Some(sid) {
            // SAFETY: kill(2) on a process of a session this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// SIGSTOP, then waits until the process is stopped: kill(2) returns before
/// the signal takes effect, and a process still running on the other core
/// may take a lock in between.
pub fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_until("the process to stop", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the command name's closing parenthesis.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        matches!(state, "T" | "t").then_some(())
    });
}

/// Waits for a child with a deadline; `None` (and the child killed) past it.
pub fn wait_for(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a script into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
