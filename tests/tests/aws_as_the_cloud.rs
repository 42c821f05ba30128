//! The AWS adapters and the real handler and worker code, behind the
//! fidelity proxy ([`studio_tests::fidelity`]): moto with the documented AWS
//! behaviours it lacks (depth counters that lag sends, `QueueDeletedRecently`,
//! groups pending delete, the 12-hour visibility cap, `SetDesiredCapacity`
//! above `MaxSize` refused, `403` for a missing S3 key without
//! `s3:ListBucket`, groups that terminate unprotected instances). Each
//! scenario failed on the code before the liveness, reconcile and naming
//! changes; the closing note of issue 8 lists how.

use std::sync::Arc;
use std::time::Duration;
use studio_aws::config::AwsConfig;
use studio_aws::lambda;
use studio_aws::s3::S3Artifacts;
use studio_core::clock::{Clock, ManualClock, Timestamp};
use studio_core::contract::{SubmitJob, WorkspaceRef};
use studio_core::handlers::{self, Ctx};
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::ports::ArtifactStore;
use studio_core::resources::Cloud;
use studio_core::worker::{run_worker, WorkerConfig, WorkerExit};
use studio_tests::fidelity::Fidelity;
use studio_tests::{eventually, job_id, JobBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running worker task.
struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<WorkerExit, handlers::HandlerError>>,
}

impl Worker {
    /// Stops it (it may have left already) and checks it ended cleanly.
    async fn stop(self) -> WorkerExit {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap()
    }
}

/// moto's EC2 tag store is not thread-safe: a `CreateTags` during another
/// request that reads tags fails that request with a 500 ("dictionary
/// changed size during iteration"). Workers here write their liveness tag,
/// so the scenarios of this file take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct World {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    ctx: Ctx,
    clock: ManualClock,
    sdk: aws_config::SdkConfig,
    cfg: AwsConfig,
    fid: Fidelity,
    artifacts: Arc<S3Artifacts>,
    work: tempfile::TempDir,
}

async fn world() -> World {
    let turn = TURN.lock().await;
    // Starts at the wall clock: moto stamps launch times with it, and the
    // sweep compares them with this clock.
    let clock = ManualClock::new(studio_core::clock::SystemClock.now());
    let (cfg, sdk, fid) = studio_tests::fidelity_deployment(clock.clone()).await;
    let ctx = lambda::context(&cfg, &sdk, Arc::new(clock.clone()));
    let artifacts = Arc::new(S3Artifacts::from_sdk(&sdk, &cfg.bucket));
    World {
        _turn: turn,
        ctx,
        clock,
        sdk,
        cfg,
        fid,
        artifacts,
        work: tempfile::tempdir().unwrap(),
    }
}

/// A workspace with `main.py` (and `requirements.txt` when given).
async fn workspace(w: &World, main: &str, requirements: Option<&str>) -> WorkspaceRef {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), main).unwrap();
    if let Some(r) = requirements {
        std::fs::write(dir.path().join("requirements.txt"), r).unwrap();
    }
    let tar = studio_core::workspace::pack_dir(dir.path(), 1 << 20).unwrap();
    w.artifacts.put_workspace(&tar).await.unwrap()
}

fn ec2_job(id: &str, ws: WorkspaceRef) -> SubmitJob {
    let mut spec = JobBuilder::new(id).workspace(ws).spec();
    spec.cloud = Cloud::Ec2;
    spec.entrypoint = "main.py".into();
    spec
}

impl World {
    async fn job(&self, id: &str) -> Job {
        self.ctx.store.get_job(&job_id(id)).await.unwrap().unwrap()
    }

    async fn pool(&self, id: &str) -> studio_core::pool::Pool {
        let key = self.job(id).await.pool;
        self.ctx.store.get_pool(&key).await.unwrap().unwrap()
    }

    fn group_name(&self, gk: &PoolKey) -> String {
        format!("{}-{gk}", self.cfg.prefix)
    }

    async fn group(&self, gk: &PoolKey) -> aws_sdk_autoscaling::types::AutoScalingGroup {
        aws_sdk_autoscaling::Client::new(&self.sdk)
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(self.group_name(gk))
            .send()
            .await
            .unwrap()
            .auto_scaling_groups()[0]
            .clone()
    }

