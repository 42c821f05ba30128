//! GCE end to end: `studio run --cloud=gcspot` as a user types it, the
//! functions' code (submit, the Pub/Sub preemption push, scale, cleanup)
//! run in-process on one control plane, and GCE workers run in-process too,
//! each with AWS credentials from its machine's Google identity.
//!
//! What serves what: AWS is `moto_server` (DynamoDB, SQS, STS's
//! `AssumeRoleWithWebIdentity`); Pub/Sub is Google's emulator; GCS is
//! fake-gcs-server; Compute and the metadata server are the stand-in
//! `tests/standins/gce.py`, since no Compute emulator exists (it speaks the
//! REST shapes, finishes operations only when polled, and replaces a taken
//! spot machine as a MIG does). The OIDC token of the push is signed with
//! the test key of `tests/fixtures/oidc`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use studio_aws::gce_identity::{self, GceWebIdentity};
use studio_aws::lambda;
use studio_core::clock::{Clock, ManualClock, SystemClock};
use studio_core::contract::SubmitJob;
use studio_core::handlers::{self, Ctx};
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::notice::NoNotice;
use studio_core::ports::{ArtifactStore, PortError};
use studio_core::worker::{run_worker, WorkerExit};
use studio_gcp::gcs::GcsArtifacts;
use studio_gcp::GcpConfig;
use studio_tests::gcp::{self, StandIn};
use studio_tests::{eventually, pubsub_push};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const STUDIO: &str = env!("CARGO_BIN_EXE_studio");
const ROLE: &str = "arn:aws:iam::123456789012:role/studio-gce-worker";

struct World {
    cfg: studio_aws::config::AwsConfig,
    sdk: aws_config::SdkConfig,
    gcp: GcpConfig,
    standin: StandIn,
    clock: ManualClock,
    ctx: Ctx,
    home: tempfile::TempDir,
}

async fn world() -> World {
    world_in(&[gcp::ZONE]).await
}

/// The world with the deployment's groups spread over `zones`.
async fn world_in(zones: &[&str]) -> World {
    let standin = StandIn::start().await;
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let mut gcp = gcp::config(&cfg.prefix, Some(&standin));
    gcp.zones = zones.iter().map(|z| z.to_string()).collect();
    gcp.add_worker_env(&cfg.worker_env());
    let clock = ManualClock::new(SystemClock.now());
    // The functions' context, as their `main` builds it: the GCE adapters
    // made at their first call.
    let ctx =
        studio_gcp::with_gcp_deferred(lambda::context(&cfg, &sdk, Arc::new(clock.clone())), &gcp);
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "[aws]\nregion = \"us-east-1\"\njobs_table = \"{}\"\npools_table = \"{}\"\nsubmit_queue = \"{}\"\nartifact_bucket = \"{}\"\n\n[gcp]\nbucket = \"{}\"\nstorage_endpoint = \"{}\"\nanonymous = \"1\"\n",
            cfg.jobs_table, cfg.pools_table, cfg.submit_queue, cfg.bucket,
            gcp::TEST_BUCKET, gcp::gcs_endpoint(),
        ),
    )
    .unwrap();
    World {
        cfg,
        sdk,
        gcp,
        standin,
        clock,
        ctx,
        home,
    }
}

impl World {
    /// `studio ARGS` in a project directory holding `train.py` (the
    /// example's, unless [`World::hold_train_at`] wrote another).
    fn studio(&self, args: &[&str]) -> std::process::Output {
        let project = self.home.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        if !project.join("train.py").exists() {
            std::fs::copy(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/train.py"),
                project.join("train.py"),
            )
            .unwrap();
        }
        Command::new(STUDIO)
            .args(args)
            .current_dir(&project)
            .env("STUDIO_HOME", self.home.path())
            .env_remove("STUDIO_LOG")
            .output()
            .unwrap()
    }

