//! The four handlers and the worker's claim rules, on the real local backend
//! (SQLite, processes as instances), with time from a manual clock.

use std::time::Duration;
use studio_core::clock::Clock;
use studio_core::handlers::{
    self, cancel, claim_work, cleanup, handle_interruption, scale, submit, CancelOutcome, Claim,
    HandlerError, InstanceEvent, InstanceEventKind, InterruptionOutcome, RequeueOutcome, Settings,
    SubmitOutcome,
};
use studio_core::job::JobState;
use studio_core::pool::PoolState;
use studio_core::ports::{Fleet, JobStore, PortError, WorkQueue};
use studio_tests::{instance, job_id, JobBuilder, JobPool, LocalWorld};

fn spot_warning(event_id: &str, inst: &str) -> InstanceEvent {
    InstanceEvent {
        event_id: event_id.into(),
        instance: instance(inst),
        kind: InstanceEventKind::SpotWarning,
        machine_uid: None,
        at: None,
    }
}

/// The machine's `shutting-down` state-change event.
fn shutting_down(event_id: &str, inst: &str) -> InstanceEvent {
    InstanceEvent {
        event_id: event_id.into(),
        instance: instance(inst),
        kind: InstanceEventKind::Gone {
            state: "shutting-down".into(),
        },
        machine_uid: None,
        at: None,
    }
}

#[tokio::test]
async fn submit_creates_the_job_the_pool_the_work_item_and_one_worker() {
    let w = LocalWorld::default().await;
    let out = submit(&w.be.ctx, "m-1", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    assert_eq!(out, SubmitOutcome::Created(job_id("j1")));

    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 1));
    let pool = w.be.store.get_pool(&job.pool).await.unwrap().unwrap();
    assert_eq!((pool.state, pool.target), (PoolState::Live, 1));
    let depth =
        w.be.queue
            .depth(&w.be.ctx.settings.work_queue(&job.pool))
            .await
            .unwrap();
    assert_eq!((depth.visible, depth.in_flight), (1, 0));
    let instances = w.be.fleet.instances(&job.pool).await.unwrap();
    assert_eq!(
        instances.len(),
        1,
        "the target is raised at once, not on the next schedule"
    );
    assert_eq!(
        w.be.fleet.live_pids().unwrap().len(),
        1,
        "a real process was started"
    );
}

#[tokio::test]
async fn the_same_message_twice_makes_one_job_and_one_run() {
    let w = LocalWorld::default().await;
    let body = JobBuilder::new("j1").json();
    assert_eq!(
        submit(&w.be.ctx, "m-1", &body).await.unwrap(),
        SubmitOutcome::Created(job_id("j1"))
    );
    assert_eq!(
        submit(&w.be.ctx, "m-1", &body).await.unwrap(),
        SubmitOutcome::Duplicate(job_id("j1"))
    );
    assert_eq!(w.be.store.list_jobs(None, &[]).await.unwrap().len(), 1);

    // The redelivery may have sent a second item; only one of them runs.
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let first = w.receive(&q).await.unwrap();
    let second = w.receive(&q).await.unwrap();
    assert!(matches!(
        claim_work(&w.be.ctx, &instance("w-1"), &first)
            .await
            .unwrap(),
        Claim::Run(_)
    ));
    match claim_work(&w.be.ctx, &instance("w-2"), &second)
        .await
        .unwrap()
    {
        Claim::Drop(why) => assert!(why.contains("duplicate delivery"), "{why}"),
        other => panic!("second item must not run: {other:?}"),
    }
}

#[tokio::test]
async fn a_message_without_job_id_uses_the_message_id_as_its_key() {
    let w = LocalWorld::default().await;
    let mut spec = JobBuilder::new("ignored").spec();
    spec.job_id = None;
    let a = submit(&w.be.ctx, "abc-123", &spec.to_json()).await.unwrap();
    let b = submit(&w.be.ctx, "abc-123", &spec.to_json()).await.unwrap();
    assert_eq!(a, SubmitOutcome::Created(job_id("m-abc-123")));
    assert_eq!(b, SubmitOutcome::Duplicate(job_id("m-abc-123")));
}

#[tokio::test]
async fn a_job_id_reused_for_a_different_request_is_rejected_for_good() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m-1", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let e = submit(
        &w.be.ctx,
        "m-2",
        &JobBuilder::new("j1").args(&["--other"]).json(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HandlerError::IdReused(_)), "{e}");
    assert!(!e.is_retryable());
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert!(job.spec.args.is_empty(), "the first request stands");
}

