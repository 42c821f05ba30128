//! The worker on a machine: interruption notices from the metadata services
//! (a stand-in speaking IMDSv2 and GCE shapes), checkpoint hand-over between
//! attempts, and the checks on the bootstrap script. Scripts are real
//! (`examples/train.py` under python3); the store and queue are the local
//! backend's.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use studio_core::clock::Clock;
use studio_core::handlers::{submit, Ctx};
use studio_core::ids::InstanceId;
use studio_core::job::JobState;
use studio_core::notice::{Ec2Metadata, GceMetadata, NoNotice, Notice, NoticeSource};
use studio_core::ports::{ArtifactStore, Fleet};
use studio_core::worker::{run_worker, JobUsers, WorkerConfig, WorkerExit};
use studio_tests::{eventually, job_id, JobBuilder, JobPool, LocalWorld, MetadataStandIn};

fn config(
    w: &LocalWorld,
    pool: &studio_core::ids::PoolKey,
    instance: &str,
    notice: Arc<dyn NoticeSource>,
) -> WorkerConfig {
    worker_config(&w.dir.path().join("jobs"), pool, instance, notice)
}

fn worker_config(
    work_root: &Path,
    pool: &studio_core::ids::PoolKey,
    instance: &str,
    notice: Arc<dyn NoticeSource>,
) -> WorkerConfig {
    WorkerConfig {
        pool: pool.clone(),
        instance: InstanceId::new(instance).unwrap(),
        lease: Duration::from_secs(30),
        beat_every: Duration::from_millis(200),
        poll_wait: Duration::from_millis(100),
        heartbeat: Duration::from_millis(100),
        seen_every: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        term_grace: Duration::from_secs(5),
        work_root: work_root.to_path_buf(),
        python: "python3".into(),
        notice,
        notice_every: Duration::from_millis(100),
        // Long: the checkpoint seen after the notice is the one saved on the way out.
        checkpoint_every: Duration::from_secs(600),
        log_every: Duration::from_millis(100),
        progress_every: Duration::from_millis(100),
        env_root: work_root.join("envs"),
        uv: None,
        uv_env: studio_tests::uv_env(),
        job_users: None,
        metadata: Vec::new(),
        inputs: None,
        local_limits: false,
    }
}

#[tokio::test]
async fn the_metadata_clients_read_imdsv2_and_gce_notices() {
    let md = MetadataStandIn::start().await;
    let ec2 = Ec2Metadata {
        base: md.url.clone(),
    };
    let gce = GceMetadata {
        base: md.url.clone(),
    };
    assert_eq!(ec2.check().await, Notice::Clear);
    assert_eq!(gce.check().await, Notice::Clear);
    assert_eq!(ec2.zone().await.as_deref(), Some("us-east-1c"));
    assert_eq!(gce.zone().await.as_deref(), Some("us-central1-f"));
    md.set_rebalance(true);
    assert_eq!(ec2.check().await, Notice::Rebalance);
    md.set_terminate(true);
    assert!(
        matches!(ec2.check().await, Notice::Terminate(w) if w.contains("\"action\":\"terminate\""))
    );
    assert!(matches!(gce.check().await, Notice::Terminate(_)));
    let nowhere = Ec2Metadata {
        base: "http://127.0.0.1:9".into(),
    };
    assert_eq!(
        nowhere.check().await,
        Notice::Clear,
        "an unreachable service is no notice"
    );
}