    /// The project's `train.py` holds before epoch `hold + 1` until the
    /// returned gate file exists, which the test creates once what must
    /// happen while the script runs (a preemption) has happened: the test
    /// never races the script's end, however fast or slow the machine.
    fn hold_train_at(&self, hold: u32) -> std::path::PathBuf {
        let gate = self.home.path().join("gate");
        let project = self.home.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        let train = include_str!("../../examples/train.py");
        let lp = "while state[\"epoch\"] < args.epochs:\n";
        assert!(train.contains(lp), "train.py's epoch loop moved");
        let held = format!(
            "{lp}    while state[\"epoch\"] >= {hold} and not os.path.exists({gate:?}):\n        time.sleep(0.1)\n"
        );
        std::fs::write(project.join("train.py"), train.replacen(lp, &held, 1)).unwrap();
        gate
    }

    /// The submit function takes what the CLI sent.
    async fn run_submit(&self) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let url = studio_tests::queue_url(&sqs, &self.cfg.submit_queue).await;
        let event = studio_tests::poll_as_lambda(&sqs, &url).await;
        let (resp, fates) = lambda::submit_batch(&self.ctx, event).await;
        assert!(resp.batch_item_failures.is_empty(), "{fates:?}");
    }

    async fn job(&self, id: &JobId) -> Job {
        self.ctx.store.get_job(id).await.unwrap().unwrap()
    }

    async fn group_key(&self, id: &JobId) -> PoolKey {
        let pool = self.job(id).await.pool;
        self.ctx
            .store
            .get_pool(&pool)
            .await
            .unwrap()
            .unwrap()
            .group_key()
    }

    /// A GCE worker on machine `name`, as its startup script starts it: its
    /// AWS credentials come from the machine's identity token via STS.
    async fn start_worker(&self, gk: &PoolKey, name: &InstanceId) -> Worker {
        let identity = GceWebIdentity::new(
            "us-east-1",
            self.standin.metadata(name.as_str()),
            ROLE.into(),
            ROLE.into(),
            name.to_string(),
        )
        .await;
        let creds = identity
            .exchange()
            .await
            .expect("the web-identity exchange");
        assert!(
            creds.access_key_id().starts_with("ASIA"),
            "temporary STS credentials, not a long-lived key: {}",
            creds.access_key_id()
        );
        let sdk = gce_identity::sdk_config("us-east-1", identity).await;
        // Its Compute calls as the workers' account, under the name
        // condition `studio gcp setup` grants it with.
        let mut own = gcp::worker_config(&self.cfg.prefix, &self.standin).await;
        own.zones = self.gcp.zones.clone();
        own.worker_env = self.gcp.worker_env.clone();
        let ctx = studio_gcp::with_gcp(
            lambda::context(&self.cfg, &sdk, Arc::new(self.clock.clone())),
            &own,
        )
        .await
        .unwrap();
        let artifacts: Arc<dyn ArtifactStore> =
            Arc::new(GcsArtifacts::new(&self.gcp).await.unwrap());
        let mut wc = studio_tests::quick_worker_config(
            gk,
            name,
            self.home.path().join("machines").join(name.as_str()),
        );
        // The machine dies without handing back: no notice reaches it.
        wc.notice = Arc::new(NoNotice);
        wc.checkpoint_every = Duration::from_millis(300);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { run_worker(&ctx, artifacts.as_ref(), &wc, rx).await });
        Worker { stop, task }
    }

    /// The Pub/Sub push of `instance`'s preemption, through the webhook.
    async fn push_preemption(&self, instance: &InstanceId) -> u16 {
        let audience = "https://studio.example/v1/pubsub/preemption";
        let auth = studio_aws::webhook::PushAuth {
            audience: audience.into(),
            jwks: studio_aws::webhook::GoogleKeys::fixed(
                serde_json::from_str(pubsub_push::JWKS).unwrap(),
            ),
            email: pubsub_push::PUSH_EMAIL.into(),
            subject: Some(pubsub_push::PUSH_SUBJECT.into()),
            project: Some("P".into()),
        };
        let keys = studio_aws::webhook::Keys::from_json(r#"{"ci":"a-secret-of-enough-length-1"}"#)
            .unwrap();
        let schema = studio_aws::webhook::schema();
        let hook = studio_aws::webhook::Webhook {
            keys: &keys,
            ctx: &self.ctx,
            push: Some(&auth),
            submit_queue: &self.cfg.submit_queue,
            schema: &schema,
        };
        let req = studio_aws::webhook::Request {
            method: "POST".into(),
            path: "/v1/pubsub/preemption".into(),
            headers: [(
                "authorization".to_string(),
                format!(
                    "Bearer {}",
                    pubsub_push::token(audience, "https://accounts.google.com", 300)
                ),
            )]
            .into(),
            body: pubsub_push::envelope(&format!("push-{instance}"), instance.as_str()),
        };
        let resp = hook.handle(&req).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.status
    }
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<WorkerExit, handlers::HandlerError>>,
}