    /// The machines the group launched (moto starts them at once).
    async fn machines(&self, gk: &PoolKey) -> Vec<InstanceId> {
        self.ctx
            .fleet
            .instances(gk)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    fn worker_config(&self, gk: &PoolKey, instance: &InstanceId) -> WorkerConfig {
        studio_tests::quick_worker_config(gk, instance, self.work.path().join(instance.as_str()))
    }

    /// The data of the pool group's launch template (its one version).
    async fn launch_template_data(
        &self,
        gk: &PoolKey,
    ) -> aws_sdk_ec2::types::ResponseLaunchTemplateData {
        aws_sdk_ec2::Client::new(&self.sdk)
            .describe_launch_template_versions()
            .launch_template_name(self.group_name(gk))
            .send()
            .await
            .unwrap()
            .launch_template_versions()[0]
            .launch_template_data()
            .unwrap()
            .clone()
    }

    /// Starts a worker; the sender stops it.
    fn start_worker(&self, cfg: WorkerConfig) -> Worker {
        let (stop, rx) = watch::channel(false);
        let (ctx, a) = (self.ctx.clone(), self.artifacts.clone());
        let task = tokio::spawn(async move { run_worker(&ctx, a.as_ref(), &cfg, rx).await });
        Worker { stop, task }
    }

    /// A second worker, not a member of the group, polling the pool's queue
    /// from now on: it would take over any claim that lapsed. It never
    /// leaves idle (it has no machine to take out of the group).
    fn start_rival(&self, gk: &PoolKey) -> Worker {
        let mut cfg = self.worker_config(gk, &InstanceId::new("i-0second").unwrap());
        cfg.idle_timeout = Duration::from_secs(100 * 3600);
        self.start_worker(cfg)
    }

    /// Waits until `machine`'s worker told the fleet it lives at `at` or later.
    async fn until_seen(&self, machine: &InstanceId, at: Timestamp) {
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk);
        eventually(
            "the worker to be seen",
            Duration::from_secs(10),
            async || {
                let out = ec2
                    .describe_instances()
                    .instance_ids(machine.as_str())
                    .send()
                    .await
                    .unwrap();
                let seen = out
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .flat_map(|i| i.tags())
                    .find(|t| t.key() == Some(studio_aws::fleet::SEEN_TAG))
                    .and_then(|t| t.value()?.parse::<i64>().ok());
                (seen >= Some(at.0)).then_some(())
            },
        )
        .await
    }

    async fn until_claimed(&self, id: &str, by: &InstanceId) {
        eventually("the claim", Duration::from_secs(30), async || {
            let j = self.job(id).await;
            (j.state == JobState::Running && j.instance.as_ref() == Some(by)).then_some(())
        })
        .await
    }

    async fn until_ended(&self, id: &str, limit: Duration) -> Job {
        eventually(&format!("job {id} to end"), limit, async || {
            let j = self.job(id).await;
            j.state.is_terminal().then_some(j)
        })
        .await
    }
}

/// The most common flow on a real account: a job whose environment takes
/// longer to build than the work item's lease. Before: the item came back to
/// a second worker under the same message id, was taken for a lapsed lease,
/// and the job was requeued while its first run went on. (It also failed at
/// once: the first attempt probed for a checkpoint, and the missing key is a
/// 403 under least privilege.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtualenv_build_outlasting_the_lease_finishes_in_attempt_one() {
    let w = world().await;
    let ws = workspace(&w, "print('trained')\n", Some("\n")).await;
    handlers::submit(&w.ctx, "m1", &ec2_job("venv", ws).to_json())
        .await
        .unwrap();
    let gk = w.pool("venv").await.group_key();
    let machine = w.machines(&gk).await.remove(0);
    let mut cfg = w.worker_config(&gk, &machine);
    // `python -m venv` alone takes seconds: several of these 1 s leases.
    cfg.lease = Duration::from_secs(1);
    cfg.env_root = w.work.path().join("venvs");
    let first = w.start_worker(cfg);
    w.until_claimed("venv", &machine).await;
    let rival = w.start_rival(&gk);

    let job = w.until_ended("venv", Duration::from_secs(90)).await;
    first.stop().await;
    rival.stop().await;
    assert_eq!(
        (job.state, job.attempt, job.attempts.len()),
        (JobState::Finished, 1, 1),
        "{:?} {:?}",
        job.reason,
        job.events
    );
    assert_eq!(job.attempts[0].instance, machine);
    let log = String::from_utf8(w.artifacts.read_log(&job.id, 0).await.unwrap()).unwrap();
    assert!(log.contains("built the python environment"), "{log}");
    assert!(log.contains("trained"), "{log}");
}

