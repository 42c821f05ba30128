//! `studio down`, end to end: the real binary, a temporary home, real
//! driver and worker processes. Waits are polls with a deadline; a script
//! the test must end waits for a file the test creates (or never does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[macro_use]
mod common;
use common::*;

/// Every live process (not this test) whose command line, environment or
/// working directory names `home`.
fn processes_of(home: &Path) -> Vec<(i32, String)> {
    let home_s = home.display().to_string();
    let env_var = format!("STUDIO_HOME={home_s}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || session_of(pid).is_none() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let in_env = environ.split(|b| *b == 0).any(|v| v == env_var.as_bytes());
        let in_cwd =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|c| c.starts_with(home));
        if cmdline.contains(&home_s) || in_env || in_cwd {
            found.push((pid, cmdline));
        }
    }
    found
}

fn assert_none_left(h: &Home) {
    let home = h.path();
    wait_until("no process of the home", Duration::from_secs(30), || {
        processes_of(&home).is_empty().then_some(())
    });
}

/// A script that prints `waiting` and then waits for `gate`.
fn gated(h: &Home) -> PathBuf {
    let gate = h.dir.path().join("gate");
    std::fs::write(
        h.work().join("wait.py"),
        format!(
            "import os, time\nprint('waiting', flush=True)\nwhile not os.path.exists({gate:?}):\n    time.sleep(0.05)\nprint('through', flush=True)\n"
        ),
    )
    .unwrap();
    gate
}

/// Starts `wait.py` detached and returns its job id once it prints.
fn start_gated(h: &Home) -> String {
    let out = h.run(&["run", "--detach", "wait.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    wait_until("the script to start", Duration::from_secs(60), || {
        h.log(&id).contains("waiting").then_some(())
    });
    id
}

fn down(h: &Home, args: &[&str]) -> (bool, String) {
    let mut all = vec!["down"];
    all.extend_from_slice(args);
    let out = h.run(&all);
    (out.status.success(), stderr(&out))
}

#[test]
fn down_after_a_job_leaves_no_process_and_run_works_after_it() {
    let h = Home::new();
    // A long grace: the pool keeps its worker and the driver stays up.
    let out = h
        .cmd(&["run", "hello.py"])
        .env("STUDIO_POOL_GRACE", "10m")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!h.pids(".*driver$").is_empty(), "the driver is up");
    assert!(!h.pids("worker ").is_empty(), "a worker is up");

    let (ok, said) = down(&h, &[]);
    assert!(ok, "{said}");
    assert!(
        said.contains("stopped the driver and 1 worker(s)"),
        "{said}"
    );
    assert_none_left(&h);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM instances WHERE state != 'terminated'"),
        0,
        "every worker's end is recorded"
    );

    // Nothing to bring up by hand: run starts what it needs.
    let out = h.run(&["run", "hello.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello from Studio"));
    let (ok, said) = down(&h, &[]);
    assert!(ok, "{said}");
    assert_none_left(&h);
}

#[test]
fn down_force_cancels_a_running_job_and_leaves_no_process() {
    let h = Home::new();
    let _never = gated(&h);
    let id = start_gated(&h);
    let (ok, said) = down(&h, &["--force"]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("cancelled 1 running job(s): {id}")),
        "{said}"
    );
    assert_none_left(&h);
    assert_eq!(h.job(&id)["state"], "cancelled");
}

#[test]
fn down_waits_for_a_running_job_and_says_so() {
    let h = Home::new();
    let gate = gated(&h);
    let id = start_gated(&h);
    let said_file = h.dir.path().join("down.err");
    let mut child = h
        .cmd(&["down"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&said_file).unwrap())
        .spawn()
        .unwrap();
    wait_until("down to say it waits", Duration::from_secs(30), || {
        std::fs::read_to_string(&said_file)
            .unwrap()
            .contains(&format!("waiting for 1 running job(s) to finish: {id}"))
            .then_some(())
    });
    wait_until("the driver to stop", Duration::from_secs(30), || {
        h.pids(".*driver$").is_empty().then_some(())
    });
    assert!(child.try_wait().unwrap().is_none(), "down waits");
    assert!(!h.pids("worker ").is_empty(), "the busy worker is left");
    std::fs::write(&gate, "").unwrap();
    let status = wait_for(&mut child, Duration::from_secs(60)).expect("down ended");
    let said = std::fs::read_to_string(&said_file).unwrap();
    assert!(status.success(), "{said}");
    assert!(
        said.contains("stopped the driver and 1 worker(s)"),
        "{said}"
    );
    assert_none_left(&h);
    assert!(h.log(&id).contains("through"));
    assert_eq!(h.job(&id)["state"], "finished");
}

#[test]
fn down_twice_says_nothing_is_running_and_exits_0() {
    let h = Home::new();
    // A fresh home: nothing to stop, and no store is created.
    let (ok, said) = down(&h, &[]);
    assert!(ok, "{said}");
    assert!(said.contains("nothing is running"), "{said}");
    assert!(!h.path().join("studio.sqlite3").exists());

    let out = h
        .cmd(&["run", "hello.py"])
        .env("STUDIO_POOL_GRACE", "10m")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, said) = down(&h, &[]);
    assert!(ok && said.contains("stopped the driver"), "{said}");
    let (ok, said) = down(&h, &[]);
    assert!(ok, "{said}");
    assert!(said.contains("nothing is running"), "{said}");
    assert_none_left(&h);
}