impl Worker {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcspot_runs_survives_a_preemption_push_and_leaves_nothing_billed() {
    if !gcp::have_pubsub("gcspot_runs_survives_a_preemption_push_and_leaves_nothing_billed") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
    let w = world().await;
    // Held after epoch 2 until its machine has been taken.
    let gate = w.hold_train_at(2);
    let out = w.studio(&[
        "run",
        "--cloud=gcspot",
        "--cpus=4",
        "--ram=8g",
        "--num-workers=2",
        "--bid=60%",
        "--detach",
        "train.py",
        "--epochs",
        "12",
        "--epoch-seconds",
        "0.5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--bid is ignored on gcspot"), "{err}");
    let id = JobId::new(String::from_utf8_lossy(&out.stdout).trim()).unwrap();

    // The workspace went to the GCS bucket, not to S3.
    let sqs = aws_sdk_sqs::Client::new(&w.sdk);
    let url = studio_tests::queue_url(&sqs, &w.cfg.submit_queue).await;
    let peek = sqs
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let spec = SubmitJob::from_json(peek.messages()[0].body().unwrap()).unwrap();
    let gcs = GcsArtifacts::new(&w.gcp).await.unwrap();
    assert!(!gcs.get_workspace(&spec.workspace).await.unwrap().is_empty());