/// Run a job, let the pool's only worker leave idle (it takes its machine
/// out of the group with decrement), submit another 6 minutes later. Before:
/// the pool record still said target 1, the policy computed 1 again, the
/// group was never raised, and the job waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_after_the_idle_worker_left_still_runs() {
    let w = world().await;
    let ws = workspace(&w, "print('hello')\n", None).await;
    handlers::submit(&w.ctx, "m1", &ec2_job("first", ws.clone()).to_json())
        .await
        .unwrap();
    let gk = w.pool("first").await.group_key();
    let machine = w.machines(&gk).await.remove(0);
    let worker = w.start_worker(w.worker_config(&gk, &machine));
    assert_eq!(
        w.until_ended("first", Duration::from_secs(60)).await.state,
        JobState::Finished
    );
    // Quiet minutes: the worker's idle timeout (5 min) passes. The clock
    // moves on until the worker leaves: it starts its idle time when it has
    // recorded the end, which on a loaded machine may come after a first
    // advance.
    // (At most twice: past 15 minutes the sweep below would retire the
    // next machine as silent.)
    let mut task = worker.task;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut advances = 0;
    let exit = loop {
        if advances < 2 {
            w.clock
                .advance(Duration::from_secs(if advances == 0 { 360 } else { 310 }));
            advances += 1;
        }
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut task).await {
            break done.unwrap().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle worker did not leave"
        );
    };
    assert_eq!(exit, WorkerExit::Idle);
    assert_eq!(w.group(&gk).await.desired_capacity(), Some(0));

    handlers::submit(&w.ctx, "m2", &ec2_job("second", ws).to_json())
        .await
        .unwrap();
    assert_eq!(
        w.group(&gk).await.desired_capacity(),
        Some(1),
        "submit raised the group from what it is, for the item it sent"
    );
    // And the scheduled reconcile agrees (the depth counter still lags).
    handlers::scale(&w.ctx).await.unwrap();
    assert_eq!(w.group(&gk).await.desired_capacity(), Some(1));
    let machine = eventually("a new machine", Duration::from_secs(10), async || {
        w.machines(&gk).await.into_iter().find(|m| *m != machine)
    })
    .await;
    let worker = w.start_worker(w.worker_config(&gk, &machine));
    let job = w.until_ended("second", Duration::from_secs(60)).await;
    worker.stop().await;
    assert_eq!((job.state, job.attempt), (JobState::Finished, 1));
}