#[tokio::test]
async fn a_poison_submit_message_goes_to_the_dlq_and_writes_nothing() {
    let w = LocalWorld::default().await;
    let q = w.be.ctx.settings.submit_queue.clone();
    w.be.queue
        .send(
            &q,
            &[
                r#"{"version":1,"cpu":8}"#.to_string(),
                JobBuilder::new("good").json(),
            ],
        )
        .await
        .unwrap();
    let report = w.be.driver().tick().await.unwrap();
    assert_eq!(
        report.submitted, 1,
        "the good message is not held back by the bad one"
    );
    assert_eq!(report.rejected.len(), 1);
    let dead = w.be.queue.peek(&studio_local::queue::dlq_name(&q)).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].0.contains("\"cpu\""));
    assert!(
        dead[0]
            .1
            .as_deref()
            .unwrap()
            .contains("not a valid SubmitJob message"),
        "{:?}",
        dead[0].1
    );
    assert_eq!(
        w.be.queue.depth(&q).await.unwrap().total(),
        0,
        "not retried in a loop"
    );
    let jobs = w.be.store.list_jobs(None, &[]).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, job_id("good"));
}

#[tokio::test]
async fn a_fixed_pool_keeps_its_size() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").workers(3).json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    assert_eq!(w.be.fleet.instances(&pool).await.unwrap().len(), 3);
    assert_eq!(scale(&w.be.ctx).await.unwrap(), vec![(pool.clone(), 3)]);
}

#[tokio::test]
async fn an_auto_pool_starts_at_one_and_grows_while_work_waits_up_to_the_cap() {
    let w = LocalWorld::default().await; // cap 3
    submit(&w.be.ctx, "m0", &JobBuilder::new("j0").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j0").await;
    assert_eq!(w.be.store.get_pool(&pool).await.unwrap().unwrap().target, 1);
    for i in 1..6 {
        submit(
            &w.be.ctx,
            &format!("m{i}"),
            &JobBuilder::new(&format!("j{i}")).json(),
        )
        .await
        .unwrap();
    }
    assert_eq!(w.be.store.get_pool(&pool).await.unwrap().unwrap().target, 3);
    assert_eq!(
        scale(&w.be.ctx).await.unwrap(),
        vec![(pool.clone(), 3)],
        "capped"
    );
    w.be.fleet.reconcile().unwrap();
    assert_eq!(w.be.fleet.instances(&pool).await.unwrap().len(), 3);
}

/// Scaling records what it saw on the pool (the chart of `studio ui`): one
/// sample per `pool_sample_every` however often it runs, the machines
/// there, the work waiting; the oldest go beyond `SAMPLES_KEPT`, and each
/// sample stays a short array in the record.
#[tokio::test]
async fn scaling_samples_the_pool_at_most_once_a_period_and_keeps_the_newest() {
    let w = LocalWorld::default().await; // cap 3
    for i in 0..6 {
        submit(
            &w.be.ctx,
            &format!("m{i}"),
            &JobBuilder::new(&format!("j{i}")).json(),
        )
        .await
        .unwrap();
    }
    let pool = w.be.store_job_pool("j0").await;
    scale(&w.be.ctx).await.unwrap();
    scale(&w.be.ctx).await.unwrap();
    let samples = |p: studio_core::pool::Pool| p.samples;
    let first = samples(w.be.store.get_pool(&pool).await.unwrap().unwrap());
    assert_eq!(first.len(), 1, "one sample within a period: {first:?}");
    let every = w.be.ctx.settings.pool_sample_every;
    w.clock.advance(every);
    w.be.fleet.reconcile().unwrap();
    scale(&w.be.ctx).await.unwrap();
    let s = samples(w.be.store.get_pool(&pool).await.unwrap().unwrap());
    assert_eq!(s.len(), 2);
    let last = s[1];
    assert_eq!(
        (last.target, last.actual, last.visible),
        (3, 3, 6),
        "{last:?}"
    );
    assert_eq!(last.at, w.clock.now());
    for _ in 0..studio_core::pool::SAMPLES_KEPT + 5 {
        w.clock.advance(every);
        scale(&w.be.ctx).await.unwrap();
    }
    let p = w.be.store.get_pool(&pool).await.unwrap().unwrap();
    assert_eq!(p.samples.len(), studio_core::pool::SAMPLES_KEPT);
    assert_eq!(
        p.samples.last().unwrap().at,
        w.clock.now(),
        "the newest kept"
    );
    assert!(p
        .samples
        .windows(2)
        .all(|w| w[1].at.since(w[0].at) == every));
    let bytes = serde_json::to_string(&p.samples).unwrap().len();
    assert!(
        bytes < 40 * studio_core::pool::SAMPLES_KEPT,
        "{bytes} bytes of samples"
    );
}

/// GIVEN a job running on w-1, WHEN a spot warning for w-1 arrives (twice),
/// THEN the job stays with its worker, which saves and hands it back (the
/// warning is recorded); WHEN the machine then shuts down (twice), THEN the
/// job is queued as attempt 2 once, with a new work item.
#[tokio::test]
async fn a_spot_warning_leaves_the_worker_its_grace_then_the_job_runs_again_once() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let item = w.receive(&q).await.unwrap();
    assert!(matches!(
        claim_work(&w.be.ctx, &instance("w-1"), &item)
            .await
            .unwrap(),
        Claim::Run(_)
    ));
    w.be.queue.ack(&q, &item.receipt).await.unwrap();

    for _ in 0..2 {
        let out = handle_interruption(&w.be.ctx, &spot_warning("ev-0", "w-1"))
            .await
            .unwrap();
        assert_eq!(out, InterruptionOutcome::Warned(vec![job_id("j1")]));
    }
    let warned = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((warned.state, warned.attempt), (JobState::Running, 1));
    assert_eq!(warned.warned_at, Some(w.clock.now()));
    w.clock.advance(Duration::from_secs(5));
    scale(&w.be.ctx).await.unwrap();
    assert_eq!(
        w.be.store
            .get_job(&job_id("j1"))
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Running,
        "the sweep leaves a warned job to its worker within the grace"
    );

    let out = handle_interruption(&w.be.ctx, &shutting_down("ev-1", "w-1"))
        .await
        .unwrap();
    assert_eq!(
        out,
        InterruptionOutcome::Handled(vec![(job_id("j1"), RequeueOutcome::Requeued(2))])
    );
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempt, job.instance.clone()),
        (JobState::Queued, 2, None)
    );
    let path: Vec<_> = job.events.iter().map(|e| e.to).collect();
    assert_eq!(
        path,
        [
            JobState::Queued,
            JobState::Running,
            JobState::Interrupted,
            JobState::Queued
        ]
    );
    assert_eq!(job.events[2].by, "interruption:ev-1");
    assert_eq!(job.attempts[0].outcome, Some(JobState::Interrupted));
    assert_eq!(
        w.be.queue.depth(&q).await.unwrap().visible,
        1,
        "the next attempt's item"
    );

    let again = handle_interruption(&w.be.ctx, &shutting_down("ev-1", "w-1"))
        .await
        .unwrap();
    assert_eq!(again, InterruptionOutcome::NoJobOnInstance);
    let after = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(
        after.version, job.version,
        "a repeated event changes nothing"
    );
    assert_eq!(w.be.queue.depth(&q).await.unwrap().visible, 1);

    let next = w.receive(&q).await.unwrap();
    match claim_work(&w.be.ctx, &instance("w-2"), &next)
        .await
        .unwrap()
    {
        Claim::Run(job) => assert_eq!(
            (job.attempt, job.instance.clone()),
            (2, Some(instance("w-2")))
        ),
        other => panic!("attempt 2 should run: {other:?}"),
    }
}