    w.run_submit().await;
    let gk = w.group_key(&id).await;
    let fleet = w.ctx.fleet.clone();
    assert_eq!(fleet.group(&gk).await.unwrap().unwrap().desired, 2);
    let state = w.standin.state().await;
    let t = state["templates"][0]["properties"].clone();
    assert_eq!(t["machineType"], "custom-4-8192");
    assert_eq!(t["scheduling"]["provisioningModel"], "SPOT");
    // The job's item is on the pool's subscription (peeked and put back).
    let queue = w.ctx.settings.work_queue(&gk);
    let item = w
        .ctx
        .queue
        .receive(&queue, 1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(item.len(), 1);
    assert!(item[0].body.contains(id.as_str()), "{}", item[0].body);
    w.ctx
        .queue
        .release(&queue, &item[0].receipt, Duration::ZERO)
        .await
        .unwrap();

    // The group's two machines boot their workers.
    let machines = eventually("2 machines", Duration::from_secs(20), async || {
        let m = fleet.instances(&gk).await.unwrap();
        (m.len() == 2).then_some(m)
    })
    .await;
    let mut workers = Vec::new();
    for m in &machines {
        workers.push((m.id.clone(), w.start_worker(&gk, &m.id).await));
    }

    // Running, with a checkpoint recorded: then its machine is taken.
    let first = eventually(
        "a checkpoint of attempt 1",
        Duration::from_secs(120),
        async || {
            let j = w.job(&id).await;
            (j.state == JobState::Running && j.checkpoint.is_some()).then_some(j)
        },
    )
    .await;
    let taken = first.attempts.last().unwrap().instance.clone();
    w.standin
        .control(
            "preempt",
            serde_json::json!({"project": gcp::PROJECT, "zone": gcp::ZONE, "instance": taken.as_str()}),
        )
        .await;
    w.push_preemption(&taken).await;
    // A redelivered push changes nothing.
    w.push_preemption(&taken).await;
    // Attempt 1's script stopped by the notice (its worker reads the
    // metadata), then attempt 2 may go on.
    eventually("attempt 1's SIGTERM", Duration::from_secs(60), async || {
        let log = gcs.read_log(&id, 0).await.unwrap();
        String::from_utf8_lossy(&log)
            .contains("SIGTERM: checkpoint saved")
            .then_some(())
    })
    .await;
    std::fs::write(&gate, "").unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let done = loop {
        let j = w.job(&id).await;
        if j.state.is_terminal() {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not finish: {:?}\n{:?}\nlog: {}",
            j.events,
            j.attempts,
            String::from_utf8_lossy(&gcs.read_log(&id, 0).await.unwrap())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.state, JobState::Finished, "{:?}", done.events);
    assert_eq!(done.attempts.len(), 2, "{:?}", done.attempts);
    let second = done.attempts[1].instance.clone();
    assert_ne!(second, taken, "attempt 2 ran on the other machine");
    let log = String::from_utf8(gcs.read_log(&id, 0).await.unwrap()).unwrap();
    assert!(log.contains("resuming from checkpoint: epoch"), "{log}");
    assert!(log.contains("training done"), "{log}");

    // Google takes the machine back; the spot group replaces it.
    w.standin
        .control(
            "reclaim",
            serde_json::json!({"project": gcp::PROJECT, "zone": gcp::ZONE, "instance": taken.as_str()}),
        )
        .await;
    for (_, worker) in workers {
        worker.stop().await;
    }

    // No work past the grace: cleanup leaves nothing billed.
    w.clock.advance(Duration::from_secs(3600));
    handlers::cleanup(&w.ctx).await.unwrap();
    w.clock.advance(Duration::from_secs(3600));
    handlers::cleanup(&w.ctx).await.unwrap();
    assert!(fleet.group(&gk).await.unwrap().is_none());
    let state = w.standin.state().await;
    assert!(state["templates"].as_array().unwrap().is_empty(), "{state}");
    assert!(state["instances"].as_array().unwrap().is_empty(), "{state}");
    for q in [queue.clone(), studio_core::ports::dead_letter_queue(&queue)] {
        assert!(
            matches!(w.ctx.queue.depth(&q).await, Err(PortError::NotFound(_))),
            "{q} is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_without_num_workers_grows_while_work_waits() {
    if !gcp::have_pubsub("gcloud_without_num_workers_grows_while_work_waits") {
        return;
    }
    let w = world().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = w.studio(&[
            "run",
            "--cloud=gcloud",
            "--cpus=2",
            "--ram=4g",
            "--detach",
            "train.py",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(JobId::new(String::from_utf8_lossy(&out.stdout).trim()).unwrap());
        w.run_submit().await;
    }
    let gk = w.group_key(&ids[0]).await;
    let fleet = w.ctx.fleet.clone();
    let state = w.standin.state().await;
    assert_eq!(
        state["templates"][0]["properties"]["scheduling"]["provisioningModel"],
        "STANDARD"
    );
    // Submit starts one; each scale run adds one while jobs wait.
    let mut sizes = vec![fleet.group(&gk).await.unwrap().unwrap().desired];
    for _ in 0..3 {
        handlers::scale(&w.ctx).await.unwrap();
        sizes.push(fleet.group(&gk).await.unwrap().unwrap().desired);
    }
    assert_eq!(
        sizes,
        [1, 2, 3, 3],
        "grows by one per run, up to the work there is"
    );
    let _ = SystemClock.now();
}

/// GIVEN a deployment over two zones of a region, WHEN one zone has no
/// capacity for the machine (GCE's `ZONE_RESOURCE_POOL_EXHAUSTED`), THEN
/// the pool's group makes it in the other and the job runs there; WHEN
/// neither zone can (the other out of quota), THEN the job waits with the
/// reasons GCE gave in `studio status`, and past its `--lifetime` it ends
/// cancelled, saying why no machine started. Never queued without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_without_capacity_is_ridden_out_and_no_zone_at_all_says_why() {
    if !gcp::have_pubsub("a_zone_without_capacity_is_ridden_out_and_no_zone_at_all_says_why") {
        return;
    }
    let (a, b) = ("us-central1-a", "us-central1-b");
    let w = world_in(&[a, b]).await;
    let out_of = async |zone: &str, reason: &str| {
        w.standin
            .control(
                "stockout",
                serde_json::json!({"project": gcp::PROJECT, "zone": zone, "reason": reason}),
            )
            .await;
    };
    out_of(a, "ZONE_RESOURCE_POOL_EXHAUSTED").await;
    let run = |cpus: &str, more: &[&str]| {
        let mut args = vec!["run", "--cloud=gcspot", cpus, "--ram=4g", "--detach"];
        args.extend_from_slice(more);
        args.extend_from_slice(&["train.py", "--epochs", "2", "--epoch-seconds", "0.1"]);
        let out = w.studio(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        JobId::new(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
    };
    let id = run("--cpus=2", &[]);
    w.run_submit().await;
    let gk = w.group_key(&id).await;
    let fleet = w.ctx.fleet.clone();
    let machine = eventually("a machine", Duration::from_secs(20), async || {
        fleet.instances(&gk).await.unwrap().into_iter().next()
    })
    .await;
    let vm = w.standin.vm(machine.id.as_str()).await.unwrap();
    assert_eq!(vm["zone"], b);
    let worker = w.start_worker(&gk, &machine.id).await;
    let done = eventually("the job to end", Duration::from_secs(120), async || {
        let j = w.job(&id).await;
        j.state.is_terminal().then_some(j)
    })
    .await;
    worker.stop().await;
    assert_eq!(done.state, JobState::Finished, "{:?}", done.events);
    assert_eq!(done.attempts[0].instance, machine.id);

    // Now neither zone can: another pool's machine is never made.
    out_of(b, "QUOTA_EXCEEDED").await;
    let stuck = run("--cpus=4", &["--lifetime=30m"]);
    w.run_submit().await;
    let gk = w.group_key(&stuck).await;
    assert_eq!(fleet.group(&gk).await.unwrap().unwrap().desired, 1);
    assert!(fleet.instances(&gk).await.unwrap().is_empty(), "no machine");
    w.clock.advance(Duration::from_secs(120));
    handlers::scale(&w.ctx).await.unwrap();
    let status = w.studio(&["status", stuck.as_str()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("no machine starts"), "{text}");
    assert!(
        text.contains("ZONE_RESOURCE_POOL_EXHAUSTED") || text.contains("QUOTA_EXCEEDED"),
        "the reason GCE gave: {text}"
    );
    assert_eq!(w.job(&stuck).await.state, JobState::Queued);
    w.clock.advance(Duration::from_secs(31 * 60));
    handlers::scale(&w.ctx).await.unwrap();
    let ended = w.job(&stuck).await;
    assert_eq!(ended.state, JobState::Cancelled, "{:?}", ended.events);
    let reason = ended.reason.unwrap_or_default();
    assert!(
        reason.contains("longer than its lifetime")
            && reason.contains("no machine could be started"),
        "{reason}"
    );
    assert!(
        reason.contains("ZONE_RESOURCE_POOL_EXHAUSTED") || reason.contains("QUOTA_EXCEEDED"),
        "{reason}"
    );
}
