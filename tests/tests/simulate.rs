//! `studio simulate` (`studio_sim`): the same seed gives the same report;
//! the simulation runs the real handlers and worker rules through the
//! ports; and a scenario replayed on the local backend (real processes)
//! takes the same path, job by job.

use std::sync::Arc;
use std::time::Duration;
use studio_core::job::{Job, JobState};
use studio_core::notice::Ec2Metadata;
use studio_core::ports::ArtifactStore;
use studio_core::resources::Cloud;
use studio_core::worker::{run_worker, WorkerExit};
use studio_sim::rng::Rng;
use studio_sim::workload::{Generator, SimJob};
use studio_sim::{simulate, Policy, Scenario};
use studio_tests::{
    eventually, job_id, quick_worker_config, JobBuilder, LocalWorld, MetadataStandIn,
};

/// 80 jobs of the standard mix in a market interrupting 300 times as often
/// as the Advisor's buckets say, so every policy meets interruptions.
fn busy(seed: u64) -> Scenario {
    let mut s = Scenario::preset("standard", seed).unwrap();
    s.jobs = Generator::standard(80).generate(&mut Rng::stream(seed, 0));
    s.market.interruption_scale = 300.0;
    s
}

#[tokio::test]
async fn the_same_seed_gives_the_same_report_and_every_job_of_every_policy_finishes() {
    let json = |r: &studio_sim::Report| serde_json::to_string_pretty(r).unwrap();
    let (a, _) = simulate(&busy(7)).await.unwrap();
    let (b, _) = simulate(&busy(7)).await.unwrap();
    assert_eq!(json(&a), json(&b), "same seed, same bytes");
    let (c, _) = simulate(&busy(8)).await.unwrap();
    assert_ne!(json(&a), json(&c), "another seed, another run");
    let names: Vec<&str> = a.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["on-demand", "studio-2017", "studio", "studio-k1"]);
    for p in &a.policies {
        assert_eq!((p.jobs, p.jobs_finished), (80, 80), "{}", p.name);
        assert!(p.total_cost_usd > 0.0 && p.makespan_s > 0, "{p:?}");
        assert!(p.p50_completion_s <= p.p95_completion_s, "{p:?}");
    }
    let by = |n: &str| a.policies.iter().find(|p| p.name == n).unwrap();
    assert_eq!(
        by("on-demand").interruptions,
        0,
        "on-demand is never reclaimed"
    );
    assert_eq!(by("on-demand").spot_cost_usd, 0.0);
    assert!(
        by("studio").interruptions > 0,
        "the busy market reclaims spot machines"
    );
    assert!(
        by("studio").total_cost_usd < by("on-demand").total_cost_usd,
        "spot costs less: {} against {}",
        by("studio").total_cost_usd,
        by("on-demand").total_cost_usd
    );
    // Common random numbers: a policy's row is the same whichever others
    // run beside it.
    let mut alone = busy(7);
    alone.policies.retain(|p| p.name == "studio");
    let (solo, _) = simulate(&alone).await.unwrap();
    assert_eq!(solo.policies[0], *by("studio"));
    // Re-running from scratch throws away more than resuming from checkpoints.
    let per = |n: &str| by(n).work_lost_s as f64 / by(n).interruptions.max(1) as f64;
    assert!(
        per("studio-2017") > per("studio"),
        "{} vs {}",
        per("studio-2017"),
        per("studio")
    );
}

/// Two EC2 spot jobs in one pool; the first machine is reclaimed while its
/// job runs (its notice 20 minutes in).
fn two_jobs(policy: Policy) -> Scenario {
    let job = |arrive_ms, duration_ms| SimJob {
        arrive_ms,
        duration_ms,
        cloud: Cloud::Ec2spot,
        cpus: 2,
        gpus: 0,
        ram: Some("4g".into()),
        checkpoint_ms: Some(300_000),
        line: 0,
    };
    let mut s = Scenario::preset("standard", 1).unwrap();
    s.jobs = vec![job(0, 3_600_000), job(1_000, 600_000)];
    s.market.interruption_scale = 0.0;
    s.max_workers = 1;
    s.policies = vec![policy];
    s.reclaims = vec![("i-00000001".into(), Duration::from_secs(20 * 60))];
    s
}

