//! Typing help, end to end through the real `studio` binary: a near miss
//! of a command or flag gets clap's "did you mean", a script's flag before
//! the script gets the hint to move it, and one of `studio run`'s own flags
//! after the script (which goes to the script) gets a warning.

#[macro_use]
mod common;
use common::*;

/// A usage error: exit 2, nothing on stdout, one line on stderr, returned.
fn usage_line(h: &Home, args: &[&str]) -> String {
    let out = h.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?} one line: {err}"
    );
    err.trim_end().to_string()
}

#[test]
fn a_near_miss_of_a_run_flag_before_the_script_suggests_the_flag() {
    let h = Home::new();
    let err = usage_line(&h, &["run", "--cpu=2", "train.py"]);
    assert_eq!(
        err,
        "studio: unknown flag '--cpu=2' of studio run: did you mean '--cpus=2'?"
    );
    // It was before the script: no hint to move it there.
    assert!(!err.contains("before the script"), "{err}");
    let err = usage_line(&h, &["run", "--detatch", "train.py"]);
    assert!(err.contains("did you mean '--detach'?"), "{err}");
    // `plan` takes the same flags (and ignores a script after them).
    let err = usage_line(&h, &["plan", "--cpu=2", "train.py"]);
    assert!(err.contains("did you mean '--cpus=2'?"), "{err}");
    let err = usage_line(&h, &["status", "--watc"]);
    assert!(
        err.contains("unknown flag '--watc' of studio status: did you mean '--watch'?"),
        "{err}"
    );
    assert_eq!(h.count("SELECT COUNT(*) FROM jobs"), 0, "no job");
}

#[test]
fn a_near_miss_of_a_command_suggests_the_command() {
    let h = Home::new();
    let err = usage_line(&h, &["statsu"]);
    assert_eq!(
        err,
        "studio: unknown command 'statsu': did you mean 'studio status'?"
    );
    let err = usage_line(&h, &["frobnicate"]);
    assert!(err.contains("unknown command 'frobnicate'"), "{err}");
    assert!(!err.contains("did you mean"), "nothing near: {err}");
}

#[test]
fn a_scripts_flag_before_the_script_is_told_to_go_after_it() {
    let h = Home::new();
    let err = usage_line(&h, &["run", "--epochs", "3", "train.py"]);
    assert!(
        err.contains(
            "unknown flag '--epochs' of studio run: if it is train.py's, put it after train.py"
        ),
        "{err}"
    );
    assert!(!err.contains("did you mean"), "{err}");
    // No script follows: the hint does not apply.
    let err = usage_line(&h, &["run", "--epochs"]);
    assert!(
        err.contains("unknown flag '--epochs' of studio run"),
        "{err}"
    );
    assert!(!err.contains("after"), "{err}");
}

#[test]
fn a_studio_flag_after_the_script_goes_to_the_script_with_a_warning() {
    let h = Home::new();
    let out = h.run(&["run", "train.py", "--epochs", "3", "--detach"]);
    let err = stderr(&out);
    assert!(
        err.contains(
            "studio: warning: --detach after train.py goes to the script; put it before the script to give it to studio"
        ),
        "{err}"
    );
    // A warning, not an error: the job ran, with --detach handed to the
    // script (whose argparse refuses it), and `run` waited for its end.
    assert_eq!(out.status.code(), Some(1), "{err}");
    let jobs = h.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "failed", "{:?}", jobs[0]);
    let id = jobs[0]["id"].as_str().unwrap();
    assert!(
        h.log(id).contains("unrecognized arguments: --detach"),
        "{}",
        h.log(id)
    );
    assert!(
        stdout(&out).is_empty() || !stdout(&out).starts_with("01"),
        "not detached"
    );
}

#[test]
fn only_studio_flags_before_a_double_dash_are_warned_about() {
    let h = Home::new();
    let out = h.run(&[
        "run",
        "--dry-run",
        "train.py",
        "--epochs",
        "3",
        "--cpus=2",
        "--",
        "--ram",
        "--detach",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        ["studio: warning: --cpus=2 after train.py goes to the script; put it before the script to give it to studio"],
        "{err}"
    );
    let spec: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        spec["args"],
        serde_json::json!(["--epochs", "3", "--cpus=2", "--", "--ram", "--detach"]),
        "all of them go to the script: {spec}"
    );
}
