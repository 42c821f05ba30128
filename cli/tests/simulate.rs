//! `studio simulate` through the real binary: the standard preset's table,
//! the same bytes for the same seed, JSON with every field a program reads,
//! and flags that are wrong refused before anything runs.

#[macro_use]
mod common;
use common::*;
use serde_json::Value;

#[test]
fn the_standard_preset_prints_the_same_table_for_the_same_seed() {
    let h = Home::new();
    let run = || h.run(&["simulate", "--preset", "standard", "--seed", "7"]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(run);
        let b = s.spawn(run);
        (a.join().unwrap(), b.join().unwrap())
    });
    let out = String::from_utf8(a.stdout.clone()).unwrap();
    assert!(
        a.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(a.stdout, b.stdout, "the same seed, byte for byte");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("1000/1000")).collect();
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["on-demand", "studio-2017", "studio", "studio-k1"],
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("policy") && l.contains("total $") && l.contains("p95")),
        "{out}"
    );
    let err = String::from_utf8(a.stderr).unwrap();
    assert!(err.contains("of wall time, peak memory"), "{err}");
    report!("{out}{err}");
}

#[test]
fn this_machines_settings_play_no_part() {
    let h = Home::new();
    let args = ["simulate", "--jobs", "20", "--seed", "5"];
    let plain = h.run(&args);
    let set = h
        .cmd(&args)
        .env("STUDIO_MAX_WORKERS", "1")
        .env("STUDIO_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    assert!(plain.status.success() && set.status.success());
    assert_eq!(plain.stdout, set.stdout);
}

#[test]
fn json_carries_every_policy_figure() {
    let h = Home::new();
    let o = h.run(&["simulate", "--jobs", "40", "--seed", "3", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 4);
    for p in policies {
        for field in [
            "name",
            "jobs",
            "jobs_finished",
            "total_cost_usd",
            "spot_cost_usd",
            "on_demand_cost_usd",
            "makespan_s",
            "p50_completion_s",
            "p95_completion_s",
            "interruptions",
            "work_lost_s",
            "api_calls",
            "api_cost_usd",
        ] {
            assert!(!p[field].is_null(), "{field} missing in {p}");
        }
        assert_eq!(p["jobs_finished"], 40, "{p}");
        for service in ["sqs", "dynamodb", "ec2", "lambda"] {
            assert!(
                p["api_calls"][service].as_u64().unwrap() > 0,
                "{service} in {p}"
            );
        }
        let parts = p["spot_cost_usd"].as_f64().unwrap()
            + p["on_demand_cost_usd"].as_f64().unwrap()
            + p["api_cost_usd"].as_f64().unwrap();
        assert!(
            (parts - p["total_cost_usd"].as_f64().unwrap()).abs() < 0.0002,
            "{p}"
        );
    }
}

#[test]
fn wrong_flags_and_files_are_refused_with_the_reason() {
    let h = Home::new();
    let bad = h.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s\n0,60,2,0,,azure,\n",
    )
    .unwrap();
    let market = h.dir.path().join("market.csv");
    std::fs::write(&market, "m5.large,1.5,<5%\n").unwrap();
    let huge = h.dir.path().join("huge.csv");
    std::fs::write(
        &huge,
        "arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s\n0,60,2,0,,ec2spot,\n5,60,2,0,100000g,ec2spot,\n",
    )
    .unwrap();
    let unknown = h.dir.path().join("unknown.csv");
    std::fs::write(&unknown, "nosuch.huge,0.5,<5%\n").unwrap();
    for (args, says) in [
        (vec!["--preset", "calm"], "no preset \"calm\""),
        (
            vec!["--policy", "cheapest"],
            "--policy cheapest: not one of",
        ),
        (vec!["--jobs", "0"], "--jobs must be at least 1"),
        (
            vec!["--median-duration", "soon"],
            "--median-duration 'soon'",
        ),
        (vec!["--workload", bad.to_str().unwrap()], "workload line 2"),
        (
            vec!["--market", market.to_str().unwrap()],
            "spot_discount \"1.5\"",
        ),
        (
            vec!["--workload", "/nonexistent.csv"],
            "--workload /nonexistent.csv",
        ),
        (
            vec!["--workload", huge.to_str().unwrap()],
            "workload line 3:",
        ),
        (
            vec!["--market", unknown.to_str().unwrap()],
            "nosuch.huge is not an EC2 type",
        ),
        (
            vec!["--workers-per-pool", "0"],
            "--workers-per-pool must be at least 1",
        ),
        (vec!["--interruption-scale", "-1"], "must be a number >= 0"),
    ] {
        let mut full = vec!["simulate"];
        full.extend(args.iter().copied());
        let o = h.run(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {err}");
        assert!(err.contains(says), "{full:?}: {err}");
        assert!(o.stdout.is_empty(), "{full:?} printed a report");
    }
}