#[tokio::test]
async fn rebalance_advice_and_strangers_change_nothing() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let item = w
        .receive(&w.be.ctx.settings.work_queue(&pool))
        .await
        .unwrap();
    claim_work(&w.be.ctx, &instance("w-1"), &item)
        .await
        .unwrap();
    let before = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();

    let rebalance = InstanceEvent {
        event_id: "ev-r".into(),
        instance: instance("w-1"),
        kind: InstanceEventKind::Rebalance,
        machine_uid: None,
        at: None,
    };
    assert_eq!(
        handle_interruption(&w.be.ctx, &rebalance).await.unwrap(),
        InterruptionOutcome::Advisory
    );
    assert_eq!(
        handle_interruption(&w.be.ctx, &spot_warning("ev-x", "i-not-ours"))
            .await
            .unwrap(),
        InterruptionOutcome::NoJobOnInstance
    );
    let after = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(
        (after.state, after.version),
        (JobState::Running, before.version)
    );
}

#[tokio::test]
async fn a_job_out_of_attempts_fails_with_the_reason() {
    let w = LocalWorld::new(Settings {
        max_attempts: 2,
        ..Settings::default()
    })
    .await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    for (n, inst) in [(1, "w-1"), (2, "w-2")] {
        let item = w.receive(&q).await.unwrap();
        assert!(matches!(
            claim_work(&w.be.ctx, &instance(inst), &item).await.unwrap(),
            Claim::Run(_)
        ));
        w.be.queue.ack(&q, &item.receipt).await.unwrap();
        let out = handle_interruption(&w.be.ctx, &shutting_down(&format!("ev-{n}"), inst))
            .await
            .unwrap();
        if n == 2 {
            let InterruptionOutcome::Handled(v) = out else {
                panic!("{out:?}")
            };
            assert!(matches!(&v[0].1, RequeueOutcome::Failed(_)));
        }
    }
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts.len(), 2);
    let reason = job.reason.unwrap();
    assert!(reason.contains("interrupted on attempt 2 of 2"), "{reason}");
    assert!(reason.contains("instance w-2 shutting-down"), "{reason}");
    assert_eq!(
        w.be.queue.depth(&q).await.unwrap().total(),
        0,
        "no further attempt queued"
    );
}