/// A 13-hour job (on the manual clock) keeps its claim: SQS refuses to keep
/// a message invisible past 12 hours from its receipt, so a claim held by a
/// queue lease would lapse and a second worker would take the job over. Its
/// machine, busy, is also never taken by the group's own rebalancing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirteen_hour_job_keeps_its_claim_and_its_machine() {
    let w = world().await;
    let ws = workspace(
        &w,
        "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\nprint('done after 13 hours')\n",
        None,
    )
    .await;
    handlers::submit(&w.ctx, "m1", &ec2_job("long", ws).to_json())
        .await
        .unwrap();
    let gk = w.pool("long").await.group_key();
    let machine = w.machines(&gk).await.remove(0);
    let mut cfg = w.worker_config(&gk, &machine);
    cfg.seen_every = Duration::from_millis(100);
    let go = cfg
        .work_root
        .join("long")
        .join("attempt-1")
        .join("workspace")
        .join("go");
    let first = w.start_worker(cfg);
    w.until_claimed("long", &machine).await;
    let rival = w.start_rival(&gk);

    // The group rebalances while the job runs: the busy machine stays.
    eventually(
        "the busy machine to be protected",
        Duration::from_secs(10),
        async || {
            w.group(&gk)
                .await
                .instances()
                .iter()
                .any(|i| {
                    i.instance_id() == Some(machine.as_str())
                        && i.protected_from_scale_in() == Some(true)
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        !w.fid
            .group_rebalances(&w.group_name(&gk))
            .await
            .contains(&machine.as_str().to_string()),
        "a busy machine was taken by the group"
    );

    // Thirteen hours in half-hour steps; the sweep runs after each.
    for _ in 0..26 {
        w.clock.advance(Duration::from_secs(1800));
        let now = w.clock.now();
        eventually("the heartbeat", Duration::from_secs(10), async || {
            (w.job("long").await.heartbeat_at >= Some(now)).then_some(())
        })
        .await;
        w.until_seen(&machine, now).await;
        handlers::scale(&w.ctx).await.unwrap();
        let j = w.job("long").await;
        assert_eq!(
            (j.state, j.attempt),
            (JobState::Running, 1),
            "{:?}",
            j.events
        );
    }
    std::fs::write(&go, b"").unwrap();
    let job = w.until_ended("long", Duration::from_secs(30)).await;
    // (The first worker may have left already: 13 idle hours passed.)
    first.stop().await;
    rival.stop().await;
    assert_eq!(
        (job.state, job.attempt, job.attempts.len()),
        (JobState::Finished, 1, 1)
    );
    assert_eq!(job.attempts[0].instance, machine);
}

/// A pool revived right after cleanup: SQS refuses the deleted queue's name
/// for 60 s (and loses what is sent to it), Auto Scaling keeps the deleted
/// group's name for minutes. A warm function container that cached the old
/// queue's URL submits too. Before: the create failed or was taken for
/// "exists", the group could not be raised, and a send was lost.
#[tokio::test]
async fn a_pool_revived_after_cleanup_gets_new_names_and_loses_nothing() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    // A second function process with its own queue-URL cache.
    let warm = lambda::context(&w.cfg, &w.sdk, Arc::new(w.clock.clone()));
    handlers::submit(&warm, "m0", &ec2_job("j0", ws.clone()).to_json())
        .await
        .unwrap();
    let old = w.pool("j0").await;
    assert_eq!(old.generation, 0);
    handlers::cancel(
        w.ctx.store.as_ref(),
        w.ctx.clock.as_ref(),
        &job_id("j0"),
        "test",
    )
    .await
    .unwrap();
    handlers::cleanup(&w.ctx).await.unwrap();
    w.clock.advance(Duration::from_secs(61));
    assert_eq!(handlers::cleanup(&w.ctx).await.unwrap().deleted.len(), 1);

    // At once, well inside SQS's 60 s and the group's pending delete.
    handlers::submit(&w.ctx, "m1", &ec2_job("j1", ws.clone()).to_json())
        .await
        .unwrap();
    handlers::submit(&warm, "m2", &ec2_job("j2", ws).to_json())
        .await
        .unwrap();
    let new = w.pool("j1").await;
    assert_eq!(new.generation, 1);
    let gk = new.group_key();
    assert_ne!(gk, old.group_key());
    assert_eq!(w.group(&gk).await.desired_capacity(), Some(1));
    // Both items are in the new generation's queue.
    let q = w.ctx.settings.work_queue(&gk);
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = w
            .ctx
            .queue
            .receive(&q, 10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        got.extend(m.into_iter().map(|m| {
            studio_core::contract::WorkItem::from_json(&m.body)
                .unwrap()
                .job_id
        }));
    }
    got.sort();
    assert_eq!(got, vec![job_id("j1"), job_id("j2")]);
}

/// Few Auto Scaling calls per job, and a group's limits follow the
/// configuration. Before: every submit called CreateLaunchTemplate and
/// CreateAutoScalingGroup, and MaxSize kept its first value.
#[tokio::test]
async fn submits_create_a_pool_once_and_its_maximum_follows_the_configuration() {
    let mut w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    for i in 0..5 {
        handlers::submit(
            &w.ctx,
            &format!("m{i}"),
            &ec2_job(&format!("j{i}"), ws.clone()).to_json(),
        )
        .await
        .unwrap();
    }
    assert_eq!(w.fid.calls("CreateLaunchTemplate"), 1);
    assert_eq!(w.fid.calls("CreateAutoScalingGroup"), 1);
    assert_eq!(w.fid.calls("CreateQueue"), 2, "the work queue and its DLQ");
    let gk = w.pool("j0").await.group_key();
    assert_eq!(w.group(&gk).await.max_size(), Some(5));

    // STUDIO_MAX_WORKERS raised to 8, then lowered to 2 below the desired
    // capacity: the live group follows, in calls AWS accepts.
    w.ctx.settings.max_auto_workers = 8;
    for _ in 0..5 {
        handlers::scale(&w.ctx).await.unwrap();
    }
    let g = w.group(&gk).await;
    assert_eq!((g.max_size(), g.desired_capacity()), (Some(8), Some(5)));
    w.ctx.settings.max_auto_workers = 2;
    handlers::scale(&w.ctx).await.unwrap();
    let g = w.group(&gk).await;
    assert_eq!((g.max_size(), g.desired_capacity()), (Some(2), Some(2)));
    assert_eq!(w.fid.calls("CreateAutoScalingGroup"), 1);
}

/// Bounded: a fixed size above the deployment's cap is refused at submit
/// (dead-lettered with the cap in the reason), before any pool is made.
#[tokio::test]
async fn a_fixed_size_above_the_cap_is_refused_at_submit() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    let mut spec = ec2_job("big", ws);
    spec.num_workers = Some(100_000);
    let e = handlers::submit(&w.ctx, "m", &spec.to_json())
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert_eq!(
        e.to_string(),
        "--num-workers 100000 is above this deployment's cap of 5 workers (STUDIO_MAX_WORKERS)"
    );
    assert!(w.ctx.store.get_job(&job_id("big")).await.unwrap().is_none());
    assert_eq!(w.fid.calls("CreateAutoScalingGroup"), 0);
}