/// GIVEN train.py running on w-1, WHEN the metadata service gives a spot
/// notice, THEN the script gets SIGTERM, its checkpoint is saved, the job is
/// queued as attempt 2 and w-1 leaves; a second worker resumes the epochs.
/// The same scenario runs on the local backend and on the AWS adapters.
async fn notice_then_resume(ctx: Ctx, artifacts: Arc<dyn ArtifactStore>, work_root: &Path) {
    // train.py holds after epoch 2 until the gate exists, which the test
    // creates once the notice has ended attempt 1: the notice never races
    // the script's end, however fast or slow the machine.
    let project = tempfile::tempdir().unwrap();
    let gate = project.path().join("gate");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let train = std::fs::read_to_string(examples.join("train.py")).unwrap();
    let lp = "while state[\"epoch\"] < args.epochs:\n";
    assert!(train.contains(lp), "train.py's epoch loop moved");
    let held = format!(
        "{lp}    while state[\"epoch\"] >= 2 and not os.path.exists({gate:?}):\n        time.sleep(0.1)\n"
    );
    let workspace = project.path().join("workspace");
    std::fs::create_dir(&workspace).unwrap();
    std::fs::write(workspace.join("train.py"), train.replacen(lp, &held, 1)).unwrap();
    let tar = studio_core::workspace::pack_dir(&workspace, 1 << 24).unwrap();
    let ws = artifacts.put_workspace(&tar).await.unwrap();
    let body = JobBuilder::new("train")
        .args(&["--epochs", "12", "--epoch-seconds", "0.3"])
        .workspace(ws)
        .json();
    submit(&ctx, "m", &body).await.unwrap();
    let pool = ctx
        .store
        .get_job(&job_id("train"))
        .await
        .unwrap()
        .unwrap()
        .pool;
    let log =
        async || String::from_utf8(artifacts.read_log(&job_id("train"), 0).await.unwrap()).unwrap();

    let md = MetadataStandIn::start().await;
    let (c, a) = (ctx.clone(), artifacts.clone());
    let cfg = worker_config(
        work_root,
        &pool,
        "w-1",
        Arc::new(Ec2Metadata {
            base: md.url.clone(),
        }),
    );
    let (_stop1, rx1) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(async move { run_worker(&c, a.as_ref(), &cfg, rx1).await });

    eventually("epoch 2", Duration::from_secs(30), async || {
        log().await.contains("epoch 2/12").then_some(())
    })
    .await;
    md.set_terminate(true);
    let noticed = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, WorkerExit::Preempted);
    std::fs::write(&gate, "").unwrap();
    let job = ctx.store.get_job(&job_id("train")).await.unwrap().unwrap();
    eprintln!("notice to job queued as attempt 2: {:?}", noticed.elapsed());
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert_eq!(job.attempts[0].outcome, Some(JobState::Interrupted));
    assert_eq!(
        job.attempts[0].zone.as_deref(),
        Some("us-east-1c"),
        "the zone the machine's metadata service gave"
    );
    assert!(
        job.reason
            .as_deref()
            .unwrap_or_default()
            .contains("spot instance-action"),
        "{:?}",
        job.reason
    );
    let text = log().await;
    assert!(
        text.contains("SIGTERM: checkpoint saved at epoch"),
        "{text}"
    );
    // The record names the checkpoint attempt 1 saved on its way out.
    let saved = job.checkpoint.clone().expect("checkpoint recorded");
    assert_eq!(saved.attempt, 1);
    let ckpt = artifacts
        .get_checkpoint(&job_id("train"), &saved)
        .await
        .expect("checkpoint uploaded");
    assert_eq!(saved.bytes, ckpt.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    studio_core::workspace::unpack(&ckpt, dir.path()).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("train.json")).unwrap())
            .unwrap();
    let saved_epoch = state["epoch"].as_u64().unwrap();
    assert!(saved_epoch >= 2, "{state}");
    // The interrupted attempt's partial outputs are kept under it.
    let first_outputs = job.attempts[0]
        .outputs
        .clone()
        .expect("attempt 1's outputs");
    let scratch = tempfile::tempdir().unwrap();
    let m1 = studio_core::outputs_store::manifest(
        artifacts.as_ref(),
        &job.id,
        &first_outputs,
        scratch.path(),
    )
    .await
    .unwrap();
    let paths: Vec<&str> = m1.files.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"model.bin") && paths.contains(&"config.json"),
        "{paths:?}"
    );
    assert!(paths.contains(&"results/epoch-002.json"), "{paths:?}");
    assert!(!paths.contains(&"results/epoch-012.json"), "{paths:?}");

    // A second machine, with no notice, takes the next attempt.
    let (c, a) = (ctx.clone(), artifacts.clone());
    let cfg = worker_config(work_root, &pool, "w-2", Arc::new(NoNotice));
    let (stop2, rx2) = tokio::sync::watch::channel(false);
    let second = tokio::spawn(async move { run_worker(&c, a.as_ref(), &cfg, rx2).await });
    let done = eventually("attempt 2 to finish", Duration::from_secs(60), async || {
        let j = ctx.store.get_job(&job_id("train")).await.unwrap().unwrap();
        j.state.is_terminal().then_some(j)
    })
    .await;
    stop2.send(true).unwrap();
    second.await.unwrap().unwrap();
    assert_eq!((done.state, done.attempt), (JobState::Finished, 2));
    let text = log().await;
    assert!(
        text.contains(&format!("resuming from checkpoint: epoch {saved_epoch}")),
        "{text}"
    );
    let after = text
        .split("[studio] --- attempt 2")
        .nth(1)
        .expect("attempt 2's output");
    assert!(
        !after.contains("epoch 1/12"),
        "attempt 2 did not start over: {after}"
    );
    assert!(text.contains("training done"), "{text}");

    // Attempt 2's outputs come back byte for byte; config.json, the same
    // in both attempts, was stored once.
    assert!(
        text.contains("[studio] outputs of attempt 2: ") && text.contains("1 already stored"),
        "{text}"
    );
    let last = done.attempts[1]
        .outputs
        .clone()
        .expect("attempt 2's outputs");
    let m2 =
        studio_core::outputs_store::manifest(artifacts.as_ref(), &done.id, &last, scratch.path())
            .await
            .unwrap();
    let dest = tempfile::tempdir().unwrap();
    let mut heard = 0;
    let pulled = studio_core::outputs_store::pull(
        artifacts.as_ref(),
        &done.id,
        &m2,
        dest.path(),
        &mut |_| heard += 1,
    )
    .await
    .unwrap();
    assert_eq!((pulled.len(), heard), (m2.files.len(), m2.files.len()));
    let produced = work_root.join(done.id.as_str()).join("attempt-2/outputs");
    for f in ["model.bin", "config.json", "results/epoch-012.json"] {
        assert_eq!(
            std::fs::read(dest.path().join(f)).unwrap(),
            std::fs::read(produced.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::metadata(dest.path().join("model.bin"))
            .unwrap()
            .len(),
        4 << 20
    );
    assert!(
        !dest.path().join("results/epoch-001.json").exists(),
        "each attempt's outputs are its own"
    );
    // A second pull downloads nothing.
    let again = studio_core::outputs_store::pull(
        artifacts.as_ref(),
        &done.id,
        &m2,
        dest.path(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(
        again
            .iter()
            .all(|p| matches!(p, studio_core::outputs_store::Pulled::Kept { .. })),
        "{again:?}"
    );
    // A damaged local copy is replaced.
    std::fs::write(dest.path().join("model.bin"), b"damaged").unwrap();
    let fixed = studio_core::outputs_store::pull(
        artifacts.as_ref(),
        &done.id,
        &m2,
        dest.path(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        fixed
            .iter()
            .filter(|p| matches!(p, studio_core::outputs_store::Pulled::Wrote { .. }))
            .count(),
        1
    );
    assert_eq!(
        std::fs::read(dest.path().join("model.bin")).unwrap(),
        std::fs::read(produced.join("model.bin")).unwrap()
    );
}

/// Checkpoints are never replaced and job files come back whole, on the
/// local directory and on S3.
#[tokio::test]
async fn artifact_stores_keep_checkpoints_and_job_files() {
    let w = LocalWorld::default().await;
    let job = job_id("files");
    studio_tests::artifacts::check_contract(w.be.artifacts.as_ref(), w.be.artifacts.as_ref(), &job)
        .await;
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let s3 = studio_aws::s3::S3Artifacts::from_sdk(&sdk, &cfg.bucket);
    studio_tests::artifacts::check_contract(&s3, &s3, &job).await;
}

/// S3: a file above the threshold goes up in parts, and a part that an
/// earlier, broken upload of the same content left is not sent again.
/// moto, like S3, refuses parts under 5 MiB (but the last) at completion;
/// the fidelity layer gives ListParts its documented shape.
#[tokio::test]
async fn s3_sends_large_files_in_parts_and_resumes_a_broken_upload() {
    use studio_aws::s3::{PutStats, S3Artifacts};
    let clock = studio_core::clock::ManualClock::new(studio_core::clock::SystemClock.now());
    let (cfg, sdk, fid) = studio_tests::fidelity_deployment(clock).await;
    let s3 = S3Artifacts::from_sdk(&sdk, &cfg.bucket).with_parts(5 << 20, 5 << 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    let content: Vec<u8> = (0..(12u32 << 20) + 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    let (sha, _) = studio_core::outputs::hash_file(&path).unwrap();
    let job = job_id("big");
    let key = format!("files/{job}/{sha}");

    // The machine died after part 1 of 3.
    let client = studio_aws::s3::client(&sdk);
    let up = client
        .create_multipart_upload()
        .bucket(&cfg.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    client
        .upload_part()
        .bucket(&cfg.bucket)
        .key(&key)
        .upload_id(up.upload_id().unwrap())
        .part_number(1)
        .body(content[..5 << 20].to_vec().into())
        .send()
        .await
        .unwrap();

    let stats = s3.put_file(&key, &path).await.unwrap();
    assert_eq!(
        stats,
        PutStats {
            parts: 3,
            reused: 1,
            present: false
        }
    );
    let back = dir.path().join("back.bin");
    studio_core::ports::ArtifactStore::get_blob(&s3, &job, &sha, &back)
        .await
        .unwrap();
    assert!(
        std::fs::read(&back).unwrap() == content,
        "the object is the file"
    );
    assert!(
        s3.put_file(&key, &path).await.unwrap().present,
        "stored once"
    );
    assert_eq!(
        fid.calls("UploadPart"),
        3,
        "1 broken, 2 to finish: none sent twice"
    );
}

/// A job with a known price on a manual clock: the budget stops it,
/// `cancelled` with the reason, after its outputs are saved; its cost is
/// the price times the time it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_the_job_cancelled_with_the_reason() {
    let w = LocalWorld::default().await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("spin.py"),
        [
            "import os, signal, sys, time",
            "def stop(*_):",
            "    out = os.environ['STUDIO_OUTPUT_DIR']",
            "    open(os.path.join(out, 'final.txt'), 'w').write('saved')",
            "    sys.exit(143)",
            "signal.signal(signal.SIGTERM, stop)",
            "print('spinning', flush=True)",
            "while True:",
            "    time.sleep(0.05)",
        ]
        .join("\n"),
    )
    .unwrap();
    let tar = studio_core::workspace::pack_dir(src.path(), 1 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let mut spec = JobBuilder::new("spin").workspace(ws).spec();
    spec.entrypoint = "spin.py".into();
    spec.max_cost_cents = Some(1);
    spec.settle_version();
    submit(&w.be.ctx, "m", &spec.to_json()).await.unwrap();
    // $3.60 an hour: one cent every ten seconds.
    studio_core::handlers::mutate_job(w.be.ctx.store.as_ref(), &job_id("spin"), |j| {
        j.plan.price_micro_usd_per_hour = 3_600_000;
        j.plan.market = studio_core::resources::Market::Spot;
        j.plan.spot_price_known = true;
        studio_core::handlers::Step::Write(())
    })
    .await
    .unwrap();
    let pool = w.be.store_job_pool("spin").await;
    let cfg = config(&w, &pool, "w-budget", Arc::new(NoNotice));
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let log = async || {
        String::from_utf8(w.be.artifacts.read_log(&job_id("spin"), 0).await.unwrap()).unwrap()
    };
    eventually("the script to run", Duration::from_secs(30), async || {
        log().await.contains("spinning").then_some(())
    })
    .await;
    let running =
        w.be.ctx
            .store
            .get_job(&job_id("spin"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.cost_micro_usd(w.clock.now()), 0);
    w.clock.advance(Duration::from_secs(4));
    assert_eq!(
        running.cost_micro_usd(w.clock.now()),
        4_000,
        "$0.004 after 4 s"
    );
    w.clock.advance(Duration::from_secs(7));
    let job = eventually("the budget stop", Duration::from_secs(30), async || {
        let j =
            w.be.ctx
                .store
                .get_job(&job_id("spin"))
                .await
                .unwrap()
                .unwrap();
        (j.state.is_terminal() && j.attempts[0].outputs.is_some()).then_some(j)
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    let reason = job.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("budget of $0.0100 reached: $0.0110 spent"),
        "{reason}"
    );
    // 11 s at $3.60/h, and no more once ended.
    w.clock.advance(Duration::from_secs(3600));
    assert_eq!(job.cost_micro_usd(w.clock.now()), 11_000);
    assert_eq!(job.attempts[0].price_basis(), "spot price when planned");
    assert_eq!(
        job.attempts[0].outputs.as_ref().map(|o| o.files),
        Some(1),
        "final.txt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_mid_job_hands_the_job_back_and_the_next_worker_resumes() {
    let w = LocalWorld::default().await;
    notice_then_resume(
        w.be.ctx.clone(),
        w.be.artifacts.clone(),
        &w.dir.path().join("jobs"),
    )
    .await;
}

/// The same on AWS: DynamoDB, SQS and S3 in `moto_server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_a_spot_notice_hands_the_job_back_and_the_next_worker_resumes() {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let ctx = studio_aws::lambda::context(&cfg, &sdk, Arc::new(studio_core::clock::SystemClock));
    let artifacts = Arc::new(studio_aws::s3::S3Artifacts::from_sdk(&sdk, &cfg.bucket));
    let work = tempfile::tempdir().unwrap();
    notice_then_resume(ctx, artifacts, work.path()).await;
}

#[tokio::test]
async fn a_rebalance_recommendation_stops_new_work_and_an_idle_worker_leaves() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j1").await;
    let md = MetadataStandIn::start().await;
    md.set_rebalance(true);
    // The machine the group started for the job (an idle worker takes its
    // own machine out of the group, and fails if it cannot).
    let machine = w.be.fleet.instances(&pool).await.unwrap().remove(0).id;
    let mut cfg = config(
        &w,
        &pool,
        machine.as_str(),
        Arc::new(Ec2Metadata {
            base: md.url.clone(),
        }),
    );
    cfg.idle_timeout = Duration::ZERO;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let exit = run_worker(&w.be.ctx, w.be.artifacts.as_ref(), &cfg, rx)
        .await
        .unwrap();
    assert_eq!(exit, WorkerExit::Idle);
    let job =
        w.be.ctx
            .store
            .get_job(&job_id("j1"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        job.state,
        JobState::Queued,
        "the draining worker took no work"
    );
    assert_eq!(
        w.be.fleet.group(&pool).await.unwrap().unwrap().desired,
        0,
        "it took its machine out of the group"
    );
}

/// A metadata service that says "terminate" once, then (its next looks
/// failing, or the notice gone from the page) "clear".
struct FlappingNotice {
    looks: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl NoticeSource for FlappingNotice {
    async fn check(&self) -> Notice {
        match self.looks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            1 => Notice::Terminate("spot interruption at once".into()),
            _ => Notice::Clear,
        }
    }
    fn grace(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// A reclaim, once seen, holds: the worker, idle in a long poll while the
/// notice came and went, hands back the work that poll brings and leaves.
#[tokio::test]
async fn a_reclaim_notice_that_flaps_back_to_clear_still_stops_the_worker() {
    let w = LocalWorld::default().await;
    submit(&w.be.ctx, "m0", &JobBuilder::new("j0").json())
        .await
        .unwrap();
    let pool = w.be.store_job_pool("j0").await;
    let queue = w.be.ctx.settings.work_queue(&pool);
    // j0's item taken away: the pool's queue exists and is empty.
    use studio_core::ports::WorkQueue;
    let taken =
        w.be.queue
            .receive(&queue, 1, Duration::from_secs(600), Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(taken.len(), 1);
    let notice = Arc::new(FlappingNotice {
        looks: Default::default(),
    });
    let mut cfg = config(&w, &pool, "w-flap", notice.clone());
    cfg.notice_every = Duration::from_millis(10);
    cfg.poll_wait = Duration::from_secs(600);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (ctx, artifacts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let worker = tokio::spawn(async move { run_worker(&ctx, artifacts.as_ref(), &cfg, rx).await });
    // Clear, terminate, clear, clear: the notice has come and gone.
    eventually(
        "the notice to come and go",
        Duration::from_secs(30),
        async || (notice.looks.load(std::sync::atomic::Ordering::SeqCst) >= 4).then_some(()),
    )
    .await;
    submit(&w.be.ctx, "m1", &JobBuilder::new("j1").json())
        .await
        .unwrap();
    assert_eq!(w.be.store_job_pool("j1").await, pool);
    // A worker that forgot the notice would run j1 and wait for more.
    let exit = tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker left")
        .unwrap()
        .unwrap();
    assert_eq!(exit, WorkerExit::Preempted);
    let j1 =
        w.be.ctx
            .store
            .get_job(&job_id("j1"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(j1.state, JobState::Queued, "j1 was not claimed");
    assert!(j1.instance.is_none(), "{:?}", j1.instance);
    let back =
        w.be.queue
            .receive(&queue, 1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(back.len(), 1, "its work item is back on the queue at once");
}

const BOOTSTRAP: &str = include_str!("../../infra/worker-bootstrap.sh");

/// The bootstrap, and the scripts users run (`scripts/deploy`, `scripts/test`).
#[test]
fn the_bootstrap_passes_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("shellcheck")
        .arg(root.join("infra/worker-bootstrap.sh"))
        .arg(root.join("infra/metadata-block.sh"))
        .arg(root.join("scripts/deploy"))
        .arg(root.join("scripts/test"))
        .arg(root.join(".ci/run"))
        .output()
        .expect("shellcheck must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_bootstrap_holds_no_secret() {
    // The one credential it touches is the machine role's, read from the
    // metadata service for the signed GET of its release (no aws CLI on
    // Ubuntu images): held in variables, never a value in the script.
    let without_role = BOOTSTRAP.replace("creds[\"SecretAccessKey\"]", "");
    let lower = without_role.to_ascii_lowercase();
    assert!(
        BOOTSTRAP.contains("creds = json.loads(meta(f\"iam/security-credentials/{role}\", token))")
    );
    for word in [
        "secret",
        "password",
        "private key",
        "session_token",
        "aws_access_key_id",
    ] {
        assert!(!lower.contains(word), "the bootstrap mentions {word}");
    }
    let bytes = BOOTSTRAP.as_bytes();
    for (i, _) in BOOTSTRAP
        .match_indices("AKIA")
        .chain(BOOTSTRAP.match_indices("ASIA"))
    {
        let key = &bytes[i..(i + 20).min(bytes.len())];
        assert!(
            !(key.len() == 20
                && key
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())),
            "an access key id in the bootstrap"
        );
    }
    assert!(
        BOOTSTRAP.contains("X-aws-ec2-metadata-token"),
        "it uses IMDSv2 for the instance id"
    );
}

/// A script's progress reaches its job record: from a `STUDIO_PROGRESS=`
/// line (a malformed one after it changes nothing), then from
/// `progress.json` in its checkpoint directory, and its last word with its
/// end. The script waits for the test's go-ahead files between steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_progress_is_recorded_from_its_output_and_its_checkpoint_file() {
    let w = LocalWorld::default().await;
    let src = tempfile::tempdir().unwrap();
    let gate = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("steps.py"),
        [
            "import json, os, sys, time",
            "gate = sys.argv[1]",
            "def wait(name):",
            "    while not os.path.exists(os.path.join(gate, name)):",
            "        time.sleep(0.02)",
            "print('STUDIO_PROGRESS=0.25', flush=True)",
            "print('STUDIO_PROGRESS=lots', flush=True)",
            "wait('one')",
            "with open(os.path.join(os.environ['STUDIO_CHECKPOINT_DIR'], 'progress.json'), 'w') as f:",
            "    json.dump({'progress': '60%'}, f)",
            "wait('two')",
            "print('STUDIO_PROGRESS=1', flush=True)",
        ]
        .join("\n"),
    )
    .unwrap();
    let tar = studio_core::workspace::pack_dir(src.path(), 1 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let mut spec = JobBuilder::new("steps").workspace(ws).spec();
    spec.entrypoint = "steps.py".into();
    spec.args = vec![gate.path().display().to_string()];
    submit(&w.be.ctx, "m", &spec.to_json()).await.unwrap();
    let pool = w.be.store_job_pool("steps").await;
    let cfg = config(&w, &pool, "w-progress", Arc::new(NoNotice));
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let job_now = async || {
        w.be.ctx
            .store
            .get_job(&job_id("steps"))
            .await
            .unwrap()
            .unwrap()
    };
    let j = eventually("progress 0.25", Duration::from_secs(30), async || {
        let j = job_now().await;
        (j.progress == Some(0.25)).then_some(j)
    })
    .await;
    assert_eq!(j.state, JobState::Running);
    std::fs::write(gate.path().join("one"), "").unwrap();
    let j = eventually("progress 0.6", Duration::from_secs(30), async || {
        let j = job_now().await;
        (j.progress == Some(0.6)).then_some(j)
    })
    .await;
    assert_eq!(j.state, JobState::Running);
    std::fs::write(gate.path().join("two"), "").unwrap();
    let job = eventually("the end", Duration::from_secs(30), async || {
        let j = job_now().await;
        j.state.is_terminal().then_some(j)
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Finished, "{:?}", job.reason);
    assert_eq!(job.progress, Some(1.0));
}

/// Runs `jobs` (id, requirements.txt) one after the other on one worker with
/// virtualenvs under `venvs`; returns each job's log.
async fn run_with_venvs(w: &LocalWorld, venvs: &Path, jobs: &[(&str, &str)]) -> Vec<String> {
    let mut logs = Vec::new();
    for (id, requirements) in jobs {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("which.py"),
            "import sys\nprint('prefix', sys.prefix)\n",
        )
        .unwrap();
        std::fs::write(src.path().join("requirements.txt"), requirements).unwrap();
        let tar = studio_core::workspace::pack_dir(src.path(), 1 << 20).unwrap();
        let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
        let mut spec = JobBuilder::new(id).workspace(ws).spec();
        spec.entrypoint = "which.py".into();
        submit(&w.be.ctx, id, &spec.to_json()).await.unwrap();
        let pool = w.be.store_job_pool(id).await;
        let mut cfg = config(w, &pool, "w-venv", Arc::new(NoNotice));
        cfg.env_root = venvs.to_path_buf();
        let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
        let (stop, rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
        let job = eventually("the job to end", Duration::from_secs(120), async || {
            let j = w.be.ctx.store.get_job(&job_id(id)).await.unwrap().unwrap();
            j.state.is_terminal().then_some(j)
        })
        .await;
        stop.send(true).unwrap();
        worker.await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Finished, "{:?}", job.reason);
        logs.push(std::fs::read_to_string(w.dir.path().join("jobs").join(id).join("log")).unwrap());
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_virtualenvs_cached_by_their_requirements() {
    let w = LocalWorld::default().await;
    let venvs = w.dir.path().join("venvs");
    let logs = run_with_venvs(
        &w,
        &venvs,
        &[
            ("a", "# nothing to install\n"),
            ("b", "# nothing to install\n"),
            ("c", "# another set\n"),
        ],
    )
    .await;
    let prefix = |log: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix("prefix "))
            .unwrap()
            .to_string()
    };
    let (a, b, c) = (prefix(&logs[0]), prefix(&logs[1]), prefix(&logs[2]));
    assert!(Path::new(&a).starts_with(&venvs), "ran inside a venv: {a}");
    assert_eq!(a, b, "same requirements.txt, same environment");
    assert_ne!(a, c, "other requirements.txt, another environment");
    assert!(
        logs[0].contains("[studio] built the python environment"),
        "{}",
        logs[0]
    );
    assert!(
        !logs[1].contains("built the python environment"),
        "reused at once: {}",
        logs[1]
    );
    assert!(logs[2].contains("built the python environment"));
    // One owner: one directory, holding the two environments (and uv's
    // cache and the lock files, which start with '.' or end in .lock).
    let owners: Vec<_> = std::fs::read_dir(&venvs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let built = std::fs::read_dir(&owners[0])
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            e.path().is_dir() && !name.starts_with('.')
        })
        .count();
    assert_eq!(built, 2);
}

/// On a cloud machine the worker runs as root (it needs the machine's role)
/// and the script as an unprivileged user: the script gets its attempt
/// directory (workspace, checkpoints) and nothing of the worker's. Needs
/// root to switch users; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_as_the_unprivileged_user_and_own_only_their_attempt() {
    if !is_root("switching the script's user needs root") {
        return;
    }
    let w = LocalWorld::default().await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("who.py"),
        "import os\n\
         print('uid', os.getuid())\n\
         open(os.path.join(os.environ['STUDIO_CHECKPOINT_DIR'], 'c.txt'), 'w').write('x')\n\
         try:\n    open('/root/.studio-probe', 'w')\n    print('wrote outside')\n\
         except PermissionError:\n    print('denied outside')\n",
    )
    .unwrap();
    let tar = studio_core::workspace::pack_dir(src.path(), 1 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let mut spec = JobBuilder::new("who").workspace(ws).spec();
    spec.entrypoint = "who.py".into();
    submit(&w.be.ctx, "m", &spec.to_json()).await.unwrap();
    let pool = w.be.store_job_pool("who").await;
    // As on a machine: the work root is traversable, the attempt is handed over.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cfg = worker_config(root.path(), &pool, "w-user", Arc::new(NoNotice));
    cfg.job_users = Some(JobUsers {
        first: 300_000,
        last: 300_009,
    });
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let job = eventually("the job to end", Duration::from_secs(60), async || {
        let j =
            w.be.ctx
                .store
                .get_job(&job_id("who"))
                .await
                .unwrap()
                .unwrap();
        j.state.is_terminal().then_some(j)
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Finished, "{:?}", job.reason);
    let log = String::from_utf8(w.be.artifacts.read_log(&job.id, 0).await.unwrap()).unwrap();
    assert!(log.contains("uid 30000"), "a uid of the range: {log}");
    assert!(log.contains("denied outside"), "{log}");
    assert_eq!(job.checkpoint.map(|c| c.attempt), Some(1), "it could save");
}

/// Runs one job whose workspace holds `files` (the script is `main.py`),
/// asking for `python`, on a worker set up by `cfg`; returns the job and
/// its log.
async fn run_in_env(
    w: &LocalWorld,
    cfg: WorkerConfig,
    id: &str,
    files: &[(&str, Vec<u8>)],
    python: Option<&str>,
) -> (studio_core::job::Job, String) {
    let src = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = src.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let tar = studio_core::workspace::pack_dir(src.path(), 8 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let mut spec = JobBuilder::new(id).workspace(ws).spec();
    spec.entrypoint = "main.py".into();
    spec.python = python.map(String::from);
    spec.settle_version();
    submit(&w.be.ctx, id, &spec.to_json()).await.unwrap();
    let pool = w.be.store_job_pool(id).await;
    let cfg = WorkerConfig { pool, ..cfg };
    let (ctx, arts) = (w.be.ctx.clone(), w.be.artifacts.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { run_worker(&ctx, arts.as_ref(), &cfg, rx).await });
    let job = eventually("the job to end", Duration::from_secs(120), async || {
        let j = w.be.ctx.store.get_job(&job_id(id)).await.unwrap().unwrap();
        j.state.is_terminal().then_some(j)
    })
    .await;
    stop.send(true).unwrap();
    // A worker stuck in a build it should have stopped fails here, not hangs.
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker leaves when told")
        .unwrap()
        .unwrap();
    let log = std::fs::read_to_string(w.dir.path().join("jobs").join(id).join("log")).unwrap();
    (job, log)
}

/// A project as users bring it: `requirements.txt` naming a package (here a
/// wheel in the workspace, so nothing is downloaded), installed by uv
/// before the script starts, and reused by the next job with the same file.
/// A requirement that cannot be met fails the job with uv's reason, once,
/// and leaves nothing that a later job would take for built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_are_installed_with_uv_reused_and_a_failed_build_is_never_kept() {
    let w = LocalWorld::default().await;
    let envs = w.dir.path().join("envs");
    let wheels = tempfile::tempdir().unwrap();
    let whl = studio_tests::make_wheel(
        wheels.path(),
        "greeting",
        "0.1",
        "WORDS = 'hello from a wheel'\n",
    );
    let project = |script: &str, requirements: &str| {
        vec![
            ("main.py", script.as_bytes().to_vec()),
            ("requirements.txt", requirements.as_bytes().to_vec()),
            (
                whl.as_str(),
                std::fs::read(wheels.path().join(&whl)).unwrap(),
            ),
        ]
    };
    let cfg = || WorkerConfig {
        env_root: envs.clone(),
        ..config(
            &w,
            &studio_core::ids::PoolKey::new("p").unwrap(),
            "w-uv",
            Arc::new(NoNotice),
        )
    };
    let uses = "import greeting, sys\nprint(greeting.WORDS, 'in', sys.prefix)\n";
    let reqs = format!("./{whl}\n");
    let (first, log1) = run_in_env(&w, cfg(), "uv-1", &project(uses, &reqs), None).await;
    assert_eq!(
        first.state,
        JobState::Finished,
        "{:?}\n{log1}",
        first.reason
    );
    assert!(log1.contains("hello from a wheel in"), "{log1}");
    assert!(
        log1.contains("[studio] building the python environment"),
        "{log1}"
    );
    assert!(
        log1.contains("[studio] built the python environment"),
        "{log1}"
    );
    assert!(
        log1.contains("[uv] "),
        "uv's own output is in the job's log: {log1}"
    );
    let (second, log2) = run_in_env(&w, cfg(), "uv-2", &project(uses, &reqs), None).await;
    assert_eq!(second.state, JobState::Finished, "{:?}", second.reason);
    assert!(log2.contains("): reused"), "{log2}");
    assert!(!log2.contains("building the python environment"), "{log2}");

    // A package nobody has: the reason names it, and a retry builds again.
    let broken = "nosuchpkg-studio-test==1.0\n";
    for id in ["uv-bad-1", "uv-bad-2"] {
        let (job, log) =
            run_in_env(&w, cfg(), id, &project("print('never')\n", broken), None).await;
        assert_eq!(job.state, JobState::Failed, "{log}");
        let reason = job.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("python environment: uv pip install:"),
            "{reason}"
        );
        assert!(reason.contains("nosuchpkg-studio-test"), "{reason}");
        assert!(reason.len() < 400, "one short reason: {reason}");
        assert!(!reason.contains('\n'), "one line: {reason}");
        assert!(
            log.contains("building the python environment"),
            "built again, not reused: {log}"
        );
    }
}

/// `python: 3.X` on a machine whose default interpreter is an older one:
/// uv finds the version asked for among the machine's interpreters (here
/// offline; on a cloud machine it may also fetch it). Needs two Python
/// versions on this machine; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_the_python_version_it_asks_for() {
    let found = local_pythons();
    let (Some(old), Some(new)) = (found.first(), found.last().filter(|_| found.len() > 1)) else {
        eprintln!("skipped: needs two Python minor versions on this machine, found {found:?}");
        return;
    };
    let w = LocalWorld::default().await;
    let mut cfg = config(
        &w,
        &studio_core::ids::PoolKey::new("p").unwrap(),
        "w-py",
        Arc::new(NoNotice),
    );
    cfg.python = old.1.display().to_string();
    // uv looks for interpreters on PATH: the newer one's directory is on it.
    let path = format!(
        "{}:{}",
        new.1.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cfg.uv_env.retain(|(k, _)| k != "PATH");
    cfg.uv_env.push(("PATH".into(), path));
    let script = b"import sys\nprint('version %d.%d' % sys.version_info[:2])\n".to_vec();
    let want = format!("3.{}", new.0);
    let (job, log) = run_in_env(
        &w,
        cfg.clone(),
        "py-new",
        &[("main.py", script.clone())],
        Some(&want),
    )
    .await;
    assert_eq!(job.state, JobState::Finished, "{:?}\n{log}", job.reason);
    assert!(log.contains(&format!("version {want}")), "{log}");
    // Without asking: the machine's (older) default, as it is.
    let (job, log) = run_in_env(&w, cfg, "py-default", &[("main.py", script)], None).await;
    assert_eq!(job.state, JobState::Finished, "{:?}", job.reason);
    assert!(log.contains(&format!("version 3.{}", old.0)), "{log}");
    assert!(
        !log.contains("python environment"),
        "no environment for a plain job: {log}"
    );
}

/// Python 3 interpreters on this machine, one per minor version, oldest
/// first: `python3.N` on PATH and in pyenv's versions.
fn local_pythons() -> Vec<(u32, std::path::PathBuf)> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(versions) = pyenv.map(|p| p.join("versions")) {
        if let Ok(rd) = std::fs::read_dir(versions) {
            dirs.extend(rd.flatten().map(|e| e.path().join("bin")));
        }
    }
    let mut by_minor = std::collections::BTreeMap::new();
    for d in dirs
        .iter()
        .filter(|d| !d.to_string_lossy().contains("shims"))
    {
        for minor in 8..=20u32 {
            let exe = d.join(format!("python3.{minor}"));
            if by_minor.contains_key(&minor) || !exe.is_file() {
                continue;
            }
            let ok = std::process::Command::new(&exe)
                .args(["-c", "import sys; print(sys.version_info[1])"])
                .output()
                .is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout).trim() == minor.to_string()
                });
            if ok {
                by_minor.insert(minor, exe);
            }
        }
    }
    by_minor.into_iter().collect()
}

/// The attack the review reproduced: a `requirements.txt` naming a local
/// package whose in-tree build backend runs whatever it likes. Where scripts
/// run as an unprivileged user, the build runs as that user too, without
/// the worker's supplementary groups or environment (no AWS_* or STUDIO_*
/// variable reaches it); the job fails with the build's reason. Needs root
/// to switch users; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_build_backend_runs_as_the_jobs_user_and_sees_nothing_of_the_workers() {
    if !is_root("switching the build's user needs root") {
        return;
    }
    let w = LocalWorld::default().await;
    // Where the backend reports (writable by the job's user).
    let report_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        report_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let report = report_dir.path().join("report.json");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/python/evil");
    let backend = std::fs::read_to_string(fixture.join("backend.py"))
        .unwrap()
        .replace("@REPORT@", &report.display().to_string());
    let files = vec![
        ("main.py", b"print('the script ran')\n".to_vec()),
        ("requirements.txt", b"./evil\n".to_vec()),
        (
            "evil/pyproject.toml",
            std::fs::read(fixture.join("pyproject.toml")).unwrap(),
        ),
        ("evil/backend.py", backend.into_bytes()),
    ];
    // As on a machine: the roots are traversable, scripts run as nobody.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cfg = worker_config(
        root.path(),
        &studio_core::ids::PoolKey::new("p").unwrap(),
        "w-evil",
        Arc::new(NoNotice),
    );
    cfg.job_users = Some(JobUsers {
        first: 300_010,
        last: 300_019,
    });
    // uv where the job's user can run it, as /usr/local/bin is on a machine
    // (the test's own copy may sit under a home only root can enter).
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        bin.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let uv = bin.path().join("uv");
    std::fs::copy(
        studio_core::worker::pyenv::find_uv().expect("uv (scripts/test installs it)"),
        &uv,
    )
    .unwrap();
    cfg.uv = Some(uv);
    let (job, log) = run_in_env(&w, cfg, "evil", &files, None).await;
    assert_eq!(job.state, JobState::Failed, "{log}");
    assert!(
        job.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("python environment:"),
        "{:?}",
        job.reason
    );
    assert!(!log.contains("the script ran"), "{log}");
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!("the backend ran and reported: {e}\n{:?}\n{log}", job.reason)
        }))
        .unwrap();
    let uid = seen["uid"].as_u64().unwrap();
    assert!((300_010..=300_019).contains(&uid), "{seen}");
    assert_eq!(seen["euid"], uid, "{seen}");
    assert!(
        seen["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g.as_u64() == Some(uid)),
        "only its own group: {seen}"
    );
    let env: Vec<&str> = seen["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.iter()
            .all(|k| !k.starts_with("AWS_") && !k.starts_with("STUDIO_")),
        "the worker's environment reached the build: {env:?}"
    );
    // The worker (this process) holds such variables: scripts/test sets
    // AWS_*, so the check above could have failed.
    if !std::env::vars().any(|(k, _)| k.starts_with("AWS_")) {
        eprintln!("note: no AWS_* variable in this process: the leak check saw nothing to leak");
    }
    // The owner's directory is the attempt's user's, private.
    let owner_dir = std::fs::read_dir(root.path().join("envs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&owner_dir).unwrap()),
        uid as u32
    );
}

/// Whether this process is root; where not, says which check is skipped.
fn is_root(skipped: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: {skipped}");
    }
    root
}

/// A build that never ends (an in-tree backend that waits to be killed)
/// holds nothing: cancelling the job stops it, the job ends `cancelled`,
/// and the backend's process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_stops_its_environment_build() {
    let w = LocalWorld::default().await;
    let marks = tempfile::tempdir().unwrap();
    let pidfile = marks.path().join("backend.pid");
    let backend = format!(
        "import os, time\n\
         def get_requires_for_build_wheel(config_settings=None):\n    \
         open({pidfile:?}, 'w').write(str(os.getpid()))\n    \
         while True:\n        time.sleep(0.05)\n",
        pidfile = pidfile.display().to_string()
    );
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("main.py", b"print('never')\n".to_vec()),
        ("requirements.txt", b"./slow\n".to_vec()),
        (
            "slow/pyproject.toml",
            b"[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"slow\"\nversion = \"0.1\"\n".to_vec(),
        ),
        ("slow/backend.py", backend.into_bytes()),
    ];
    let cfg = config(
        &w,
        &studio_core::ids::PoolKey::new("p").unwrap(),
        "w-slow",
        Arc::new(NoNotice),
    );
    let store = w.be.ctx.store.clone();
    let clock = w.be.ctx.clock.clone();
    let pidfile2 = pidfile.clone();
    let canceller = async move {
        // The build has started when the backend says so.
        let pid: i32 = eventually(
            "the backend to start",
            Duration::from_secs(60),
            async || std::fs::read_to_string(&pidfile2).ok()?.trim().parse().ok(),
        )
        .await;
        studio_core::handlers::cancel(
            store.as_ref(),
            clock.as_ref(),
            &job_id("slow-build"),
            "test",
        )
        .await
        .unwrap();
        pid
    };
    let ((job, log), pid) =
        tokio::join!(run_in_env(&w, cfg, "slow-build", &files, None), canceller);
    assert_eq!(job.state, JobState::Cancelled, "{:?}\n{log}", job.reason);
    assert!(!log.contains("never"), "{log}");
    // SAFETY: kill with signal 0 only asks whether the process exists.
    eventually(
        "the backend's process to be gone",
        Duration::from_secs(30),
        async || (unsafe { libc::kill(pid, 0) } != 0).then_some(()),
    )
    .await;
}
