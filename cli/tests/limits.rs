//! A local job held to its `--cpus` and `--ram`, end to end through the
//! real `studio` binary and python3: the script sees the CPUs it asked for,
//! a job over its memory is stopped with the limit as its reason, and a
//! request larger than this machine is refused or warned about with the
//! machine's size.

#[macro_use]
mod common;
use common::*;

/// This process's CPUs, as the kernel gives them (what a worker may pin to).
fn machine_cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

/// What the script sees: `cpus=<affinity> omp=<OMP_NUM_THREADS or ->`.
const SEES: &str = r#"
import os
print(f"cpus={len(os.sched_getaffinity(0))} omp={os.environ.get('OMP_NUM_THREADS', '-')}")
"#;

fn seen(h: &Home, flags: &[&str]) -> String {
    let path = script(&h.work(), "sees.py", SEES);
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.push(&path);
    let out = h.cmd(&args).env_remove("OMP_NUM_THREADS").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .find(|l| l.starts_with("cpus="))
        .unwrap_or_else(|| panic!("no line of the script in {}", stdout(&out)))
        .to_string()
}

#[test]
fn a_local_job_runs_on_the_cpus_it_asked_for_and_on_the_whole_machine_without() {
    let h = Home::new();
    let n = machine_cpus();
    assert_eq!(
        seen(&h, &[]),
        format!("cpus={n} omp=-"),
        "no --cpus: the machine"
    );
    let one = seen(&h, &["--cpus=1"]);
    if n > 1 {
        assert_eq!(one, "cpus=1 omp=1", "--cpus=1 on {n} CPUs");
    } else {
        // Nothing to pin on a one-CPU machine: it has what it asked for.
        assert_eq!(one, "cpus=1 omp=-");
    }
}

#[test]
fn a_local_job_over_its_ram_is_stopped_with_the_limit_as_its_reason() {
    let h = Home::new();
    // 1 GiB, touched page by page (an untouched allocation is not memory
    // yet), then held until the test says so (it never does: only the
    // limit, or the backstop of --max-duration, ends it).
    let gate = h.dir.path().join("never");
    let hog = script(
        &h.work(),
        "hog.py",
        &format!(
            r#"
import os, time
held = []
for _ in range(16):
    held.append(bytearray(b"\1") * (64 << 20))
print("holding 1 GiB", flush=True)
while not os.path.exists({gate:?}):
    time.sleep(0.05)
"#,
            gate = gate.display().to_string()
        ),
    );
    let out = h.run(&["run", "--ram=256m", "--max-duration=5m", &hog]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("out of memory") && err.contains("over its --ram limit of 256m"),
        "{err}"
    );
    let jobs = h.jobs();
    let reason = jobs[0]["reason"].as_str().unwrap_or_default().to_string();
    assert_eq!(jobs[0]["state"], "failed");
    assert!(reason.contains("--ram limit of 256m"), "{reason}");
    // It was stopped where it stood, not re-run: one attempt.
    assert_eq!(jobs[0]["attempt"], 1, "{:#}", jobs[0]);
}

#[test]
fn a_request_larger_than_this_machine_is_refused_or_warned_with_its_size() {
    let h = Home::new();
    let out = h.run(&["run", "--ram=100000g", "hello.py"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--ram 100000g is more than this machine has (")
            && err.contains(&format!("({} vCPU, ", machine_cpus())),
        "{err}"
    );
    assert!(h.jobs().is_empty(), "nothing accepted");

    let many = machine_cpus() + 1;
    let flag = format!("--cpus={many}");
    let out = h.run(&["run", &flag, "hello.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "--cpus {many} is more than this machine has ({} vCPU",
            machine_cpus()
        )),
        "{}",
        stderr(&out)
    );
}