/// The root volume's device name and minimum size come from the image
/// (`/dev/xvda` on Amazon Linux, `/dev/sda1` on Ubuntu and most Deep
/// Learning AMIs): a mapping for a device the image does not boot from
/// would add a second, unused disk and leave the root at its default size.
/// An `--hdd` below the image's root snapshot is raised to it.
#[tokio::test]
async fn the_root_volume_follows_the_image() {
    let w = world().await;
    let ec2 = aws_sdk_ec2::Client::new(&w.sdk);
    let image = ec2
        .describe_images()
        .image_ids(&w.cfg.worker_ami)
        .send()
        .await
        .unwrap()
        .images()[0]
        .clone();
    let device = image.root_device_name().unwrap().to_string();
    let image_gib = image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(device.as_str()))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_size())
        .unwrap_or(0);
    let ws = workspace(&w, "print('hi')\n", None).await;
    for (id, asked) in [("small", 1u64), ("big", 500)] {
        let mut spec = ec2_job(id, ws.clone());
        spec.resources.hdd_gib = Some(asked);
        handlers::submit(&w.ctx, id, &spec.to_json()).await.unwrap();
        let data = w.launch_template_data(&w.pool(id).await.group_key()).await;
        let disks = data.block_device_mappings();
        assert_eq!(disks.len(), 1, "{disks:?}");
        assert_eq!(disks[0].device_name(), Some(device.as_str()));
        let want = asked.max(image_gib.max(0) as u64) as i32;
        assert_eq!(disks[0].ebs().unwrap().volume_size(), Some(want), "{id}");
    }
    assert!(
        image_gib > 1,
        "the image's root snapshot ({image_gib} GiB) raises --hdd 1g"
    );
    // Without --hdd: room for an environment (an image's 8 GiB fills with
    // one CUDA wheel), more with GPUs.
    for (id, gpus, want) in [
        ("default", 0, studio_aws::fleet::DEFAULT_ROOT_GIB),
        ("default-gpu", 1, studio_aws::fleet::DEFAULT_ROOT_GIB_GPU),
    ] {
        let mut spec = ec2_job(id, ws.clone());
        spec.resources.gpus = gpus;
        handlers::submit(&w.ctx, id, &spec.to_json()).await.unwrap();
        let data = w.launch_template_data(&w.pool(id).await.group_key()).await;
        let disks = data.block_device_mappings();
        let want = want.max(image_gib.max(0) as u64) as i32;
        assert_eq!(disks[0].ebs().unwrap().volume_size(), Some(want), "{id}");
    }
}