/// Calm jobs get one machine each, and no more: the minute's scale counts
/// the jobs that wait from the store, not from SQS's visible count, which
/// lags deletes by up to a minute and still shows items already claimed
/// (then counted twice, as running too: a machine more per claim).
#[tokio::test]
async fn calm_jobs_launch_one_machine_each() {
    let job = |arrive_ms| SimJob {
        arrive_ms,
        duration_ms: 3_600_000,
        cloud: Cloud::Ec2spot,
        cpus: 2,
        gpus: 0,
        ram: Some("4g".into()),
        checkpoint_ms: None,
        line: 0,
    };
    let mut s = Scenario::preset("standard", 1).unwrap();
    s.jobs = vec![job(0), job(1_000), job(2_000)];
    s.market.interruption_scale = 0.0;
    s.max_workers = 6;
    s.policies = vec![studio_policy()];
    let (report, _) = simulate(&s).await.unwrap();
    let p = &report.policies[0];
    assert_eq!((p.jobs, p.jobs_finished), (3, 3));
    assert_eq!(p.machines_launched, 3, "{p:?}");
}

fn studio_policy() -> Policy {
    Policy::standard()
        .into_iter()
        .find(|p| p.name == "studio")
        .unwrap()
}

fn path(j: &Job) -> Vec<JobState> {
    j.events.iter().map(|e| e.to).collect()
}

#[tokio::test]
async fn the_simulation_goes_through_the_real_handlers_and_worker_rules() {
    let (report, outcomes) = simulate(&two_jobs(studio_policy())).await.unwrap();
    let o = &outcomes[0];
    // Every handler and worker rule called the ports, as on a cloud.
    let calls = &o.counts.by_phase;
    for (phase, op) in [
        ("submit", "PutItem"),
        ("submit", "SendMessageBatch"),
        ("submit", "CreateLaunchTemplate+CreateAutoScalingGroup"),
        ("submit", "SetDesiredCapacity"),
        ("scale", "Query"),
        ("scale", "DescribeAutoScalingGroups"),
        ("scale", "GetQueueAttributes"),
        ("cleanup", "DeleteAutoScalingGroup+DeleteLaunchTemplate"),
        ("cleanup", "DeleteQueue"),
        ("interruption", "Query"),
        ("worker", "ReceiveMessage"),
        ("worker", "DeleteMessage"),
        ("worker", "SetInstanceProtection"),
        ("worker", "CreateTags"),
        ("worker", "TerminateInstanceInAutoScalingGroup"),
    ] {
        assert!(
            calls.get(&(phase, op)).copied().unwrap_or(0) > 0,
            "no {op} from {phase}: {calls:?}"
        );
    }
    // The records are the handlers' own writing.
    let a = &o.jobs[0];
    assert_eq!(
        path(a),
        [
            JobState::Queued,
            JobState::Running,
            JobState::Interrupted,
            JobState::Queued,
            JobState::Running,
            JobState::Finished
        ]
    );
    assert_eq!(a.events[0].by, "submit");
    assert_eq!(a.events[1].by, "worker:i-00000001");
    assert_eq!(
        a.events[2].by, "worker:i-00000001",
        "the worker handed it back"
    );
    assert!(
        a.events[2].reason.contains("spot instance-action"),
        "{:?}",
        a.events[2]
    );
    assert_eq!(
        (a.attempt, a.attempts[0].outcome),
        (2, Some(JobState::Interrupted))
    );
    assert_eq!(
        path(&o.jobs[1]),
        [JobState::Queued, JobState::Running, JobState::Finished]
    );
    let p = &report.policies[0];
    assert_eq!((p.jobs_finished, p.interruptions), (2, 1));
    // Resumed from the checkpoint of minute 15 (5-minute checkpoints; the
    // script started after the boot and 45 s of setup): under 5 minutes lost.
    assert!(
        p.work_lost_s > 0 && p.work_lost_s < 300 + 45,
        "{}",
        p.work_lost_s
    );

    // One attempt and no fallback: requeue's own rule fails the job, with
    // its own words.
    let strict = Policy {
        max_attempts: 1,
        fallback: false,
        ..studio_policy()
    };
    let (report, outcomes) = simulate(&two_jobs(strict)).await.unwrap();
    let a = &outcomes[0].jobs[0];
    assert_eq!(a.state, JobState::Failed);
    assert!(
        a.reason
            .as_deref()
            .unwrap_or("")
            .contains("interrupted on attempt 1 of 1"),
        "{:?}",
        a.reason
    );
    assert_eq!(report.policies[0].jobs_failed, 1);

    // K = 1 with the fallback: the control plane moves it to on-demand
    // when the machine's shutting-down event arrives.
    let k1 = Policy::standard()
        .into_iter()
        .find(|p| p.name == "studio-k1")
        .unwrap();
    let (report, outcomes) = simulate(&two_jobs(k1)).await.unwrap();
    let a = &outcomes[0].jobs[0];
    assert_eq!(a.state, JobState::Finished);
    assert!(
        a.events
            .iter()
            .any(|e| e.reason.contains("moving to on-demand pool")),
        "{:?}",
        a.events
    );
    assert_eq!(a.plan.cloud, Cloud::Ec2);
    assert!(report.policies[0].on_demand_cost_usd > 0.0);
}

