//! `studio status` and `studio run`'s progress bar as a user's terminal
//! shows them: the jobs table fitted to the terminal's width (80 columns
//! keep the id, state, progress and cost; `COLUMNS` wider gives the
//! script; a pipe gets every column), and the bar following the script's
//! last progress line at once. The real binary, on a pseudo-terminal;
//! waits are polls with a deadline.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[macro_use]
mod common;
use common::*;

/// A process on a pseudo-terminal of `cols` columns, its controlling
/// terminal, with everything it writes collected.
struct Pty {
    out: Arc<Mutex<Vec<u8>>>,
    child: Child,
    _master: std::fs::File,
}

impl Pty {
    fn spawn(mut cmd: Command, cols: u16) -> Pty {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two fds we then own.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty");
        let (master, slave) =
            unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // The slave's last copy is the child's: the reader sees EOF (EIO)
        // when it exits.
        drop(cmd);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (sink, mut reader) = (out.clone(), master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            out,
            child,
            _master: master,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        wait_until(what, limit, || {
            let t = self.text();
            f(&t).then_some(t)
        })
    }

    /// Waits for the process to exit successfully and for its output to
    /// be read to `done`.
    fn finish(mut self, done: impl Fn(&str) -> bool) -> String {
        let status = wait_until("the command to exit", Duration::from_secs(60), || {
            self.child.try_wait().unwrap()
        });
        assert!(status.success(), "{status:?}: {}", self.text());
        self.wait_for("its output", Duration::from_secs(10), done)
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `studio status` on a terminal of `cols` columns (`COLUMNS` as given):
/// its lines, without the terminal's carriage returns.
fn status_on_terminal(h: &Home, cols: u16, columns: Option<&str>, jobs: usize) -> Vec<String> {
    let mut cmd = h.cmd(&["status"]);
    match columns {
        Some(c) => cmd.env("COLUMNS", c),
        None => cmd.env_remove("COLUMNS"),
    };
    let text = Pty::spawn(cmd, cols).finish(|t| t.matches("\r\n").count() > jobs);
    text.lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn write_script(h: &Home, name: &str, body: &str) {
    std::fs::write(h.work().join(name), body).unwrap();
}

/// A job of `args`, waited for; its id (the newest job's).
fn run_job(h: &Home, args: &[&str], code: i32) -> String {
    let mut full = vec!["run", "--no-pull"];
    full.extend_from_slice(args);
    let out = h.run(&full);
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    h.jobs()[0]["id"].as_str().unwrap().to_string()
}

fn assert_fits(lines: &[String], cols: usize) {
    for l in lines {
        assert!(l.chars().count() <= cols, "wider than {cols}: {l:?}");
    }
}

#[test]
fn status_fits_the_terminal_and_a_pipe_gets_every_column() {
    let h = Home::new();
    write_script(
        &h,
        "fails.py",
        "print('STUDIO_PROGRESS=0.25', flush=True)\nraise SystemExit(1)\n",
    );
    let trained = run_job(
        &h,
        &["train.py", "--epochs", "2", "--epoch-seconds", "0"],
        0,
    );
    let failed = run_job(&h, &["fails.py"], 1);
    let hello = run_job(&h, &["hello.py", "a", "few", "words"], 0);

    // 80 columns: the whole ids, state, progress and cost, every line within.
    let lines = status_on_terminal(&h, 80, None, 3);
    report!("status on 80 columns:\n{}", lines.join("\n"));
    assert_fits(&lines, 80);
    let header = &lines[0];
    for h in ["ID", "STATE", "PROGRESS", "COST"] {
        assert!(header.split_whitespace().any(|w| w == h), "{h}: {header}");
    }
    let row = |id: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no whole id {id}: {lines:?}"))
            .clone()
    };
    let (t, f, o) = (row(&trained), row(&failed), row(&hello));
    assert!(
        t.contains("finished") && t.contains("100%") && t.contains("$0.0000"),
        "{t}"
    );
    assert!(f.contains("failed") && f.contains("25%"), "{f}");
    assert!(
        o.contains("finished") && o.ends_with(" -"),
        "no progress: {o}"
    );

    // COLUMNS wider than the terminal: the script is there.
    let lines = status_on_terminal(&h, 80, Some("200"), 3);
    assert_fits(&lines, 200);
    assert!(lines[0].contains("SCRIPT"), "{lines:?}");
    assert!(
        row_of(&lines, &hello).contains("hello.py a few words"),
        "{lines:?}"
    );

    // Into a pipe (no COLUMNS): every column, whole.
    let out = h
        .cmd(&["status"])
        .env_remove("COLUMNS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "SCRIPT", "STATE", "CLOUD", "MACHINE", "ATTEMPT", "AGE", "RUNTIME", "COST",
            "PROGRESS"
        ]
    );
    assert!(row_of(
        &text.lines().map(String::from).collect::<Vec<_>>(),
        &trained
    )
    .contains("train.py --epochs 2 --epoch-seconds 0"));
    assert!(text.contains("[####################] 100%"), "{text}");
}

fn row_of(lines: &[String], id: &str) -> String {
    lines
        .iter()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no {id}: {lines:?}"))
        .clone()
}

/// Ids too long for 80 columns with the state, progress and cost (a
/// `--job-id` may have 64 characters) are shortened to prefixes that tell
/// them apart, which `studio status ID` takes.
#[test]
fn long_ids_are_shortened_to_unique_prefixes_status_takes() {
    let h = Home::new();
    let (stem, tail) = ("lr-0.", "-sweep-2026-11-29-warmup-and-decay-grid-search");
    let ids = [format!("{stem}1{tail}"), format!("{stem}2{tail}")];
    for id in &ids {
        run_job(&h, &["--job-id", id, "hello.py"], 0);
    }
    let lines = status_on_terminal(&h, 80, None, 2);
    report!("status on 80 columns:\n{}", lines.join("\n"));
    assert_fits(&lines, 80);
    for h in ["STATE", "PROGRESS", "COST"] {
        assert!(lines[0].contains(h), "{lines:?}");
    }
    for id in &ids {
        let shown = lines
            .iter()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .find(|s| id.starts_with(s) && s.len() < id.len())
            .unwrap_or_else(|| panic!("no shortened {id}: {lines:?}"));
        let out = h.run(&["status", shown]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).starts_with(&format!("job       {id}\n")),
            "{}",
            stdout(&out)
        );
    }
    let out = h.run(&["status", stem]);
    assert_eq!(out.status.code(), Some(2), "an ambiguous prefix");
    assert!(
        stderr(&out).contains("starts 2 job ids"),
        "{}",
        stderr(&out)
    );
}

/// The bar under a waiting `run` shows the script's last progress line
/// while the job's record cannot have it: the test holds the store's write
/// lock (SQLite, WAL: readers go on) while the script prints its next value,
/// so the worker's heartbeat, which writes progress on the record, waits.
#[test]
fn the_progress_bar_follows_the_last_line_at_once() {
    let h = Home::new();
    let gate = h.dir.path().join("gate");
    write_script(
        &h,
        "steps.py",
        "import os, sys, time\n\
         gate = sys.argv[1]\n\
         print('STUDIO_PROGRESS=0.5', flush=True)\n\
         while not os.path.exists(gate + '1'):\n    time.sleep(0.05)\n\
         print('STUDIO_PROGRESS=0.667', flush=True)\n\
         print('STUDIO_PROGRESS=0.833', flush=True)\n\
         while not os.path.exists(gate + '2'):\n    time.sleep(0.05)\n",
    );
    let mut cmd = h.cmd(&["run", "--no-pull", "steps.py", gate.to_str().unwrap()]);
    cmd.env("TERM", "xterm");
    let pty = Pty::spawn(cmd, 80);
    pty.wait_for("the bar at 50%", Duration::from_secs(60), |t| {
        t.contains(" 50% studio: running")
    });
    wait_until("the record at 0.5", Duration::from_secs(30), || {
        (h.jobs()[0]["progress"].as_f64() == Some(0.5)).then_some(())
    });
    let db = rusqlite::Connection::open(h.path().join("studio.sqlite3")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::fs::write(format!("{}1", gate.display()), "").unwrap();
    pty.wait_for(
        "the bar at 83% while the record cannot change",
        Duration::from_secs(20),
        |t| t.contains(" 83% studio: running"),
    );
    db.execute_batch("ROLLBACK").unwrap();
    std::fs::write(format!("{}2", gate.display()), "").unwrap();
    pty.finish(|t| t.contains(" finished ("));
}