/// A machine whose worker never started (a failed bootstrap) or died for
/// good costs money and counts as capacity: the sweep takes it out of the
/// group once it has been silent past the bound, and the reconcile raises the
/// group again for the work there is. A machine whose worker lives stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_without_a_live_worker_is_retired_and_replaced() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    let mut spec = ec2_job("pair", ws);
    spec.num_workers = Some(2);
    handlers::submit(&w.ctx, "m", &spec.to_json())
        .await
        .unwrap();
    let gk = w.pool("pair").await.group_key();
    let machines = w.machines(&gk).await;
    assert_eq!(machines.len(), 2);
    let (live, silent) = (machines[0].clone(), machines[1].clone());
    // The job runs on the silent machine: its worker writes the job's
    // heartbeat (below, by hand) but cannot write the machine's liveness
    // mark (a permission refused), so the fleet calls the machine silent.
    let queue = w.ctx.settings.work_queue(&gk);
    let item = w
        .ctx
        .queue
        .receive(&queue, 1, Duration::from_secs(60), Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert!(matches!(
        handlers::claim_work(&w.ctx, &silent, &item).await.unwrap(),
        handlers::Claim::Run(_)
    ));
    let beat = async || {
        let now = w.clock.now();
        handlers::mutate_job(w.ctx.store.as_ref(), &job_id("pair"), |j| {
            j.heartbeat_at = Some(now);
            handlers::Step::Write(())
        })
        .await
        .unwrap();
    };
    let mut cfg = w.worker_config(&gk, &live);
    cfg.seen_every = Duration::from_millis(100);
    let worker = w.start_worker(cfg);
    w.until_seen(&live, w.clock.now()).await;

    // Just launched: both within the bound.
    handlers::scale(&w.ctx).await.unwrap();
    assert_eq!(w.machines(&gk).await.len(), 2);

    // Silent past the bound, but its job beats: kept.
    w.clock.advance(Duration::from_secs(16 * 60));
    w.until_seen(&live, w.clock.now()).await;
    beat().await;
    handlers::scale(&w.ctx).await.unwrap();
    let kept = w.machines(&gk).await;
    assert!(
        kept.contains(&silent) && kept.contains(&live),
        "a machine whose job beats is kept: {kept:?}"
    );

    // Its job's heartbeat stale too: retired (and the job runs again).
    w.clock.advance(Duration::from_secs(16 * 60));
    w.until_seen(&live, w.clock.now()).await;
    handlers::scale(&w.ctx).await.unwrap();
    let now_in_group = w.machines(&gk).await;
    assert!(now_in_group.contains(&live), "{now_in_group:?}");
    assert!(!now_in_group.contains(&silent), "{now_in_group:?}");
    assert_eq!(
        w.group(&gk).await.desired_capacity(),
        Some(2),
        "the fixed pool is raised back to its size"
    );
    worker.stop().await;
}

/// Graviton pools boot an arm64 image: with `STUDIO_WORKER_AMI_ARM64` set
/// the launch template of an `--arch arm64` job names it (and an x86_64
/// job's the x86_64 image); without it the job is refused at submit with
/// the reason, before any record or resource exists (an x86_64 image on an
/// arm64 machine never starts a worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm64_job_gets_the_arm64_image_or_a_clear_refusal() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    let mut arm = ec2_job("graviton", ws.clone());
    arm.arch = Some(studio_core::catalog::Arch::Arm64);

    let refused = handlers::submit(&w.ctx, "graviton", &arm.to_json())
        .await
        .unwrap_err();
    assert!(!refused.is_retryable(), "{refused}");
    assert!(
        refused.to_string().contains("no arm64 worker image"),
        "{refused}"
    );
    assert!(w
        .ctx
        .store
        .get_job(&job_id("graviton"))
        .await
        .unwrap()
        .is_none());

    // An arm64 image moto serves (it launches the group's machines from it).
    let arm_image = aws_sdk_ec2::Client::new(&w.sdk)
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .find(|i| i.architecture().map(|a| a.as_str()) == Some("arm64"))
        .and_then(|i| i.image_id())
        .expect("moto serves an arm64 image")
        .to_string();
    let mut cfg = w.cfg.clone();
    cfg.worker_ami_arm64 = Some(arm_image.clone());
    let ctx = lambda::context(&cfg, &w.sdk, Arc::new(w.clock.clone()));
    let x86 = ec2_job("intel", ws);
    for (id, spec, image) in [
        ("graviton", &arm, arm_image.as_str()),
        ("intel", &x86, w.cfg.worker_ami.as_str()),
    ] {
        handlers::submit(&ctx, id, &spec.to_json()).await.unwrap();
        let data = w.launch_template_data(&w.pool(id).await.group_key()).await;
        assert_eq!(data.image_id(), Some(image), "{id}");
    }
}