/// The job record is the lock: a worker that keeps writing its heartbeat
/// keeps its attempt however long it runs; one that stops is taken over by
/// the sweep as the next attempt.
#[tokio::test]
async fn a_silent_worker_is_taken_over_by_the_sweep_and_a_beating_one_never() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let item = w.receive(&q).await.unwrap();
    claim_work(&w.be.ctx, &instance("w-1"), &item)
        .await
        .unwrap();
    w.be.queue.ack(&q, &item.receipt).await.unwrap();

    // Beating every 20 s for an hour: never taken over.
    for _ in 0..180 {
        w.clock.advance(Duration::from_secs(20));
        let mut j = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
        j.heartbeat_at = Some(w.clock.now());
        w.be.store.update_job(&j).await.unwrap();
        scale(&w.be.ctx).await.unwrap();
    }
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Running, 1));

    // Silent for longer than the bound (30 s): the next attempt.
    w.clock.advance(Duration::from_secs(31));
    scale(&w.be.ctx).await.unwrap();
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert_eq!(job.reason.as_deref(), Some("no heartbeat from w-1 for 31s"));
    let next = w.receive(&q).await.unwrap();
    assert!(matches!(
        claim_work(&w.be.ctx, &instance("w-2"), &next)
            .await
            .unwrap(),
        Claim::Run(_)
    ));
}

#[tokio::test]
async fn a_stale_item_for_an_earlier_attempt_is_dropped() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let item = w.receive(&q).await.unwrap();
    claim_work(&w.be.ctx, &instance("w-1"), &item)
        .await
        .unwrap();
    handle_interruption(&w.be.ctx, &shutting_down("ev", "w-1"))
        .await
        .unwrap();
    // The first item was never acked (its worker died); it comes back later.
    w.clock.advance(Duration::from_secs(31));
    let mut got = Vec::new();
    while let Some(m) = w.receive(&q).await {
        got.push(claim_work(&w.be.ctx, &instance("w-2"), &m).await.unwrap());
    }
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .any(|c| matches!(c, Claim::Drop(why) if why.contains("stale"))),
        "{got:?}"
    );
    assert_eq!(got.iter().filter(|c| matches!(c, Claim::Run(_))).count(), 1);
}

#[tokio::test]
async fn cleanup_waits_out_the_grace_then_deletes_group_processes_and_queue() {
    let w = LocalWorld::default().await; // grace 60 s
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").workers(2).json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    assert_eq!(w.be.fleet.live_pids().unwrap().len(), 2);

    // Busy: never deleted, however long.
    w.clock.advance(Duration::from_secs(3600));
    assert!(cleanup(&w.be.ctx).await.unwrap().deleted.is_empty());

    let item = w.receive(&q).await.unwrap();
    claim_work(&w.be.ctx, &instance("w-1"), &item)
        .await
        .unwrap();
    handlers::mutate_job(w.be.store.as_ref(), &job_id("j1"), |j| {
        j.complete(
            Some(0),
            None,
            studio_core::clock::Clock::now(&w.clock),
            "test",
        )
        .unwrap();
        handlers::Step::Write(())
    })
    .await
    .unwrap();
    w.be.queue.ack(&q, &item.receipt).await.unwrap();

    let first = cleanup(&w.be.ctx).await.unwrap();
    assert_eq!(first.waiting, vec![pool.clone()], "idle from now on");
    w.clock.advance(Duration::from_secs(59));
    assert!(
        cleanup(&w.be.ctx).await.unwrap().deleted.is_empty(),
        "still in grace"
    );
    w.clock.advance(Duration::from_secs(2));
    assert_eq!(
        cleanup(&w.be.ctx).await.unwrap().deleted,
        vec![pool.clone()]
    );

    assert_eq!(
        w.be.store.get_pool(&pool).await.unwrap().unwrap().state,
        PoolState::Deleted
    );
    assert!(w.be.fleet.instances(&pool).await.unwrap().is_empty());
    assert!(
        w.be.fleet.live_pids().unwrap().is_empty(),
        "the processes are gone"
    );
    assert!(matches!(
        w.be.queue.send(&q, &["x".into()]).await,
        Err(PortError::NotFound(_))
    ));
    assert!(
        cleanup(&w.be.ctx).await.unwrap().deleted.is_empty(),
        "idempotent"
    );
}

