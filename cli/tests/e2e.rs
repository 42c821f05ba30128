//! End to end, as a user runs it: the real `studio` binary, the local
//! backend in a temporary `STUDIO_HOME`, real worker processes and python3.
//! Waits are polls with a deadline, never sleeps standing in for a signal.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use studio_tests::Rng;

#[macro_use]
mod common;
use common::*;

#[test]
fn hello_runs_to_finished_and_prints_its_output() {
    let h = Home::new();
    let out = h.run(&["run", "hello.py", "--flag-for-the-script", "x"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let so = stdout(&out);
    assert!(so.contains("hello from Studio"), "{so}");
    assert!(
        so.contains("args: --flag-for-the-script x"),
        "script args pass through: {so}"
    );
    assert!(
        stderr(&out).contains("finished (exit code 0"),
        "{}",
        stderr(&out)
    );
    let jobs = h.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "finished");
    assert_eq!(jobs[0]["exit_code"], 0);
    let id = jobs[0]["id"].as_str().unwrap();
    let written = h
        .dir
        .path()
        .join("jobs")
        .join(id)
        .join("attempt-1/workspace/hello.txt");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "hello, world\n");
}

#[test]
fn a_script_that_exits_3_fails_and_the_cli_says_so() {
    let h = Home::new();
    let out = h.run(&[
        "run",
        "train.py",
        "--epochs",
        "1",
        "--epoch-seconds",
        "0",
        "--fail-with",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed: exit code 3"),
        "{}",
        stderr(&out)
    );
    let jobs = h.jobs();
    assert_eq!(
        (jobs[0]["state"].as_str(), jobs[0]["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    let last: Vec<&str> = jobs[0]["last_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        last,
        [
            "epoch 1/1 loss 0.7",
            "STUDIO_PROGRESS=1.000",
            "training done"
        ],
        "recorded on the job"
    );
    let detail = stdout(&h.run(&["status", jobs[0]["id"].as_str().unwrap()]));
    assert!(detail.contains("  | training done"), "{detail}");
}

#[test]
fn twenty_detached_jobs_on_four_workers_all_finish() {
    let h = Home::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let out = h.run(&[
            "run",
            "--detach",
            "--num-workers",
            "4",
            "hello.py",
            &i.to_string(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    wait_until("20 finished jobs", Duration::from_secs(90), || {
        let jobs = h.jobs();
        (jobs.len() == 20 && jobs.iter().all(|j| j["state"] == "finished")).then_some(())
    });
    let table = stdout(&h.run(&["status"]));
    assert_eq!(
        table.lines().filter(|l| l.contains("finished")).count(),
        20,
        "{table}"
    );
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        h.count("SELECT COUNT(DISTINCT id) FROM instances"),
        4,
        "one pool of four workers"
    );
    // And when the grace is over, the pool is torn down.
    wait_until("the pool to be deleted", Duration::from_secs(30), || {
        (h.count("SELECT COUNT(*) FROM pools WHERE state != 'deleted'") == 0
            && h.pids("worker").is_empty())
        .then_some(())
    });
}

#[test]
fn a_worker_killed_mid_job_means_attempt_2_elsewhere_resuming_the_checkpoint() {
    let h = Home::new();
    // Held after epoch 6 until the worker is killed.
    let gate = h.hold_train_at(6);
    let out = h.run(&[
        "run",
        "--detach",
        "train.py",
        "--epochs",
        "12",
        "--epoch-seconds",
        "0.3",
    ]);
    let id = stdout(&out).trim().to_string();
    wait_until(
        "epoch 6, past a checkpoint sync",
        Duration::from_secs(30),
        || h.log(&id).contains("epoch 6/12").then_some(()),
    );
    let worker = h.kill_worker_of(&id);
    // Attempt 2 runs (held at the gate): what status says of it. The first
    // attempt's stop as an earlier attempt's, not as the reason of a job
    // that goes on; the script without a trailing space; the local cloud as
    // this machine.
    wait_until("attempt 2 to run", Duration::from_secs(60), || {
        let j = h.job(&id);
        (j["state"] == "running" && j["attempt"] == 2).then_some(())
    });
    let text = stdout(&h.run(&["status", &id]));
    assert!(!text.contains("\nreason "), "{text}");
    assert!(text.contains("\nearlier   attempt 1 stopped: "), "{text}");
    assert!(
        text.contains("\nscript    train.py --epochs 12 --epoch-seconds 0.3\n"),
        "{text}"
    );
    assert!(
        text.contains("\ncloud     local (this machine)\n"),
        "{text}"
    );
    std::fs::write(&gate, "").unwrap();

    let job = wait_until("the job to finish", Duration::from_secs(60), || {
        let j = h.job(&id);
        j["state"]
            .as_str()
            .is_some_and(|s| s != "running" && s != "queued" && s != "interrupted")
            .then_some(j)
    });
    assert_eq!(job["state"], "finished", "{job:#}");
    assert_eq!(job["attempt"], 2);
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "interrupted");
    assert_eq!(attempts[0]["instance"].as_str(), Some(worker.as_str()));
    assert_ne!(attempts[1]["instance"].as_str(), Some(worker.as_str()));
    let log = h.log(&id);
    assert!(log.contains("resuming from checkpoint: epoch"), "{log}");
    assert!(log.contains("training done"), "{log}");
}

/// `run --dry-run` prints the SubmitJob it would send, a valid contract
/// message, and creates nothing: no home, no job, no driver.
#[test]
fn a_dry_run_prints_the_submit_job_and_changes_nothing() {
    let h = Home::new();
    let out = h.run(&[
        "run",
        "--dry-run",
        "--cpus=2",
        "--job-id",
        "dry-1",
        "--env",
        "LR=0.1",
        "hello.py",
        "x",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = studio_core::contract::SubmitJob::from_json(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    assert_eq!(
        (
            spec.entrypoint.as_str(),
            spec.args.clone(),
            spec.resources.cpus,
            spec.env.get("LR").map(String::as_str),
            spec.job_id.as_ref().map(|j| j.to_string())
        ),
        (
            "hello.py",
            vec!["x".to_string()],
            2,
            Some("0.1"),
            Some("dry-1".into())
        )
    );
    assert_eq!(spec.workspace.sha256.len(), 64);
    assert!(spec.workspace.bytes > 0);
    assert!(
        !h.path().join("studio.sqlite3").exists(),
        "a dry run made a job store"
    );
    // As a table: a field a line, for people.
    let table = h.run(&[
        "run",
        "--dry-run",
        "--format",
        "table",
        "--cpus=2",
        "--job-id",
        "dry-1",
        "hello.py",
        "x",
    ]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(!text.trim_start().starts_with('{'), "not JSON: {text}");
    assert!(
        regex::Regex::new(r"(?m)^entrypoint +hello\.py$")
            .unwrap()
            .is_match(&text),
        "{text}"
    );
    assert!(
        regex::Regex::new(r"(?m)^job_id +dry-1$")
            .unwrap()
            .is_match(&text),
        "{text}"
    );
    assert!(text.lines().count() > 5, "{text}");
    // A bad flag is refused the same way as without --dry-run.
    let bad = h.run(&["run", "--dry-run", "--ram=16", "hello.py"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// `studio submit --file` sends a prepared SubmitJob: its workspace
/// directory packed and uploaded, the job run; the same file again is the
/// same job; a file that breaks the contract is refused with the reason and
/// creates nothing.
#[test]
fn submit_sends_a_prepared_job_and_uploads_the_directory_it_names() {
    let h = Home::new();
    let dir = h.dir.path().join("prepared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(examples().join("hello.py"), dir.join("hello.py")).unwrap();
    std::fs::write(
        dir.join("job.json"),
        r#"{"version": 1, "job_id": "file-1", "workspace": ".", "entrypoint": "hello.py", "args": ["from", "a", "file"]}"#,
    )
    .unwrap();
    let file = dir.join("job.json");
    let out = h.cmd(&["submit", "--file"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "file-1");
    wait_until("file-1 to finish", Duration::from_secs(30), || {
        (h.job("file-1")["state"] == "finished").then_some(())
    });
    assert!(
        h.log("file-1").contains("args: from a file"),
        "{}",
        h.log("file-1")
    );
    let again = h.cmd(&["submit", "--file"]).arg(&file).output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(h.jobs().len(), 1, "the same file twice is one job");

    std::fs::write(
        dir.join("typo.json"),
        r#"{"version": 1, "job_id": "file-2", "workspace": ".", "entrypoint": "hello.py", "cpu": 8}"#,
    )
    .unwrap();
    let typo = h
        .cmd(&["submit", "--file"])
        .arg(dir.join("typo.json"))
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("unknown field `cpu`"),
        "{}",
        stderr(&typo)
    );
    let missing = h
        .cmd(&["submit", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                br#"{"version": 1, "workspace": "no-such-dir", "entrypoint": "hello.py"}"#,
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("is not a directory"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(h.jobs().len(), 1, "nothing more was created");
}

#[test]
fn the_same_job_id_twice_makes_one_job() {
    let h = Home::new();
    let a = h.run(&["run", "--detach", "--job-id", "exp-1", "hello.py"]);
    let b = h.run(&["run", "--detach", "--job-id", "exp-1", "hello.py"]);
    assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
    assert_eq!((stdout(&a).trim(), stdout(&b).trim()), ("exp-1", "exp-1"));
    wait_until("exp-1 to finish", Duration::from_secs(30), || {
        (h.job("exp-1")["state"] == "finished").then_some(())
    });
    assert_eq!(h.jobs().len(), 1);
    assert_eq!(
        h.job("exp-1")["attempts"].as_array().unwrap().len(),
        1,
        "ran once"
    );

    let c = h.run(&[
        "run",
        "--detach",
        "--job-id",
        "exp-1",
        "hello.py",
        "different",
    ]);
    assert_eq!(c.status.code(), Some(2));
    assert!(
        stderr(&c).contains("already used for a different request"),
        "{}",
        stderr(&c)
    );
}

#[test]
fn bad_flags_are_one_line_exit_2_and_change_nothing() {
    let h = Home::new();
    assert!(h.run(&["run", "hello.py"]).status.success());
    let count = || {
        (
            h.count("SELECT COUNT(*) FROM jobs"),
            h.count("SELECT COUNT(*) FROM messages"),
            std::fs::read_dir(h.dir.path().join("artifacts/workspaces"))
                .unwrap()
                .count(),
        )
    };
    let before = count();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--ram=16", "hello.py"], "add a unit, e.g. 16g"),
        (&["run", "--ram=lots", "hello.py"], "'lots' is not a size"),
        (
            &["run", "--cpus=0", "hello.py"],
            "--cpus must be at least 1",
        ),
        (
            &["run", "--cpus=-2", "hello.py"],
            "--cpus must be at least 1",
        ),
        (
            &["run", "--cloud=azure", "hello.py"],
            "unknown cloud 'azure'",
        ),
        (
            &["run", "--num-workers=0", "hello.py"],
            "--num-workers must be at least 1",
        ),
        (
            &["run", "--bid=-1", "hello.py"],
            "--bid '-1' must be greater than zero",
        ),
        (
            &["run", "--max-duration=soon", "hello.py"],
            "--max-duration 'soon'",
        ),
        (&["run", "--env=NOEQUALS", "hello.py"], "must be NAME=VALUE"),
        (
            &["run", "--num-workers=100000", "--detach", "hello.py"],
            "--num-workers 100000 is above this machine's cap of 4 workers",
        ),
        (
            &["run", "--cloud=ec2", "--hdd=17t", "hello.py"],
            "more than an EC2 gp3 volume holds",
        ),
        (
            &["run", "--cloud=ec2", "hello.py"],
            "cloud 'ec2' needs the AWS settings",
        ),
        (
            &["run", "--cloud=gcloud", "hello.py"],
            "cloud 'gcloud' needs the AWS settings",
        ),
        (&["run"], "missing script"),
        (
            &["run", "--max-cost=0", "hello.py"],
            "--max-cost '0' must be an amount of USD of at least 0.01",
        ),
        (
            &["run", "--max-cost=1.234", "hello.py"],
            "--max-cost '1.234' must be an amount of USD",
        ),
        (
            &["run", "--max-cost=ten", "hello.py"],
            "--max-cost 'ten' must be an amount of USD",
        ),
        (
            &["run", "--output=../secrets", "hello.py"],
            "output '../secrets' must be a relative path inside the workspace",
        ),
        (
            &["run", "--output=/etc", "hello.py"],
            "output '/etc' must be a relative path inside the workspace",
        ),
        (&["run", "nope.py"], "script 'nope.py' not found"),
        (
            &["run", "--frobnicate", "hello.py"],
            "unknown flag '--frobnicate'",
        ),
    ];
    for (args, want) in cases {
        let out = h.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?} one line: {err}"
        );
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    assert_eq!(count(), before, "the store is unchanged");
}

#[test]
fn bad_flags_on_a_fresh_machine_create_no_store() {
    let h = Home::new();
    let out = h.run(&["run", "--ram=16", "hello.py"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!h.dir.path().join("studio.sqlite3").exists());
}

#[test]
fn cancel_stops_a_running_script_with_sigterm() {
    let h = Home::new();
    // Held after epoch 1 for good: only the cancel ends it.
    let _never = h.hold_train_at(1);
    let id = stdout(&h.run(&[
        "run",
        "--detach",
        "train.py",
        "--epochs",
        "2",
        "--epoch-seconds",
        "0.2",
    ]))
    .trim()
    .to_string();
    wait_until("epoch 1", Duration::from_secs(30), || {
        h.log(&id).contains("epoch 1/").then_some(())
    });
    let out = h.run(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(h.job(&id)["state"], "cancelled");
    wait_until("the script to get SIGTERM", Duration::from_secs(20), || {
        h.log(&id)
            .contains("SIGTERM: checkpoint saved")
            .then_some(())
    });
    let again = h.run(&["cancel", &id]);
    assert!(
        stderr(&again).contains("already ended: cancelled"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_job_over_its_max_duration_is_killed_and_failed() {
    let h = Home::new();
    // Held for good: only the max duration ends it.
    let _never = h.hold_train_at(0);
    let out = h.run(&[
        "run",
        "--max-duration",
        "1s",
        "train.py",
        "--epochs",
        "2",
        "--epoch-seconds",
        "0.2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("max duration 1s exceeded"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_follow_shows_lines_while_the_job_runs() {
    use std::io::{BufRead, BufReader};
    let h = Home::new();
    // Held after epoch 1 until its line has been read.
    let gate = h.hold_train_at(1);
    let id = stdout(&h.run(&[
        "run",
        "--detach",
        "train.py",
        "--epochs",
        "3",
        "--epoch-seconds",
        "0.2",
    ]))
    .trim()
    .to_string();
    let mut child = h
        .cmd(&["logs", "-f", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "epoch 1/3 loss 0.7");
    assert_eq!(
        h.job(&id)["state"],
        "running",
        "the line arrived while the job ran"
    );
    std::fs::write(&gate, "").unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let n = rest.len();
    assert!(n >= 2, "{rest:?}");
    assert_eq!(rest[n - 2], "training done");
    assert!(
        rest[n - 1].starts_with("[studio] outputs of attempt 1: 5 file(s)"),
        "the outputs' note is the log's last line: {rest:?}"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn status_of_an_unknown_job_is_a_usage_error() {
    let h = Home::new();
    let out = h.run(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no job 'nope'"));
}

#[test]
fn plan_chooses_the_cheapest_machine_and_changes_nothing() {
    let h = Home::new();
    let out = h.run(&["plan", "--cloud=ec2", "--cpus=8", "--gpus=1", "--ram=16g"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let so = stdout(&out);
    assert!(
        so.contains("machine    g4dn.2xlarge (8 vCPU, 32g, 1× T4)"),
        "{so}"
    );
    assert!(so.contains("price      $0.7520/h (on-demand)"), "{so}");
    assert!(so.contains("pool       ec2-8c-1g-"), "{so}");
    assert!(
        !h.dir.path().join("studio.sqlite3").exists(),
        "plan has no side effects"
    );

    let json = h.run(&[
        "plan",
        "--cloud=ec2",
        "--cpus=8",
        "--ram=16g",
        "--output",
        "json",
        "train.py",
        "--lr",
        "1",
    ]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["machine"], "c6a.2xlarge");
    assert!(v["price_micro_usd_per_hour"].as_u64().unwrap() <= 310_000);
    for field in [
        "cloud",
        "region",
        "market",
        "machine_types",
        "vcpus",
        "memory_mib",
        "gpus",
        "candidates",
        "changes",
        "warnings",
        "pool",
    ] {
        assert!(v.get(field).is_some(), "field {field} in {v:#}");
    }

    let gce = stdout(&h.run(&["plan", "--cloud=gcloud", "--cpus=3", "--ram=5g"]));
    assert!(gce.contains("machine    custom-4-5120"), "{gce}");
    assert!(
        gce.contains(
            "changed    vCPUs 3 → 4: custom machine types take 1 or an even number of vCPUs"
        ),
        "{gce}"
    );
}

#[test]
fn an_extravagant_request_is_refused_with_the_limit_and_exit_2() {
    let h = Home::new();
    for cmd in ["plan", "run"] {
        let out = h.run(&[cmd, "--cloud=ec2", "--gpus=9", "hello.py"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(
                "no EC2 instance type in us-east-1 has 9 NVIDIA GPUs; the most is 8 (g4dn.metal"
            ),
            "{cmd}: {err}"
        );
    }
}

/// Needs `moto_server` (scripts/test starts it and sets AWS_ENDPOINT_URL).
/// Built with `--features ec2` it writes the catalogue; without (the
/// default), it says which build can.
#[test]
fn catalog_refresh_writes_a_catalogue_from_the_ec2_api() {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("run with scripts/test, which starts moto_server");
    let h = Home::new();
    let file = h.dir.path().join("cat.json");
    let prices = examples().join("../shared/core/catalog/aws-ondemand-prices.csv");
    let out = h
        .cmd(&[
            "catalog",
            "refresh",
            "--region",
            "us-east-1",
            "--no-spot-prices",
            "--output",
        ])
        .arg(&file)
        .arg("--on-demand-prices")
        .arg(&prices)
        .env("AWS_ENDPOINT_URL", endpoint)
        .output()
        .unwrap();
    if !cfg!(feature = "ec2") {
        // The newcomer's build has no EC2 SDK: a clear refusal naming the build that has it.
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("cargo install --path cli --features ec2"),
            "{}",
            stderr(&out)
        );
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 with spot prices"),
        "{}",
        stderr(&out)
    );
    let cat: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(cat["region"], "us-east-1");
    assert!(cat["types"].as_array().unwrap().len() > 1000);
}

#[test]
fn a_refreshed_catalogue_in_studio_home_is_used_for_its_region() {
    let h = Home::new();
    let refused = h.run(&["plan", "--cloud=ec2", "--region=eu-west-1"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("studio catalog refresh --region eu-west-1"),
        "{}",
        stderr(&refused)
    );
    let dir = h.dir.path().join("catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ec2-eu-west-1.json"),
        r#"{"format":1,"region":"eu-west-1","generated_at":"t","source":"test","types":[
{"name":"m9.large","vcpus":2,"memory_mib":8192,"archs":["x86_64"],"burstable":false,"current_generation":true,"on_demand":true,"spot":true,"other_accelerators":false,"on_demand_micro_usd":99000}]}"#,
    )
    .unwrap();
    let out = h.run(&["plan", "--cloud=ec2", "--region=eu-west-1", "--cpus=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("machine    m9.large"),
        "{}",
        stdout(&out)
    );
}

/// The AWS path as a user runs it, against `moto_server`: `studio run
/// --cloud=ec2spot` uploads the workspace to S3 and sends the SubmitJob to
/// the submit queue (names from `$STUDIO_HOME/config.toml`); the submit
/// function's code takes it from SQS; `status` and `cancel` then read and
/// write the job in DynamoDB.
#[tokio::test]
async fn on_aws_run_submits_through_sqs_and_status_and_cancel_use_dynamodb() {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let h = Home::new();
    std::fs::write(
        h.dir.path().join("config.toml"),
        format!(
            "[aws]\nregion = \"us-east-1\"\njobs_table = \"{}\"\npools_table = \"{}\"\nsubmit_queue = \"{}\"\nartifact_bucket = \"{}\"\n",
            cfg.jobs_table, cfg.pools_table, cfg.submit_queue, cfg.bucket
        ),
    )
    .unwrap();
    let out = h.run(&[
        "run",
        "--cloud=ec2spot",
        "--detach",
        "--cpus=8",
        "--gpus=1",
        "--ram=16g",
        "--bid=60%",
        "hello.py",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = studio_tests::queue_url(&sqs, &cfg.submit_queue).await;
    let event = studio_tests::poll_as_lambda(&sqs, &url).await;
    assert_eq!(event.records.len(), 1);
    let spec =
        studio_core::contract::SubmitJob::from_json(event.records[0].body.as_deref().unwrap())
            .unwrap();
    assert_eq!(
        spec.job_id.as_ref().map(|j| j.to_string()),
        Some(id.clone())
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let key = format!("workspaces/{}.tar.gz", spec.workspace.sha256);
    assert!(
        s3.head_object()
            .bucket(&cfg.bucket)
            .key(&key)
            .send()
            .await
            .is_ok(),
        "workspace uploaded"
    );

    let ctx = studio_aws::lambda::context(
        &cfg,
        &sdk,
        std::sync::Arc::new(studio_core::clock::SystemClock),
    );
    let (resp, _) = studio_aws::lambda::submit_batch(&ctx, event).await;
    assert!(resp.batch_item_failures.is_empty());

    let job = h.job(&id);
    assert_eq!(
        (job["state"].as_str(), job["plan"]["machine"].as_str()),
        (Some("queued"), Some("g4dn.2xlarge"))
    );
    let table = stdout(&h.run(&["status"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("ec2spot")),
        "{table}"
    );
    let c = h.run(&["cancel", &id]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(h.job(&id)["state"], "cancelled");
}

#[test]
fn aws_clouds_without_settings_say_which_are_missing() {
    let h = Home::new();
    let out = h
        .cmd(&["run", "--cloud=ec2", "hello.py"])
        .env_remove("STUDIO_JOBS_TABLE")
        .env_remove("STUDIO_SUBMIT_QUEUE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("cloud 'ec2' needs the AWS settings: set AWS_REGION, STUDIO_JOBS_TABLE"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        h.dir.path().join("config.toml"),
        "[aws]\njobs_table = \"j\"\n",
    )
    .unwrap();
    let partial = h.run(&["run", "--cloud=ec2", "hello.py"]);
    assert_eq!(partial.status.code(), Some(2));
    assert!(
        stderr(&partial).contains("AWS settings: missing environment variable"),
        "{}",
        stderr(&partial)
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_like_any_unix_tool() {
    use std::os::unix::process::ExitStatusExt;
    let h = Home::new();
    let child = h
        .cmd(&[
            "plan",
            "--cloud=ec2spot",
            "--cpus=8",
            "--gpus=1",
            "--ram=16g",
        ])
        .stdout({
            // The reader is gone before the command starts (`| head -0`),
            // so its first write meets a closed pipe whatever the timing.
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            writer
        })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?} {err}",
        out.status
    );
}

fn libc_sigpipe() -> i32 {
    13
}

// ------------------------------------------------------------------------
// The embedded default, hardened: one driver per home, nothing stuck,
// nothing leaked (issue 9). Each test is a user's reproduction.

impl Home {
    /// A directory for the test's own scripts (beside the home, not in it).
    fn scripts(&self) -> PathBuf {
        let d = self.dir.path().join("scripts");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The state of a job read straight from the database (no command runs,
    /// so nothing starts a driver): `(state, attempt)`.
    fn db_job(&self, id: &str) -> Option<(String, i64)> {
        let path = self.path().join("studio.sqlite3");
        let db = rusqlite::Connection::open(path).ok()?;
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.query_row(
            "SELECT state, json_extract(record, '$.attempt') FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
    }

    fn worker_pid_of(&self, id: &str) -> i32 {
        let path = self.path().join("studio.sqlite3");
        let db = rusqlite::Connection::open(path).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let instance: String = db
            .query_row("SELECT instance FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let pids = self.pids(&format!("worker --pool .* --instance-id {instance}"));
        assert_eq!(pids.len(), 1, "one worker process for {instance}");
        pids[0]
    }

    fn driver_pids(&self) -> Vec<i32> {
        self.pids(".*driver$")
    }

    /// The driver that runs: the process holding this home's `driver.lock`
    /// (`/proc/locks`). Every command that needs a driver starts one, and
    /// all but the holder leave at once, so a driver found by its command
    /// line may be one of those.
    fn driver_holding_lock(&self) -> Option<i32> {
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(self.path().join("driver.lock"))
            .ok()?
            .ino();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        // "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"; a waiter's
        // line has "->" after its number.
        let holder: i32 = locks.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let file_ino: u64 = f.get(5)?.rsplit(':').next()?.parse().ok()?;
            (f.get(1) == Some(&"FLOCK") && f.get(3) == Some(&"WRITE") && file_ino == ino)
                .then(|| f[4].parse().ok())
                .flatten()
        })?;
        self.driver_pids().contains(&holder).then_some(holder)
    }
}

const SLEEPER: &str = "import time\nprint('started', flush=True)\ntime.sleep(120)\n";

/// Starts `studio run SCRIPT` in the foreground and waits until its job runs.
fn start_follower(h: &Home, script: &str, out: Stdio) -> (std::process::Child, String) {
    let child = h
        .cmd(&["run", script])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_until("the job to run", Duration::from_secs(30), || {
        let path = h.path().join("studio.sqlite3");
        let db = rusqlite::Connection::open(path).ok()?;
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db.query_row("SELECT id FROM jobs WHERE state = 'running'", [], |r| {
            r.get::<_, String>(0)
        })
        .ok()
    });
    (child, id)
}

/// `studio run hello.py` from a second shell must finish while the first
/// follower is stuck.
fn a_second_run_finishes(h: &Home) {
    let mut second = h
        .cmd(&["run", "hello.py"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut second, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the second run finished while the first follower was stuck: {status:?}"
    );
}

#[test]
fn a_stopped_follower_holds_back_no_other_job() {
    let h = Home::new();
    let sleeper = script(&h.scripts(), "sleep.py", SLEEPER);
    let (mut first, id) = start_follower(&h, &sleeper, Stdio::null());
    signal(first.id(), libc::SIGSTOP); // Ctrl-Z
    a_second_run_finishes(&h);
    signal(first.id(), libc::SIGKILL);
    signal(first.id(), libc::SIGCONT);
    let _ = first.wait();
    assert!(h.run(&["cancel", &id]).status.success());
}

#[test]
fn a_follower_blocked_on_a_full_pipe_holds_back_no_other_job() {
    let h = Home::new();
    let chatty = script(
        &h.scripts(),
        "chatty.py",
        "import time\nfor i in range(20000):\n    print('x' * 60, i, flush=True)\ntime.sleep(120)\n",
    );
    // `studio run chatty.py | sleep 120`: nobody reads the pipe.
    let (mut first, id) = start_follower(&h, &chatty, Stdio::piped());
    let pid = first.id();
    wait_until(
        "the follower to block on the full pipe",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                .is_ok_and(|w| w.contains("pipe_write"))
                .then_some(())
        },
    );
    a_second_run_finishes(&h);
    let _ = first.kill();
    let _ = first.wait();
    assert!(h.run(&["cancel", &id]).status.success());
}

/// `studio run train.py` ended by `end` while the job runs; then its worker
/// dies. With no other command, the job must still be run again.
fn a_follower_ended_by(end: impl FnOnce(&mut std::process::Child)) {
    let h = Home::new();
    // train.py (5 epochs) holds after epoch 1 until the worker is dead,
    // however slow or fast the machine.
    let gate = h.hold_train_at(1);
    let (mut follower, id) = start_follower(&h, "train.py", Stdio::piped());
    wait_until("epoch 1", Duration::from_secs(30), || {
        h.log(&id).contains("epoch 1/").then_some(())
    });
    end(&mut follower);
    let _ = follower.wait();
    let worker = h.worker_pid_of(&id);
    signal(worker as u32, libc::SIGKILL);
    std::fs::write(&gate, "").unwrap();
    // No other command runs: only a driver can requeue the job.
    let end = wait_until("attempt 2 to finish", Duration::from_secs(60), || {
        h.db_job(&id).filter(|(s, _)| s == "finished")
    });
    assert_eq!(end.1, 2, "finished on its second attempt");
    kill_session(worker);
}

#[test]
fn a_follower_ended_by_sigterm_leaves_a_driver_that_recovers_its_job() {
    a_follower_ended_by(|f| signal(f.id(), libc::SIGTERM));
}

#[test]
fn a_follower_ended_by_sighup_leaves_a_driver_that_recovers_its_job() {
    // The terminal went away.
    a_follower_ended_by(|f| signal(f.id(), libc::SIGHUP));
}

#[test]
fn a_follower_ended_by_sigpipe_leaves_a_driver_that_recovers_its_job() {
    // `studio run train.py | head -1`: the reader leaves, the next write ends it.
    a_follower_ended_by(|f| drop(f.stdout.take()));
}

#[test]
fn status_starts_a_driver_when_the_last_one_died() {
    let h = Home::new();
    let gate = h.hold_train_at(1);
    let id = stdout(&h.run(&["run", "--detach", "train.py", "--epochs", "3"]))
        .trim()
        .to_string();
    wait_until("epoch 1", Duration::from_secs(30), || {
        h.log(&id).contains("epoch 1/").then_some(())
    });
    let drivers = h.driver_pids();
    assert_eq!(drivers.len(), 1, "one driver: {drivers:?}");
    signal(drivers[0] as u32, libc::SIGKILL);
    wait_until("the driver to be gone", Duration::from_secs(10), || {
        h.driver_pids().is_empty().then_some(())
    });
    let worker = h.worker_pid_of(&id);
    signal(worker as u32, libc::SIGKILL);
    std::fs::write(&gate, "").unwrap();
    assert!(h.run(&["status"]).status.success());
    let end = wait_until("attempt 2 to finish", Duration::from_secs(60), || {
        h.db_job(&id).filter(|(s, _)| s == "finished")
    });
    assert_eq!(end.1, 2);
    kill_session(worker);
}

#[test]
fn parallel_detached_submits_start_one_driver() {
    let h = Home::new();
    let slow = script(
        &h.scripts(),
        "slow.py",
        "import time\ntime.sleep(6)\nprint('done', flush=True)\n",
    );
    let children: Vec<_> = (0..6)
        .map(|i| {
            h.cmd(&[
                "run",
                "--detach",
                "--num-workers",
                "4",
                &slow,
                &i.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Drivers that lost the race leave at once; in the old code they queued
    // up behind the first and lingered until all the work was done.
    wait_until("a single driver", Duration::from_secs(3), || {
        (h.driver_pids().len() == 1).then_some(())
    });
    assert!(
        h.count("SELECT COUNT(*) FROM jobs WHERE state = 'finished'") < 6,
        "checked while the jobs still run"
    );
    wait_until("six finished jobs", Duration::from_secs(60), || {
        (h.count("SELECT COUNT(*) FROM jobs WHERE state = 'finished'") == 6).then_some(())
    });
    let log = std::fs::read_to_string(h.path().join("driver.log")).unwrap();
    let drove: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("driving"))
        .filter_map(|l| l.split("pid=").nth(1))
        .collect();
    assert_eq!(drove.len(), 1, "one process drove all six: {log}");
}

#[test]
fn a_detached_id_can_be_cancelled_at_once_while_the_driver_is_busy() {
    let h = Home::new();
    let sleeper = script(&h.scripts(), "sleep.py", SLEEPER);
    let busy = stdout(&h.run(&["run", "--detach", &sleeper]))
        .trim()
        .to_string();
    let driver = wait_until("the driver", Duration::from_secs(10), || {
        h.driver_holding_lock()
    });
    // Busy: it handles nothing now. (Stopped outside a write transaction,
    // or every command would wait for its SQLite lock instead.)
    wait_until(
        "the driver stopped between writes",
        Duration::from_secs(20),
        || {
            stop(driver as u32);
            let db = rusqlite::Connection::open(h.path().join("studio.sqlite3")).unwrap();
            db.busy_timeout(Duration::from_millis(300)).unwrap();
            if db.execute_batch("BEGIN IMMEDIATE; COMMIT").is_ok() {
                return Some(());
            }
            signal(driver as u32, libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(20));
            None
        },
    );
    let out = h.run(&["run", "--detach", "hello.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let cancel = h.run(&["cancel", &id]);
    signal(driver as u32, libc::SIGCONT);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(stderr(&cancel).contains("cancelled"), "{}", stderr(&cancel));
    // The driver then handles the submit and leaves the job alone.
    wait_until("the submit to be handled", Duration::from_secs(20), || {
        (h.count("SELECT COUNT(*) FROM messages WHERE queue = 'studio-submit'") == 0).then_some(())
    });
    let job = h.job(&id);
    assert_eq!(job["state"], "cancelled", "{job:#}");
    assert!(job["attempts"].as_array().unwrap().is_empty(), "never ran");
    assert!(h.log(&id).is_empty());
    assert!(h.run(&["cancel", &busy]).status.success());
}

#[test]
fn a_dead_workers_script_children_die_with_it() {
    let h = Home::new();
    let pids = h.scripts();
    let spawner = script(
        &h.scripts(),
        "spawner.py",
        "import os, subprocess, sys, time\n\
         p = subprocess.Popen(['sleep', '300'])\n\
         path = os.path.join(sys.argv[1], 'attempt-' + os.environ['STUDIO_ATTEMPT'])\n\
         open(path + '.tmp', 'w').write(str(p.pid))\n\
         os.replace(path + '.tmp', path)\n\
         time.sleep(300)\n",
    );
    let id = stdout(&h.run(&["run", "--detach", &spawner, &pids.display().to_string()]))
        .trim()
        .to_string();
    let read = |n: u32| -> Option<i32> {
        std::fs::read_to_string(pids.join(format!("attempt-{n}")))
            .ok()?
            .parse()
            .ok()
    };
    let sleep1 = wait_until("attempt 1's child", Duration::from_secs(30), || read(1));
    assert!(alive(sleep1, "sleep"));
    let worker = h.worker_pid_of(&id);
    signal(worker as u32, libc::SIGKILL);
    let sleep2 = wait_until("attempt 2's child", Duration::from_secs(30), || read(2));
    let gone = wait_until(
        "attempt 1's child to be gone",
        Duration::from_secs(5),
        || Some(!alive(sleep1, "sleep")).filter(|g| *g),
    );
    assert!(gone, "nothing of attempt 1 runs beside attempt 2");
    assert!(h.run(&["cancel", &id]).status.success());
    wait_until(
        "attempt 2's child to be gone",
        Duration::from_secs(30),
        || (!alive(sleep2, "sleep")).then_some(()),
    );
    for p in [sleep1, sleep2] {
        if alive(p, "sleep") {
            signal(p as u32, libc::SIGKILL);
        }
    }
}

#[test]
fn a_pipe_handed_to_studio_is_closed_when_studio_exits() {
    use std::io::Read;
    let h = Home::new();
    // `( studio run hello.py 3>&1 >/dev/null 2>&1 ) | cat`
    let mut c = Command::new("bash");
    c.args([
        "-c",
        &format!("exec {STUDIO} run hello.py 3>&1 >/dev/null 2>&1"),
    ])
    .env("STUDIO_HOME", h.path())
    .env("STUDIO_POOL_GRACE", "60s") // the driver and the idle worker stay on
    .current_dir(examples())
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = pipe.read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let st = wait_for(&mut child, Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the reader saw end-of-file once studio exited (driver and workers \
         hold no copy of the pipe)"
    );
    assert!(!h.pids("worker").is_empty(), "a worker still ran meanwhile");
}

#[test]
fn a_relative_studio_home_keeps_checkpoints() {
    let h = Home::at("relhome");
    let train = examples().join("train.py").display().to_string();
    let out = h
        .cmd(&["run", &train, "--epochs", "2", "--epoch-seconds", "0.1"])
        .env("STUDIO_HOME", &h.home)
        .current_dir(h.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    let dir = h.path().join("jobs").join(&id).join("checkpoints");
    let saved: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("attempt-1-"))
        .collect();
    assert_eq!(saved.len(), 1, "checkpoint saved under the home: {dir:?}");
}

#[test]
fn a_home_inside_the_scripts_directory_is_not_packed() {
    // The default `~/.studio` with a script in `~`.
    let h = Home::at("proj/.studio");
    let proj = h.dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::copy(examples().join("hello.py"), proj.join("hello.py")).unwrap();
    for _ in 0..2 {
        let out = h
            .cmd(&["run", "hello.py"])
            .current_dir(&proj)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let tarballs: Vec<_> = std::fs::read_dir(h.path().join("artifacts/workspaces"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(tarballs.len(), 1, "both runs packed the same workspace");
    assert!(tarballs[0].metadata().unwrap().len() < 4096);
}

#[test]
fn state_under_the_home_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    let out = h.run(&["run", "--env", "API_TOKEN=s3cret", "hello.py"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let home = h.path();
    assert_eq!(mode(&home), 0o700, "the home");
    for d in ["jobs", "instances", "artifacts", "artifacts/workspaces"] {
        assert_eq!(mode(&home.join(d)), 0o700, "{d}");
    }
    let mut files = vec![
        home.join("studio.sqlite3"),
        home.join("studio.sqlite3-wal"),
        home.join("driver.log"),
        home.join("jobs").join(&id).join("log"),
    ];
    for d in ["instances", "artifacts/workspaces"] {
        files.extend(
            std::fs::read_dir(home.join(d))
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
    }
    for f in files {
        assert_eq!(mode(&f), 0o600, "{f:?}");
    }
}

/// A script that says goodbye a while after SIGTERM.
const SLOW_GOODBYE: &str = r#"import signal, sys, time
def bye(*_):
    time.sleep(1.5)
    print("goodbye after SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, bye)
print("started", flush=True)
time.sleep(120)
"#;

#[test]
fn output_printed_after_a_cancel_is_shown_by_run_and_logs_follow() {
    let h = Home::new();
    let goodbye = script(&h.scripts(), "goodbye.py", SLOW_GOODBYE);
    let (run, id) = start_follower(&h, &goodbye, Stdio::piped());
    wait_until("the script to start", Duration::from_secs(30), || {
        h.log(&id).contains("started").then_some(())
    });
    let logs = h
        .cmd(&["logs", "-f", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(h.run(&["cancel", &id]).status.success());
    for (what, child) in [("run", run), ("logs -f", logs)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            stdout(&out).contains("goodbye after SIGTERM"),
            "{what} showed the output printed in the grace: {}",
            stdout(&out)
        );
    }
}

#[test]
fn an_ended_jobs_workspace_keeps_only_what_the_script_wrote() {
    let h = Home::new();
    assert!(h.run(&["run", "hello.py"]).status.success());
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    let ws = h.path().join("jobs").join(&id).join("attempt-1/workspace");
    wait_until("the inputs to go", Duration::from_secs(20), || {
        (!ws.join("hello.py").exists()).then_some(())
    });
    assert!(!ws.join("train.py").exists());
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt")).unwrap(),
        "hello, world\n",
        "the output is kept"
    );
}

#[test]
fn gc_removes_what_ended_jobs_left_after_the_retention() {
    let h = Home::new();
    assert!(h.run(&["run", "hello.py"]).status.success());
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    wait_until("the pool to be torn down", Duration::from_secs(30), || {
        (h.count("SELECT COUNT(*) FROM instances WHERE state != 'terminated'") == 0
            && h.driver_pids().is_empty())
        .then_some(())
    });
    let kept = h.run(&["gc", "--older-than", "1h"]);
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert_eq!(
        h.count("SELECT COUNT(*) FROM jobs"),
        1,
        "within the retention"
    );
    assert!(h.path().join("jobs").join(&id).exists());

    let out = h.run(&["gc", "--older-than", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Counts in words, sizes in bytes as people read them.
    let said = stderr(&out);
    assert!(said.contains("removed 1 job, "), "{said}");
    assert!(
        regex::Regex::new(r"; [0-9.]+ (B|KiB|MiB|GiB) freed")
            .unwrap()
            .is_match(&said),
        "{said}"
    );
    assert_eq!(h.count("SELECT COUNT(*) FROM jobs"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM instances"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM pools"), 0);
    assert!(!h.path().join("jobs").join(&id).exists());
    let left = |d: &str| std::fs::read_dir(h.path().join(d)).unwrap().count();
    assert_eq!(left("artifacts/workspaces"), 0);
    assert_eq!(left("instances"), 0);
    assert_eq!(stdout(&h.run(&["status"])).trim(), "no jobs");
}

#[test]
fn a_waiting_run_replaces_a_driver_that_died() {
    let h = Home::new();
    let gate = h.hold_train_at(1);
    let follower = h
        .cmd(&["run", "train.py", "--epochs", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_until("the job to run", Duration::from_secs(30), || {
        let jobs = h.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'");
        (jobs == 1).then(|| {
            let db = rusqlite::Connection::open(h.path().join("studio.sqlite3")).unwrap();
            db.query_row("SELECT id FROM jobs", [], |r| r.get::<_, String>(0))
                .unwrap()
        })
    });
    wait_until("epoch 1", Duration::from_secs(30), || {
        h.log(&id).contains("epoch 1/").then_some(())
    });
    for d in h.driver_pids() {
        signal(d as u32, libc::SIGKILL);
    }
    let worker = h.worker_pid_of(&id);
    signal(worker as u32, libc::SIGKILL);
    std::fs::write(&gate, "").unwrap();
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("training done"), "{}", stdout(&out));
    assert_eq!(h.db_job(&id).unwrap(), ("finished".to_string(), 2));
    kill_session(worker);
}

/// `--workspace DIR`: the whole project is the workspace, the script in a
/// subdirectory runs from its top; a script outside it is refused.
#[test]
fn a_workspace_other_than_the_scripts_directory() {
    let h = Home::new();
    let proj = h.dir.path().join("proj");
    std::fs::create_dir_all(proj.join("scripts")).unwrap();
    std::fs::write(proj.join("data.txt"), "from the project's top\n").unwrap();
    script(
        &proj.join("scripts"),
        "run.py",
        "print(open('data.txt').read().strip())\n",
    );
    let out = h.run(&[
        "run",
        "--workspace",
        proj.to_str().unwrap(),
        proj.join("scripts/run.py").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("from the project's top"),
        "{}",
        stdout(&out)
    );
    let outside = h.run(&[
        "run",
        "--workspace",
        proj.join("scripts").to_str().unwrap(),
        proj.join("data.txt").to_str().unwrap(),
    ]);
    assert_eq!(outside.status.code(), Some(2));
    assert!(
        stderr(&outside).contains("is not inside the workspace"),
        "{}",
        stderr(&outside)
    );
}

/// The README's first example: train.py's outputs (a 4 MiB model, a config
/// and a directory of results) come back into `./studio-out/JOB/` byte for
/// byte; `studio pull` again writes nothing; status and cost show the job.
#[test]
fn a_run_brings_its_outputs_back_and_a_second_pull_writes_nothing() {
    let h = Home::new();
    let out = h.run(&[
        "run",
        "train.py",
        "--epochs",
        "3",
        "--epoch-seconds",
        "0.05",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
    assert!(
        stderr(&out).contains(&format!(
            "outputs of job {id} attempt 1 in studio-out/{id}: 5 written"
        )),
        "{}",
        stderr(&out)
    );
    let got = h.work().join("studio-out").join(&id);
    // The model as Python makes it, independently of Studio.
    let want = Command::new("python3")
        .args([
            "-c",
            "import random, sys; sys.stdout.buffer.write(random.Random(3).randbytes(4 << 20))",
        ])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(want.len(), 4 << 20);
    assert!(
        std::fs::read(got.join("model.bin")).unwrap() == want,
        "model.bin differs"
    );
    for e in 1..=3 {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(got.join(format!("results/epoch-{e:03}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(r["epoch"], e);
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(got.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["epochs"], 3);

    let again = h.run(&["pull", &id]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).is_empty(),
        "nothing written: {}",
        stdout(&again)
    );
    assert!(
        stderr(&again).contains("0 written (0 B), 5 already there"),
        "{}",
        stderr(&again)
    );
    let elsewhere = h.dir.path().join("elsewhere");
    let to = h.run(&["pull", &id, elsewhere.to_str().unwrap()]);
    assert!(to.status.success(), "{}", stderr(&to));
    assert_eq!(stdout(&to).lines().count(), 5, "{}", stdout(&to));
    assert!(std::fs::read(elsewhere.join("model.bin")).unwrap() == want);
    let none = h.run(&["pull", &id, "--attempt", "2"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("has no attempt 2"),
        "{}",
        stderr(&none)
    );

    // The second run's workspace leaves out what the first pulled.
    assert!(h.run(&["run", "hello.py"]).status.success());
    let tarballs: Vec<u64> = std::fs::read_dir(h.path().join("artifacts/workspaces"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(tarballs.iter().all(|n| *n < 64 << 10), "{tarballs:?}");

    let status = stdout(&h.run(&["status", &id]));
    assert!(status.contains("cost      $0.0000"), "{status}");
    assert!(status.contains("outputs: 5 file(s), 4.0 MiB"), "{status}");
    let cost = h.run(&["cost", "--by", "pool"]);
    assert!(cost.status.success(), "{}", stderr(&cost));
    let pool = h.jobs()[0]["pool"].as_str().unwrap().to_string();
    let row = stdout(&cost)
        .lines()
        .find(|l| l.starts_with(&pool))
        .unwrap_or_else(|| panic!("{}", stdout(&cost)))
        .to_string();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [pool.as_str(), "2", "$0.0000"],
        "both jobs, local: free"
    );
}

/// `--input s3://…`: the worker fetches the objects under the prefix into
/// the workspace before the script starts, with its own credentials (here
/// the test's, against `moto_server`); a prefix with nothing under it fails
/// the job with the reason; a malformed one is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_from_s3_are_in_the_workspace_before_the_script_starts() {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&studio_aws::emulator_config(
            "us-east-1",
            &studio_tests::moto_endpoint(),
        ))
        .force_path_style(true)
        .build(),
    );
    let bucket = format!("inputs-{}", ulid::Ulid::new().to_string().to_lowercase());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    for (key, body) in [
        ("datasets/mnist/train.csv", "1,2,3\n"),
        ("datasets/mnist/labels/all.txt", "seven\n"),
        ("datasets/mnistique/other.csv", "not this\n"),
    ] {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let h = Home::new();
    let reader = script(
        &h.work(),
        "read.py",
        "import os\nfor root, _, files in sorted(os.walk('data')):\n    for f in sorted(files):\n        p = os.path.join(root, f)\n        print(p, open(p).read().strip())\n",
    );
    let url = format!("s3://{bucket}/datasets/mnist:data");
    let out = tokio::task::spawn_blocking({
        let (url, reader) = (url.clone(), reader.clone());
        let cmd = h.cmd(&["run", "--input", &url, &reader]);
        move || {
            let mut cmd = cmd;
            cmd.stdin(Stdio::null()).output().unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let so = stdout(&out);
    assert!(so.contains("data/train.csv 1,2,3"), "{so}");
    assert!(so.contains("data/labels/all.txt seven"), "{so}");
    assert!(!so.contains("not this"), "a prefix is a directory: {so}");
    assert!(
        so.contains(&format!(
            "[studio] input s3://{bucket}/datasets/mnist -> data: 2 file(s), 12 bytes"
        )),
        "{so}"
    );

    let missing = format!("s3://{bucket}/nothing-here");
    let cmd = h.cmd(&["run", "--input", &missing, &reader]);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.stdin(Stdio::null()).output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("objects under {missing} not found")),
        "{}",
        stderr(&out)
    );

    for (bad, want) in [
        ("gs://b/p", "only s3:// URLs are supported"),
        ("s3://B/p", "with a valid bucket name"),
        (
            "s3://bucket/p:../up",
            "the path relative, inside the workspace",
        ),
    ] {
        let out = h.run(&["run", "--input", bad, "hello.py"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains(want), "{bad}: {}", stderr(&out));
    }
}

/// Chaos (issue 13), as a user's machine sees it: N jobs on the local
/// backend while a seeded loop, every 50 ms, gives 45 % of the running
/// attempts it sees an interruption notice (SIGTERM to their worker: the
/// worker stops the script and hands the job back), kills a tenth of them
/// outright (SIGKILL: the machine vanishes), and every few seconds kills
/// the driver mid-work and starts it again after a random delay. Every job
/// must end `finished`, exactly once, with its attempts; nothing may be left.
///
/// `STUDIO_CHAOS_JOBS` (default 200) and `STUDIO_CHAOS_SEED` (default: the
/// clock) size and replay it; both are printed. `scripts/bench` runs 1,000.
#[test]
fn chaos_every_job_finishes_exactly_once_whatever_dies() {
    let n: usize = std::env::var("STUDIO_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = Rng::seed_from_env("STUDIO_CHAOS_SEED");
    report!(
        "chaos: {n} jobs, seed {seed} (STUDIO_CHAOS_JOBS={n} STUDIO_CHAOS_SEED={seed} to replay)"
    );
    let mut rng = Rng(seed);
    let h = Home::new();
    let cmd = |args: &[&str]| {
        let mut c = h.cmd(args);
        c.env("STUDIO_MAX_WORKERS", "8")
            .env("STUDIO_MAX_ATTEMPTS", "1000")
            .stdin(Stdio::null());
        c
    };
    // The scripts wait for the chaos to begin (the gate file), so however
    // long the submissions take, every job meets it.
    script(
        &h.work(),
        "chaos.py",
        "import os, sys, time\nwhile not os.path.exists(sys.argv[3]):\n    time.sleep(0.02)\ntime.sleep(float(sys.argv[1]))\nprint('done', sys.argv[2], flush=True)\n",
    );
    let gate = h.dir.path().join("chaos-begins");
    let gate_arg = gate.display().to_string();
    let started = Instant::now();
    for i in 0..n {
        let secs = format!("{:.2}", 0.3 + (i % 7) as f64 * 0.1);
        let out = cmd(&[
            "run",
            "--detach",
            "--num-workers",
            "8",
            "--job-id",
            &format!("chaos-{i:04}"),
            "chaos.py",
            &secs,
            &i.to_string(),
            &gate_arg,
        ])
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    report!("chaos: {n} submitted in {:?}", started.elapsed());

    let home = h.path().display().to_string();
    let db = rusqlite::Connection::open(h.path().join("studio.sqlite3")).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let worker_pid = |instance: &str| {
        h.pids(&format!("worker --pool [^ ]+ --instance-id {instance} "))
            .first()
            .copied()
    };
    let mut decided = std::collections::HashSet::new();
    let mut drivers: Vec<std::process::Child> = Vec::new();
    let driver = || {
        cmd(&["--home", home.as_str(), "driver"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    std::fs::write(&gate, "").unwrap();
    let (mut notices, mut kills, mut driver_kills) = (0usize, 0usize, 0usize);
    let mut next_driver_kill = Instant::now() + Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let running: Vec<(String, i64, String)> = db
            .prepare(
                "SELECT id, json_extract(record, '$.attempt'), json_extract(record, '$.instance')
                 FROM jobs WHERE state = 'running'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (id, attempt, instance) in running {
            if !decided.insert((id, attempt)) {
                continue;
            }
            let Some(pid) = worker_pid(&instance) else {
                continue;
            };
            if rng.chance(0.45) {
                signal(pid as u32, libc::SIGTERM);
                notices += 1;
            } else if rng.chance(0.15) {
                signal(pid as u32, libc::SIGKILL);
                kills += 1;
            }
        }
        if Instant::now() >= next_driver_kill {
            for pid in h.driver_pids() {
                signal(pid as u32, libc::SIGKILL);
                driver_kills += 1;
            }
            // The driver comes back a moment later, as a user's next
            // `studio` command (or a waiting `studio run`) brings it back.
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 500));
            drivers.push(driver());
            next_driver_kill = Instant::now() + Duration::from_millis(2000 + rng.next_u64() % 3000);
        }
        let ended: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('finished', 'failed', 'cancelled')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if ended as usize == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chaos (seed {seed}): {ended} of {n} ended after 10 minutes"
        );
        // Not synchronization: the chaos loop's own pace.
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();

    let jobs = h.jobs();
    assert_eq!(jobs.len(), n);
    let mut attempts = 0usize;
    let mut interrupted_jobs = 0usize;
    for j in &jobs {
        let id = j["id"].as_str().unwrap();
        assert_eq!(j["state"], "finished", "seed {seed}: {id}: {j}");
        let events = j["events"].as_array().unwrap();
        let finished = events.iter().filter(|e| e["to"] == "finished").count();
        assert_eq!(finished, 1, "seed {seed}: {id} finished once: {events:?}");
        let tries = j["attempts"].as_array().unwrap();
        let ok = tries.iter().filter(|a| a["outcome"] == "finished").count();
        assert_eq!(
            ok, 1,
            "seed {seed}: {id}: one successful attempt: {tries:?}"
        );
        assert_eq!(
            tries.len() as u64,
            j["attempt"].as_u64().unwrap(),
            "seed {seed}: {id}: every attempt is recorded"
        );
        assert!(
            tries[..tries.len() - 1]
                .iter()
                .all(|a| a["outcome"] == "interrupted"),
            "seed {seed}: {id}: every earlier attempt was interrupted: {tries:?}"
        );
        attempts += tries.len();
        if tries.len() > 1 {
            interrupted_jobs += 1;
        }
    }
    report!(
        "chaos: {n} jobs finished in {took:?}; {attempts} attempts, {notices} notices ({:.0} % of attempts), {kills} workers killed, {driver_kills} drivers killed, {interrupted_jobs} jobs ran more than once",
        100.0 * notices as f64 / attempts as f64
    );
    assert!(
        notices * 5 >= attempts,
        "seed {seed}: notices reached {notices} of {attempts} attempts, under 20 %"
    );
    // Nothing left once the pool's grace (1 s) is over.
    drivers.push(driver());
    wait_until(
        "the pool and its workers gone",
        Duration::from_secs(60),
        || {
            (h.count("SELECT COUNT(*) FROM pools WHERE state != 'deleted'") == 0
                && h.pids("worker").is_empty()
                && h.driver_pids().is_empty())
            .then_some(())
        },
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM messages"),
        0,
        "no work item left"
    );
    for mut d in drivers {
        // Each has exited (or was killed above): reap it.
        d.wait().unwrap();
    }
}

/// A project as users bring it, on the local default: `requirements.txt`
/// names a package (a wheel in the project: nothing is downloaded), `studio
/// run` says it will build from it, the script imports the package, and the
/// second run reuses the environment instead of building it again.
#[test]
fn a_project_with_requirements_runs_as_is_and_its_environment_is_reused() {
    let h = Home::new();
    let proj = h.work().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let whl = studio_tests::make_wheel(&proj, "greeting", "0.1", "WORDS = 'hello from a wheel'\n");
    std::fs::write(proj.join("requirements.txt"), format!("./{whl}\n")).unwrap();
    script(&proj, "main.py", "import greeting\nprint(greeting.WORDS)\n");
    let mut logs = Vec::new();
    for _ in 0..2 {
        let out = h.run(&["run", "--no-pull", "proj/main.py"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("hello from a wheel"),
            "{}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("the job's Python environment is built from requirements.txt"),
            "{}",
            stderr(&out)
        );
        let id = h.jobs()[0]["id"].as_str().unwrap().to_string();
        logs.push(h.log(&id));
    }
    assert!(
        logs[0].contains("[studio] built the python environment"),
        "{}",
        logs[0]
    );
    assert!(logs[1].contains("): reused"), "{}", logs[1]);
    assert!(
        !logs[1].contains("building the python environment"),
        "{}",
        logs[1]
    );
}

/// What `studio run` refuses before anything is sent (exit 2, no job): a
/// script that does not compile, and, on the local default, dependency
/// files on a machine without uv to build them.
#[test]
fn run_refuses_a_script_that_does_not_compile_and_requirements_without_uv() {
    let h = Home::new();
    let work = h.work();
    script(&work, "broken.py", "print('fine')\ndef f(:\n    pass\n");
    let out = h.run(&["run", "broken.py"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("script 'broken.py' does not compile: SyntaxError: invalid syntax (line 2)"),
        "{}",
        stderr(&out)
    );
    let proj = work.join("needs");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("requirements.txt"), "numpy\n").unwrap();
    script(&proj, "main.py", "import numpy\n");
    // A PATH with the system's tools and no uv.
    let out = h
        .cmd(&["run", "needs/main.py"])
        .env("PATH", "/usr/bin:/bin")
        .env_remove("STUDIO_UV")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("requirements.txt needs uv to build the job's environment"),
        "{}",
        stderr(&out)
    );
    assert!(h.jobs().is_empty(), "nothing was sent");
    // STUDIO_UV, as the message says, is enough (it was refused all the
    // same). Nothing to install: the test downloads nothing.
    let uv = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("uv"))
        .find(|p| p.is_file())
        .expect("uv on PATH (scripts/test installs it)");
    std::fs::write(proj.join("requirements.txt"), "").unwrap();
    script(&proj, "main.py", "print('built with uv from STUDIO_UV')\n");
    let out = h
        .cmd(&["run", "needs/main.py"])
        .env("PATH", "/usr/bin:/bin")
        .env("STUDIO_UV", &uv)
        .env("UV_OFFLINE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built with uv from STUDIO_UV"),
        "{}",
        stderr(&out)
    );
}