/// Launches that fail are not silent: with the group's launches failing as
/// a Spot vCPU quota of 0 makes them fail on AWS (the desired capacity is
/// taken, no instance comes, a `Failed` scaling activity says why), the
/// sweep records the cloud's reason on the pool, where `studio status`
/// shows it beside a queued job; once machines come, it is cleared.
#[tokio::test]
async fn a_launch_that_fails_is_recorded_on_its_pool_with_the_clouds_reason() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    handlers::submit(&w.ctx, "m1", &ec2_job("fails-1", ws.clone()).to_json())
        .await
        .unwrap();
    let gk = w.pool("fails-1").await.group_key();
    let quota = "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to";
    w.fid.fail_launches(&w.group_name(&gk), Some(quota));
    handlers::submit(&w.ctx, "m2", &ec2_job("fails-2", ws).to_json())
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(61));
    handlers::scale(&w.ctx).await.unwrap();
    let pool = w.pool("fails-1").await;
    let trouble = pool
        .launch_trouble
        .expect("the failed launch is on the pool");
    assert!(trouble.reason.contains("vCPU limit of 0"), "{trouble:?}");
    assert_eq!(
        w.machines(&gk).await.len(),
        1,
        "the second machine never came"
    );

    w.fid.fail_launches(&w.group_name(&gk), None);
    w.clock.advance(Duration::from_secs(61));
    handlers::scale(&w.ctx).await.unwrap();
    assert_eq!(w.machines(&gk).await.len(), 2);
    assert_eq!(
        w.pool("fails-1").await.launch_trouble,
        None,
        "cleared once machines come"
    );
}

/// A machine whose bootstrap failed is launched fine (the group's
/// activities say nothing) and never runs a worker: when the sweep retires
/// it, it reads the machine's console, and the failure the bootstrap wrote
/// there (`studio-bootstrap: ...`) becomes the pool's launch trouble, held
/// while the replacement runs no job either, and cleared once the job ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bootstrap_is_read_from_the_console_and_held_on_the_pool() {
    let w = world().await;
    let ws = workspace(&w, "print('hi')\n", None).await;
    let mut spec = ec2_job("boot", ws);
    spec.num_workers = Some(1);
    handlers::submit(&w.ctx, "m", &spec.to_json())
        .await
        .unwrap();
    let gk = w.pool("boot").await.group_key();
    let first = w.machines(&gk).await.remove(0);
    let said = "cannot read releases/studio-0ab1 from the bucket studio-artifacts with this machine's role";
    w.fid.set_console(
        first.as_str(),
        &format!(
            "[    0.000000] Linux version 6.1.0 (builder@al2023)\r\n\
             cloud-init[1203]: Cloud-init v. 22.2.2 running 'modules:final'\r\n\
             cloud-init[1203]: curl: (22) The requested URL returned error: 403\r\n\
             cloud-init[1203]: studio-bootstrap: {said}\r\n\
             cloud-init[1203]: 2026-12-07 04:00:00,000 - cc_scripts_user.py[WARNING]: Failed to run module scripts_user\r\n"
        ),
    );

    // Silent past the bound: retired, and the pool says why.
    w.clock.advance(Duration::from_secs(16 * 60));
    handlers::scale(&w.ctx).await.unwrap();
    assert!(!w.machines(&gk).await.contains(&first), "retired");
    let trouble = w.pool("boot").await.launch_trouble.expect("recorded");
    assert!(trouble.bootstrap, "{trouble:?}");
    assert_eq!(
        trouble.reason,
        format!("a machine's bootstrap failed ({first} was retired): {said}")
    );

    // The replacement launched fine: the group has no complaint, but no
    // job has run, so the reason holds.
    w.clock.advance(Duration::from_secs(61));
    handlers::scale(&w.ctx).await.unwrap();
    let next = w.machines(&gk).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        w.pool("boot").await.launch_trouble.map(|t| t.reason),
        Some(trouble.reason.clone()),
        "held while nothing runs"
    );

    // The replacement's worker runs the job: cleared.
    let worker = w.start_worker(w.worker_config(&gk, &next[0]));
    eventually("the job runs", Duration::from_secs(60), async || {
        w.job("boot").await.state.is_terminal().then_some(())
    })
    .await;
    worker.stop().await;
    w.clock.advance(Duration::from_secs(61));
    handlers::scale(&w.ctx).await.unwrap();
    assert_eq!(
        w.pool("boot").await.launch_trouble,
        None,
        "cleared once a job ran and none waits"
    );
}