/// Submit meets a pool that cleanup is deleting: it asks to be retried, and
/// the retry (a redelivery of the same message) brings the pool back.
#[tokio::test]
async fn a_submit_racing_cleanup_is_retried_and_nothing_is_lost() {
    let w = LocalWorld::new(Settings {
        pool_grace: Duration::ZERO,
        ..Settings::default()
    })
    .await;
    submit(&w.be.ctx, "m1", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool_key = w.be.store_job_pool("j1").await;
    handlers::cancel(
        w.be.ctx.store.as_ref(),
        w.be.ctx.clock.as_ref(),
        &job_id("j1"),
        "test",
    )
    .await
    .unwrap();
    // Cleanup has claimed the pool but not yet deleted it.
    let mut pool = w.be.store.get_pool(&pool_key).await.unwrap().unwrap();
    pool.state = PoolState::Deleting;
    w.be.store.update_pool(&pool).await.unwrap();

    let e = submit(&w.be.ctx, "m2", &JobBuilder::new("j2").json())
        .await
        .unwrap_err();
    assert!(
        matches!(e, HandlerError::PoolBusy(_)) && e.is_retryable(),
        "{e}"
    );
    let j2 = w.be.store.get_job(&job_id("j2")).await.unwrap().unwrap();
    assert_eq!(j2.state, JobState::Queued);

    // Cleanup finishes; it does not touch j2's pool while j2 is active.
    cleanup(&w.be.ctx).await.unwrap();
    assert_eq!(
        w.be.store.get_pool(&pool_key).await.unwrap().unwrap().state,
        PoolState::Deleted
    );
    // The redelivered message completes the submission.
    assert_eq!(
        submit(&w.be.ctx, "m2", &JobBuilder::new("j2").json())
            .await
            .unwrap(),
        SubmitOutcome::Duplicate(job_id("j2"))
    );
    let pool = w.be.store.get_pool(&pool_key).await.unwrap().unwrap();
    assert_eq!((pool.state, pool.target), (PoolState::Live, 1));
    // Revived as a new generation: new names for its queue and group.
    assert_eq!(pool.generation, 1);
    assert_ne!(pool.group_key(), pool_key);
    let item = w
        .receive(&w.be.ctx.settings.work_queue(&pool.group_key()))
        .await
        .expect("j2's work item");
    assert!(
        matches!(claim_work(&w.be.ctx, &instance("w-9"), &item).await.unwrap(), Claim::Run(j) if j.id == job_id("j2"))
    );
}

#[tokio::test]
async fn a_cancelled_job_is_never_run() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    assert_eq!(
        cancel(
            w.be.ctx.store.as_ref(),
            w.be.ctx.clock.as_ref(),
            &job_id("j1"),
            "cli:me"
        )
        .await
        .unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        cancel(
            w.be.ctx.store.as_ref(),
            w.be.ctx.clock.as_ref(),
            &job_id("j1"),
            "cli:me"
        )
        .await
        .unwrap(),
        CancelOutcome::AlreadyEnded(JobState::Cancelled)
    );
    assert_eq!(
        cancel(
            w.be.ctx.store.as_ref(),
            w.be.ctx.clock.as_ref(),
            &job_id("nope"),
            "cli:me"
        )
        .await
        .unwrap(),
        CancelOutcome::NotFound
    );
    let pool = w.be.store_job_pool("j1").await;
    let item = w
        .receive(&w.be.ctx.settings.work_queue(&pool))
        .await
        .unwrap();
    match claim_work(&w.be.ctx, &instance("w-1"), &item)
        .await
        .unwrap()
    {
        Claim::Drop(why) => assert_eq!(why, "job already cancelled"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_worker_that_dies_is_reported_and_its_job_requeued_by_the_driver() {
    let w = LocalWorld::default().await;
    w.be.queue
        .send(
            &w.be.ctx.settings.submit_queue,
            &[JobBuilder::new("j1").json()],
        )
        .await
        .unwrap();
    let d = w.be.driver();
    assert_eq!(d.tick().await.unwrap().submitted, 1);
    let pool = w.be.store_job_pool("j1").await;
    let inst = w.be.fleet.instances(&pool).await.unwrap().remove(0).id;
    let item = w
        .receive(&w.be.ctx.settings.work_queue(&pool))
        .await
        .unwrap();
    claim_work(&w.be.ctx, &inst, &item).await.unwrap();

    let pids = w.be.fleet.live_pids().unwrap();
    // SAFETY: the `sleep` process standing in for worker `inst`.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let r = d.tick().await.unwrap();
        if r.instances_gone > 0 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(report.instances_gone, 1);
    let job = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert!(job.attempts[0].outcome == Some(JobState::Interrupted));
    // The dead worker is replaced. (Its never-acked item still counts as in
    // flight until its lease lapses, so an auto pool may briefly run one more.)
    let now = w.be.fleet.instances(&pool).await.unwrap();
    assert!(!now.is_empty(), "replaced");
    assert!(
        now.iter().all(|i| i.id != inst),
        "the dead one is not counted"
    );
}

#[tokio::test]
async fn a_job_that_waited_past_its_lifetime_is_dropped_with_the_reason() {
    let w = LocalWorld::default().await;
    let mut spec = JobBuilder::new("old").spec();
    spec.lifetime_secs = Some(3600);
    submit(&w.be.ctx, "m", &spec.to_json()).await.unwrap();
    let mut young = JobBuilder::new("young").spec();
    young.lifetime_secs = Some(3 * 3600);
    submit(&w.be.ctx, "m2", &young.to_json()).await.unwrap();
    w.clock.advance(Duration::from_secs(2 * 3600));
    let pool = w.be.store_job_pool("old").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let first = w.receive(&q).await.unwrap();
    match claim_work(&w.be.ctx, &instance("w-1"), &first)
        .await
        .unwrap()
    {
        Claim::Drop(why) => assert_eq!(
            why,
            "waited 2h, longer than its lifetime of 1h without starting"
        ),
        other => panic!("{other:?}"),
    }
    let old = w.be.store.get_job(&job_id("old")).await.unwrap().unwrap();
    assert_eq!(old.state, JobState::Cancelled);
    assert_eq!(
        old.reason.as_deref(),
        Some("waited 2h, longer than its lifetime of 1h without starting")
    );
    let second = w.receive(&q).await.unwrap();
    assert!(
        matches!(
            claim_work(&w.be.ctx, &instance("w-1"), &second)
                .await
                .unwrap(),
            Claim::Run(_)
        ),
        "within its lifetime"
    );
}

/// `--lifetime` bounds the wait for a first start: the sweep drops a job
/// that never started (no worker has to receive its item), and a job that
/// ran and was interrupted after its lifetime runs again instead.
#[tokio::test]
async fn lifetime_bounds_only_the_wait_for_a_first_start_and_needs_no_worker() {
    let w = LocalWorld::default().await;
    for id in ["never", "ran"] {
        let mut spec = JobBuilder::new(id).spec();
        spec.lifetime_secs = Some(60);
        submit(&w.be.ctx, id, &spec.to_json()).await.unwrap();
    }
    let pool = w.be.store_job_pool("ran").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let (a, b) = (w.receive(&q).await.unwrap(), w.receive(&q).await.unwrap());
    let ran = if a.body.contains("\"ran\"") { a } else { b };
    claim_work(&w.be.ctx, &instance("w-1"), &ran).await.unwrap();
    w.be.queue.ack(&q, &ran.receipt).await.unwrap();

    w.clock.advance(Duration::from_secs(61));
    handle_interruption(&w.be.ctx, &shutting_down("ev", "w-1"))
        .await
        .unwrap();
    scale(&w.be.ctx).await.unwrap();
    let never = w.be.store.get_job(&job_id("never")).await.unwrap().unwrap();
    assert_eq!(never.state, JobState::Cancelled);
    assert_eq!(
        never.reason.as_deref(),
        Some("waited 1m 1s, longer than its lifetime of 1m without starting")
    );
    assert_eq!(never.events.last().unwrap().by, "scale");
    let ran = w.be.store.get_job(&job_id("ran")).await.unwrap().unwrap();
    assert_eq!(
        (ran.state, ran.attempt),
        (JobState::Queued, 2),
        "retried, not dropped"
    );
    let next = loop {
        let m = w.receive(&q).await.expect("attempt 2's item");
        if let Claim::Run(j) = claim_work(&w.be.ctx, &instance("w-2"), &m).await.unwrap() {
            break j;
        }
    };
    assert_eq!((next.id.as_str(), next.attempt), ("ran", 2));
}

// ---------------------------------------------------------------- issue 9

#[tokio::test]
async fn a_pools_active_jobs_are_read_without_decoding_the_ended_ones() {
    // GIVEN a pool with one queued job and an ended job whose record no
    // longer decodes (standing in for thousands of finished ones)
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m-1", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    w.be.db
        .conn()
        .execute(
            "INSERT INTO jobs (id, pool, state, instance, version, created_at, record)
             VALUES ('old', ?1, 'finished', NULL, 3, 0, 'not a record')",
            [pool.as_str()],
        )
        .unwrap();
    // WHEN the handlers ask for the pool's active jobs
    let active =
        w.be.store
            .list_jobs(Some(&pool), &JobState::ACTIVE)
            .await
            .unwrap();
    // THEN the ended row is filtered out by SQL, never decoded
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, job_id("j1"));
    scale(&w.be.ctx).await.unwrap();
    cleanup(&w.be.ctx).await.unwrap();
    let plan: String = w
        .be
        .db
        .conn()
        .query_row(
            "EXPLAIN QUERY PLAN SELECT record FROM jobs WHERE pool = ?1 AND state IN ('queued', 'running')",
            [pool.as_str()],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("USING INDEX"), "{plan}");
}

#[tokio::test]
async fn a_wall_clock_step_neither_expires_nor_lengthens_a_lease() {
    use std::sync::Arc;
    use studio_core::clock::{ManualClock, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let wall = ManualClock::new(Timestamp(1_800_000_000_000));
    let lease = ManualClock::new(Timestamp(5_000));
    let launcher: studio_local::fleet::Launcher =
        Arc::new(|_: &_, _: &_| std::process::Command::new("true"));
    let be = studio_local::LocalBackend::open_with_clocks(
        dir.path(),
        Settings::default(),
        Arc::new(wall.clone()),
        Arc::new(lease.clone()),
        launcher,
    )
    .await
    .unwrap();
    be.queue.ensure_queue("q").await.unwrap();
    be.queue.send("q", &["item".into()]).await.unwrap();
    let first = be
        .queue
        .receive("q", 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // NTP steps the wall clock an hour forward: the lease still holds.
    wall.advance(Duration::from_secs(3600));
    let none = be
        .queue
        .receive("q", 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert!(none.is_empty(), "a wall-clock step expires no lease");
    assert_eq!(be.queue.depth("q").await.unwrap().in_flight, 1);
    // 31 s of real (monotonic) time later, it has lapsed.
    lease.advance(Duration::from_secs(31));
    let again = be
        .queue
        .receive("q", 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(again[0].message_id, first[0].message_id);
}

#[tokio::test]
async fn a_job_written_with_its_submit_message_is_finished_by_the_driver() {
    use studio_core::contract::SubmitJob;
    use studio_core::job::Job;
    use studio_core::pool::PoolSpec;
    use studio_core::ports::Created;
    // GIVEN the job and its message written together, as `studio run` does
    let w = LocalWorld::default().await;
    let body = JobBuilder::new("j1").json();
    let spec = SubmitJob::from_json(&body).unwrap();
    let plan = w.be.ctx.planner.plan(&spec).unwrap();
    let pool = PoolSpec::for_job(&spec, &plan).key();
    let job = Job::new(
        job_id("j1"),
        spec,
        plan,
        pool.clone(),
        studio_core::clock::Clock::now(&w.clock),
        "cli:ada",
    );
    assert!(matches!(w.be.submit(&job, &body).unwrap(), Created::New(_)));
    // A second identical submission writes nothing more.
    assert!(matches!(
        w.be.submit(&job, &body).unwrap(),
        Created::Existing(_)
    ));
    assert_eq!(
        w.be.queue
            .depth(&w.be.ctx.settings.submit_queue)
            .await
            .unwrap()
            .total(),
        1
    );
    // WHEN the driver handles the message
    let r = w.be.driver().tick().await.unwrap();
    // THEN the existing job is taken as it is and the steps are finished
    assert_eq!(r.submitted, 1);
    assert!(r.rejected.is_empty());
    let stored = w.be.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.attempt), (JobState::Queued, 1));
    assert_eq!(stored.events.len(), 1, "no second 'submitted' event");
    let depth =
        w.be.queue
            .depth(&w.be.ctx.settings.work_queue(&pool))
            .await
            .unwrap();
    assert_eq!(depth.visible, 1, "one work item");
    assert_eq!(w.be.fleet.instances(&pool).await.unwrap().len(), 1);
}

/// A queued job whose work item the queue gave up on (dead-lettered after
/// repeated failed claims) is found by the sweep and gets its item again;
/// after `MAX_RESENDS` it fails with the reason instead of waiting forever.
/// Other jobs' items, and dead-lettered items of jobs that moved on, are
/// left alone.
#[tokio::test]
async fn a_dead_lettered_item_is_sent_again_then_its_job_fails() {
    let w = LocalWorld::default().await;
    for id in ["stuck", "fine"] {
        submit(&w.be.ctx, id, &JobBuilder::new(id).json())
            .await
            .unwrap();
    }
    let pool = w.be.store_job_pool("stuck").await;
    let q = w.be.ctx.settings.work_queue(&pool);
    let dlq = studio_core::ports::dead_letter_queue(&q);
    // The queue gives up on stuck's item; fine's stays.
    let give_up = async || {
        let mut items = Vec::new();
        while let Some(m) = w.receive(&q).await {
            items.push(m);
        }
        for m in items {
            if m.body.contains(r#""stuck""#) {
                w.be.queue
                    .dead_letter(&q, &m, "claims kept failing")
                    .await
                    .unwrap();
            } else {
                w.be.queue
                    .release(&q, &m.receipt, Duration::ZERO)
                    .await
                    .unwrap();
            }
        }
    };
    for n in 1..=handlers::MAX_RESENDS {
        give_up().await;
        assert_eq!(w.be.queue.depth(&dlq).await.unwrap().total(), 1);
        scale(&w.be.ctx).await.unwrap();
        let job = w.be.store.get_job(&job_id("stuck")).await.unwrap().unwrap();
        assert_eq!((job.state, job.items_resent), (JobState::Queued, n));
        assert_eq!(
            w.be.queue.depth(&dlq).await.unwrap().total(),
            0,
            "taken out"
        );
        assert_eq!(w.be.queue.depth(&q).await.unwrap().total(), 2, "sent again");
    }
    give_up().await;
    scale(&w.be.ctx).await.unwrap();
    let job = w.be.store.get_job(&job_id("stuck")).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.reason.as_deref(),
        Some("its work item was dead-lettered 4 times: no worker could claim it")
    );
    assert_eq!(w.be.queue.depth(&dlq).await.unwrap().total(), 0);
    let fine = w.be.store.get_job(&job_id("fine")).await.unwrap().unwrap();
    assert_eq!((fine.state, fine.items_resent), (JobState::Queued, 0));
    assert_eq!(
        w.be.queue.depth(&q).await.unwrap().total(),
        1,
        "fine's item only"
    );
}

/// A deployment without GCP settings refuses a GCE job at submit, with the
/// reason, before anything is created (the function dead-letters it: the
/// error is not retryable).
#[tokio::test]
async fn a_cloud_the_deployment_does_not_run_is_refused_before_anything_is_made() {
    use studio_core::resources::Cloud;
    let w = LocalWorld::new(Settings {
        clouds: Some(vec![Cloud::Local, Cloud::Ec2, Cloud::Ec2spot]),
        ..Settings::default()
    })
    .await;
    let mut spec = JobBuilder::new("g1").spec();
    spec.cloud = Cloud::Gcspot;
    let err = submit(&w.be.ctx, "m-g", &spec.to_json()).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::CloudUnavailable(Cloud::Gcspot)),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("STUDIO_GCP_PROJECT"), "{err}");
    assert!(w.be.store.get_job(&job_id("g1")).await.unwrap().is_none());
    assert!(w.be.store.live_pools().await.unwrap().is_empty());
}

/// Two processes raise the same group's target at the same moment (the
/// CLI's submit and the driver do): one worker is launched, not one each.
/// Each round lowers the target to 0, then two backends on the same home
/// set it to 1 at once, from two threads released together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_raising_a_target_at_once_launch_one_worker() {
    use std::sync::{Arc, Barrier};
    let w = LocalWorld::default().await;
    let launcher: studio_local::fleet::Launcher = Arc::new(
        |_: &studio_core::ids::PoolKey, _: &studio_core::ids::InstanceId| {
            let mut c = std::process::Command::new("sleep");
            c.arg("600");
            c
        },
    );
    let other = studio_local::LocalBackend::open(
        w.dir.path(),
        w.be.ctx.settings.clone(),
        Arc::new(w.clock.clone()),
        launcher,
    )
    .await
    .unwrap();
    submit(&w.be.ctx, "m1", &JobBuilder::new("race").json())
        .await
        .unwrap();
    let key = w.be.store_job_pool("race").await;
    let gk =
        w.be.store
            .get_pool(&key)
            .await
            .unwrap()
            .unwrap()
            .group_key();
    let running = || -> i64 {
        w.be.db
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM instances WHERE pool = ?1 AND state = 'running'",
                [gk.as_str()],
                |r| r.get(0),
            )
            .unwrap()
    };
    let handle = tokio::runtime::Handle::current();
    for round in 0..20 {
        w.be.fleet.set_target(&gk, 0, None).await.unwrap();
        assert_eq!(running(), 0, "round {round}: all stopped");
        let barrier = Arc::new(Barrier::new(2));
        let raise = |fleet: Arc<studio_local::fleet::ProcessFleet>| {
            let (barrier, gk, handle) = (barrier.clone(), gk.clone(), handle.clone());
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                handle.block_on(fleet.set_target(&gk, 1, None))
            })
        };
        let (a, b) = (raise(w.be.fleet.clone()), raise(other.fleet.clone()));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(running(), 1, "round {round}: one launch for one gap");
    }
    for pid in other.fleet.live_pids().unwrap_or_default() {
        // SAFETY: the `sleep` processes this test started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}