/// The same two jobs on the local backend, with real worker processes:
/// the first worker's machine gets its spot notice while job `a` runs;
/// a second worker takes both. `a` holds until the test opens its gate,
/// after the notice ended attempt 1, so nothing races the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_replayed_on_the_local_backend_takes_the_same_path() {
    let (_, sim) = simulate(&two_jobs(studio_policy())).await.unwrap();
    let simulated: Vec<(Vec<JobState>, u32)> =
        sim[0].jobs.iter().map(|j| (path(j), j.attempt)).collect();

    let w = LocalWorld::default().await;
    let (ctx, artifacts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let project = tempfile::tempdir().unwrap();
    let gate = project.path().join("gate");
    let ws = project.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(
        ws.join("a.py"),
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\nprint('a done')\n",
    )
    .unwrap();
    std::fs::write(ws.join("b.py"), "print('b done')\n").unwrap();
    let tar = studio_core::workspace::pack_dir(&ws, 1 << 20).unwrap();
    let wsref = artifacts.put_workspace(&tar).await.unwrap();
    let mut a = JobBuilder::new("job-000000")
        .workspace(wsref.clone())
        .args(&[gate.to_str().unwrap()])
        .spec();
    a.entrypoint = "a.py".into();
    let mut b = JobBuilder::new("job-000001").workspace(wsref).spec();
    b.entrypoint = "b.py".into();
    for (n, job) in [a, b].iter().enumerate() {
        studio_core::handlers::submit(&ctx, &format!("m{n}"), &job.to_json())
            .await
            .unwrap();
    }
    let pool = ctx
        .store
        .get_job(&job_id("job-000000"))
        .await
        .unwrap()
        .unwrap()
        .pool;
    let pool = ctx
        .store
        .get_pool(&pool)
        .await
        .unwrap()
        .unwrap()
        .group_key();
    let work = w.dir.path().join("jobs");

    let md = MetadataStandIn::start().await;
    let mut cfg = quick_worker_config(&pool, &studio_tests::instance("w-1"), work.clone());
    cfg.notice = Arc::new(Ec2Metadata {
        base: md.url.clone(),
    });
    cfg.notice_every = Duration::from_millis(100);
    let (c, art) = (ctx.clone(), artifacts.clone());
    let (_stop1, rx1) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(async move { run_worker(&c, art.as_ref(), &cfg, rx1).await });
    eventually("job a to run on w-1", Duration::from_secs(60), async || {
        let j = ctx
            .store
            .get_job(&job_id("job-000000"))
            .await
            .unwrap()
            .unwrap();
        (j.state == JobState::Running).then_some(())
    })
    .await;
    md.set_terminate(true);
    let exit = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, WorkerExit::Preempted);
    std::fs::write(&gate, "").unwrap();

    let cfg = quick_worker_config(&pool, &studio_tests::instance("w-2"), work);
    let (c, art) = (ctx.clone(), artifacts.clone());
    let (stop2, rx2) = tokio::sync::watch::channel(false);
    let second = tokio::spawn(async move { run_worker(&c, art.as_ref(), &cfg, rx2).await });
    let local = eventually("both jobs to end", Duration::from_secs(120), async || {
        let mut out = Vec::new();
        for id in ["job-000000", "job-000001"] {
            let j = ctx.store.get_job(&job_id(id)).await.unwrap().unwrap();
            if !j.state.is_terminal() {
                return None;
            }
            out.push((path(&j), j.attempt));
        }
        Some(out)
    })
    .await;
    stop2.send(true).unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(
        local, simulated,
        "local (left) and simulated (right) job paths"
    );
    let log =
        String::from_utf8(artifacts.read_log(&job_id("job-000000"), 0).await.unwrap()).unwrap();
    assert!(log.contains("a done"), "{log}");
}
