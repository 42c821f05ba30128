//! Chaos on the AWS adapters (issue 13), and what a job costs in requests.
//!
//! The deployment is the one every AWS scenario uses (`moto_server` behind
//! the fidelity proxy, [`studio_tests::fidelity`]), and everything that
//! runs is the product's own code: the submit and interruption functions'
//! batch handlers fed by an SQS poller that behaves as Lambda's (batches of
//! up to 10, successes deleted, failures left to come back after the
//! visibility timeout), the scale and cleanup schedules, and real workers
//! (`run_worker`, python3 scripts) on the machines the groups launch. The
//! test plays the cloud around them: it starts a worker on every machine a
//! group launches, stops it when the machine goes, and reclaims machines
//! the way the spot market does.
//!
//! Chaos, from a seeded generator (seed and size printed; `STUDIO_CHAOS_SEED`
//! and `STUDIO_CHAOS_AWS_JOBS` replay a run):
//! - 45 % of the running attempts it sees are reclaimed: the machine's
//!   metadata service says `terminate` (the worker stops the script and
//!   hands the job back), EventBridge delivers the spot warning, and once
//!   the machine goes (terminated in its group, which launches another) its
//!   state changes `shutting-down` and `terminated`. Each event is late by
//!   up to a second, a third of them arrive twice, and the state changes
//!   often come before the warning;
//! - a tenth of them lose their worker outright (killed mid-write, as
//!   SIGKILL or the OOM killer would): half the time systemd starts it again
//!   (`Restart=on-failure`), otherwise the machine is left without one;
//! - every function invocation (submit, interruption, scale, cleanup) is
//!   killed at a random point with probability 0.15: its writes stop
//!   wherever they were and its batch comes back.
//!
//! The control plane's clock runs 20 times faster than the wall (one second
//! every 50 ms), so heartbeat bounds, spot warnings' grace, idle timeouts
//! and the pools' grace pass within the run.
//!
//! At the end every job must be `finished`, once: one `finished` event, one
//! successful attempt, every earlier attempt recorded as interrupted; no
//! dead letter; and after cleanup no pool, group, launch template, work
//! queue or worker is left.
//!
//! The second test counts the requests a job costs: calm jobs (no chaos),
//! workers at the cloud's cadence ([`Cadence::CLOUD`]), every call counted
//! per operation through the proxy's doors (the functions and workers,
//! Lambda's SQS poller, the schedules). `scripts/bench` prices them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use studio_aws::config::AwsConfig;
use studio_aws::lambda::{self, Fate};
use studio_aws::s3::S3Artifacts;
use studio_core::clock::{Clock, ManualClock, SystemClock};
use studio_core::contract::WorkspaceRef;
use studio_core::handlers::Ctx;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::notice::{Notice, NoticeSource};
use studio_core::pool::PoolState;
use studio_core::ports::ArtifactStore;
use studio_core::resources::Cloud;
use studio_core::worker::{run_worker, Cadence, WorkerConfig, WorkerExit};
use studio_tests::fidelity::Fidelity;
use studio_tests::{JobBuilder, Rng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Says what a run of some size and seed did, on the real stderr: libtest
/// captures `eprintln!`, and CI's log must show sizes and seeds.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Control-plane seconds per wall-clock second.
const SPEED: u32 = 20;
/// How long a batch stays invisible after the poller received it: a killed
/// invocation's batch comes back after this.
const VISIBILITY_SECS: i32 = 2;

/// The metadata service of one machine, as the chaos sets it.
struct MachineNotice(Arc<AtomicBool>);

#[async_trait]
impl NoticeSource for MachineNotice {
    async fn check(&self) -> Notice {
        if self.0.load(Ordering::SeqCst) {
            Notice::Terminate("spot instance-action: terminate".into())
        } else {
            Notice::Clear
        }
    }
    fn grace(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// What the chaos did, for the report and the 20 % check.
#[derive(Default)]
struct Tally {
    notices: AtomicUsize,
    worker_kills: AtomicUsize,
    restarts: AtomicUsize,
    invocation_kills: AtomicUsize,
    events: AtomicUsize,
    duplicated: AtomicUsize,
    reclaims: AtomicUsize,
}

/// The chaos's dice and switch.
struct Chaos {
    on: AtomicBool,
    rng: Mutex<Rng>,
    tally: Tally,
}

impl Chaos {
    fn chance(&self, p: f64) -> bool {
        self.on.load(Ordering::SeqCst) && self.rng.lock().unwrap().chance(p)
    }
    fn millis(&self, below: u64) -> Duration {
        Duration::from_millis(self.rng.lock().unwrap().below(below))
    }
    /// `Some(after)`: kill this invocation after that long.
    fn kill_after(&self) -> Option<Duration> {
        self.chance(0.15).then(|| self.millis(25))
    }
}

/// One machine a group launched, and its worker.
struct Machine {
    group: PoolKey,
    notice: Arc<AtomicBool>,
    worker: Option<JoinHandle<WorkerExit>>,
    stop: Option<watch::Sender<bool>>,
    noticed_at: Option<Instant>,
    restart_at: Option<Instant>,
    reclaimed: bool,
}

/// The deployment, its three kinds of callers, and the cloud the test plays.
struct World {
    cfg: AwsConfig,
    clock: ManualClock,
    fid: Fidelity,
    /// The functions' code and the workers (the CLI's sends too).
    jobs: Ctx,
    jobs_sdk: aws_config::SdkConfig,
    /// Lambda's SQS poller (receives and deletes on the functions' behalf).
    poller_sdk: aws_config::SdkConfig,
    /// The schedules, each through its own door.
    scale: Ctx,
    cleanup: Ctx,
    /// The test itself: its look-ups and the cloud's doings.
    obs: Ctx,
    obs_sdk: aws_config::SdkConfig,
    artifacts: Arc<S3Artifacts>,
    chaos: Chaos,
    machines: Mutex<HashMap<InstanceId, Machine>>,
    /// Function invocations (killed ones too), by function.
    invocations: Mutex<BTreeMap<&'static str, usize>>,
    /// How long each invocation that ran to its end took, by function, with
    /// its batch's bodies.
    durations: Mutex<BTreeMap<&'static str, Vec<(Duration, String)>>>,
    /// Per message, the receives that did not end in its deletion (the
    /// invocation killed, the item reported failed, the delete refused):
    /// at the queues' `maxReceiveCount` (5, as the template sets), SQS
    /// moves the message to the dead-letter queue on its next receive.
    undeleted: Mutex<HashMap<String, (u32, String)>>,
    /// The worker configuration's intervals.
    cadence: Cadence,
    work: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

async fn world(seed: u64, cadence: Cadence) -> Arc<World> {
    let clock = ManualClock::new(SystemClock.now());
    let (mut cfg, _, fid) = studio_tests::fidelity_deployment(clock.clone()).await;
    // Chaos may take a job through many attempts; the bound is not what is
    // tested here.
    cfg.max_attempts = 100;
    cfg.max_workers = 6;
    // The workers' cadence is wall time, the control plane's clock runs
    // SPEED times faster: the heartbeat bound is four of the workers'
    // beats on that clock, as production's 2 min is four 30 s beats. The
    // plain 2 min would be 6 s of wall time here, under a worker at the
    // cloud's cadence that beats every 30 s: a calm job slowed past 6 s by
    // a busy machine was taken for lost and run twice.
    cfg.heartbeat_timeout = cfg.heartbeat_timeout.max(cadence.beat_every * 4 * SPEED);
    // Deleted groups stay "pending delete" for 2 control-plane minutes.
    fid.set_pending_delete(Duration::from_secs(120));
    let sdk = |url: &str| studio_aws::emulator_config("us-east-1", url);
    let jobs_sdk = sdk(&fid.door("jobs").await);
    let poller_sdk = sdk(&fid.door("poller").await);
    let scale_sdk = sdk(&fid.door("scale").await);
    let cleanup_sdk = sdk(&fid.door("cleanup").await);
    let obs_sdk = sdk(&fid.door("test").await);
    let ctx = |s: &aws_config::SdkConfig| lambda::context(&cfg, s, Arc::new(clock.clone()));
    let (jobs, scale, cleanup, obs) = (
        ctx(&jobs_sdk),
        ctx(&scale_sdk),
        ctx(&cleanup_sdk),
        ctx(&obs_sdk),
    );
    let artifacts = Arc::new(S3Artifacts::from_sdk(&jobs_sdk, &cfg.bucket));
    let w = World {
        cfg,
        clock,
        fid,
        jobs,
        jobs_sdk,
        poller_sdk,
        scale,
        cleanup,
        obs,
        obs_sdk,
        artifacts,
        chaos: Chaos {
            on: AtomicBool::new(false),
            rng: Mutex::new(Rng(seed)),
            tally: Tally::default(),
        },
        machines: Mutex::new(HashMap::new()),
        invocations: Mutex::new(BTreeMap::new()),
        durations: Mutex::new(BTreeMap::new()),
        undeleted: Mutex::new(HashMap::new()),
        cadence,
        work: tempfile::tempdir().unwrap(),
        stop: watch::channel(false).0,
    };
    studio_tests::route_ec2_events(&w.obs_sdk, &w.cfg).await;
    Arc::new(w)
}

type Batch = aws_lambda_events::event::sqs::SqsEvent;
type BatchOut = (aws_lambda_events::event::sqs::SqsBatchResponse, Vec<Fate>);

impl World {
    fn sqs(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(sdk)
    }

    /// The scripts' workspace: `main.py SECONDS NAME` sleeps, then says so.
    async fn workspace(&self) -> WorkspaceRef {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.py"),
            "import sys, time\ntime.sleep(float(sys.argv[1]))\nprint('done', sys.argv[2])\n",
        )
        .unwrap();
        let tar = studio_core::workspace::pack_dir(dir.path(), 1 << 20).unwrap();
        S3Artifacts::from_sdk(&self.obs_sdk, &self.cfg.bucket)
            .put_workspace(&tar)
            .await
            .unwrap()
    }

    /// Sends `n` spot jobs as the CLI does: one `SendMessage` each.
    async fn submit(&self, n: usize, ws: &WorkspaceRef, seconds: impl Fn(usize) -> f64) {
        for i in 0..n {
            self.submit_one(&format!("c{i:05}"), ws, seconds(i)).await;
        }
    }

    /// One job of `seconds`, sent as the CLI does.
    async fn submit_one(&self, id: &str, ws: &WorkspaceRef, seconds: f64) {
        let sqs = self.sqs(&self.jobs_sdk);
        let url = studio_tests::queue_url(&self.sqs(&self.obs_sdk), &self.cfg.submit_queue).await;
        let mut spec = JobBuilder::new(id)
            .workspace(ws.clone())
            .args(&[&format!("{seconds:.2}"), id])
            .spec();
        spec.cloud = Cloud::Ec2spot;
        spec.entrypoint = "main.py".into();
        sqs.send_message()
            .queue_url(&url)
            .message_body(spec.to_json())
            .send()
            .await
            .unwrap();
    }

    /// Counts an invocation of `function`.
    fn invoked(&self, function: &'static str) {
        *self
            .invocations
            .lock()
            .unwrap()
            .entry(function)
            .or_default() += 1;
    }

    /// One invocation of `function`, as Lambda runs it, killed mid-way now
    /// and then (counted); `None` when it was.
    async fn invoke<T>(
        &self,
        function: &'static str,
        run: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.invoked(function);
        let out = match self.chaos.kill_after() {
            Some(after) => tokio::time::timeout(after, run).await.ok(),
            None => Some(run.await),
        };
        if out.is_none() {
            self.chaos
                .tally
                .invocation_kills
                .fetch_add(1, Ordering::SeqCst);
        }
        out
    }

    /// Lambda's SQS poller for one function: batches of up to 10, the
    /// successes deleted, the failures (and a killed invocation's whole
    /// batch) left to come back.
    async fn poller<F>(self: Arc<Self>, name: &'static str, queue: String, function: F)
    where
        F: Fn(Arc<World>, Batch) -> futures_like::BoxFuture<BatchOut>,
    {
        // Receives go through the test's door: Lambda's poller receives
        // all the time, with or without work, so its receives are counted
        // as the invocations they start (`invoked`), not as calls.
        let (sqs, receiver) = (self.sqs(&self.poller_sdk), self.sqs(&self.obs_sdk));
        let url = studio_tests::queue_url(&receiver, &queue).await;
        let mut stop = self.stop.subscribe();
        while !*stop.borrow() {
            let got = receiver
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(VISIBILITY_SECS)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await;
            let msgs = match got {
                Ok(out) => out.messages().to_vec(),
                Err(_) => Vec::new(),
            };
            if msgs.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let run = function(self.clone(), studio_tests::sqs_event(&msgs));
            let t0 = Instant::now();
            let Some((resp, _)) = self.invoke(name, run).await else {
                self.not_deleted(msgs.iter());
                continue;
            };
            self.durations
                .lock()
                .unwrap()
                .entry(name)
                .or_default()
                .push((
                    t0.elapsed(),
                    msgs.iter()
                        .filter_map(|m| m.body())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ));
            let failed: HashSet<String> = resp
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            self.not_deleted(
                msgs.iter()
                    .filter(|m| failed.contains(m.message_id().unwrap_or_default())),
            );
            let kept: Vec<_> = msgs
                .iter()
                .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
                .collect();
            let done: Vec<_> = kept
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .unwrap()
                })
                .collect();
            if !done.is_empty() {
                match sqs
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(done))
                    .send()
                    .await
                {
                    Ok(out) => self.not_deleted(out.failed().iter().filter_map(|f| {
                        f.id()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| kept.get(i).copied())
                    })),
                    Err(_) => self.not_deleted(kept.iter().copied()),
                }
            }
        }
    }

    /// Notes a receive of each of `msgs` that did not delete it.
    fn not_deleted<'a>(&self, msgs: impl Iterator<Item = &'a aws_sdk_sqs::types::Message>) {
        let mut u = self.undeleted.lock().unwrap();
        for m in msgs {
            let e = u
                .entry(m.message_id().unwrap_or_default().to_string())
                .or_insert_with(|| (0, m.body().unwrap_or_default().to_string()));
            e.0 += 1;
        }
    }

    /// The messages SQS must have dead-lettered: received five times
    /// without a delete.
    fn exhausted(&self) -> Vec<String> {
        let u = self.undeleted.lock().unwrap();
        u.values()
            .filter(|(n, _)| *n >= 5)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// The schedules: scale every 20 control-plane seconds, cleanup every
    /// minute, each killed now and then.
    async fn schedules(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut round = 0u64;
        while !*stop.borrow() {
            self.invoke("scale-on-queue-depth", lambda::scale(&self.scale))
                .await;
            if round.is_multiple_of(3) {
                self.invoke("cleanup-empty-group", lambda::cleanup(&self.cleanup))
                    .await;
            }
            round += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The control plane's clock, `SPEED` times the wall's.
    async fn time(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        while !*stop.borrow() {
            self.clock.advance(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1000 / u64::from(SPEED))) => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn start_worker(
        &self,
        group: &PoolKey,
        id: &InstanceId,
        notice: &Arc<AtomicBool>,
    ) -> (JoinHandle<WorkerExit>, watch::Sender<bool>) {
        let mut cfg: WorkerConfig =
            studio_tests::quick_worker_config(group, id, self.work.path().join(id.as_str()));
        self.cadence.apply(&mut cfg);
        cfg.lease = Duration::from_secs(5);
        cfg.term_grace = Duration::from_secs(1);
        cfg.notice = Arc::new(MachineNotice(notice.clone()));
        let (tx, rx) = watch::channel(false);
        let (ctx, artifacts) = (self.jobs.clone(), self.artifacts.clone());
        let task = tokio::spawn(async move {
            run_worker(&ctx, artifacts.as_ref(), &cfg, rx)
                .await
                .expect("run_worker")
        });
        (task, tx)
    }

    /// An EC2 event through EventBridge, `late` from now, maybe twice.
    fn ec2_event(
        self: &Arc<Self>,
        detail_type: &'static str,
        id: &InstanceId,
        state: Option<&'static str>,
        late: Duration,
    ) {
        let copies = if self.chaos.chance(0.33) {
            self.chaos.tally.duplicated.fetch_add(1, Ordering::SeqCst);
            2
        } else {
            1
        };
        let (w, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            // A delay the chaos chose, not a wait for something.
            tokio::time::sleep(late).await;
            let mut detail = serde_json::json!({ "instance-id": id.as_str() });
            if let Some(s) = state {
                detail["state"] = s.into();
            } else {
                detail["instance-action"] = "terminate".into();
            }
            let eb = aws_sdk_eventbridge::Client::new(&w.obs_sdk);
            for _ in 0..copies {
                let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .source("aws.ec2")
                    .detail_type(detail_type)
                    .resources(format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}"))
                    .detail(detail.to_string())
                    .build();
                if eb.put_events().entries(entry).send().await.is_ok() {
                    w.chaos.tally.events.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }

    /// The cloud, every 250 ms: a worker on every machine the groups
    /// launched, gone with its machine; reclaims of warned machines; and
    /// systemd's restarts.
    async fn cloud(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let asg = aws_sdk_autoscaling::Client::new(&self.obs_sdk);
        while !*stop.borrow() {
            let mut present: HashMap<InstanceId, PoolKey> = HashMap::new();
            let mut complete = true;
            match self.obs.store.live_pools().await {
                Ok(pools) => {
                    for p in pools.iter().filter(|p| p.state == PoolState::Live) {
                        let gk = p.group_key();
                        match self.obs.fleet.instances(&gk).await {
                            Ok(list) => {
                                present.extend(list.into_iter().map(|i| (i.id, gk.clone())))
                            }
                            Err(_) => complete = false,
                        }
                    }
                }
                Err(_) => complete = false,
            }
            // A machine missing from its group's listing is gone only once
            // EC2 says so (a listing can miss one: a pool being revived, a
            // group between states).
            let missing: Vec<InstanceId> = {
                let machines = self.machines.lock().unwrap();
                machines
                    .keys()
                    .filter(|id| !present.contains_key(*id))
                    .cloned()
                    .collect()
            };
            let mut gone: HashSet<InstanceId> = HashSet::new();
            if complete && !missing.is_empty() {
                match self.ended(&missing).await {
                    Some(ended) => gone = ended,
                    None => complete = false,
                }
            }
            let mut reclaim = Vec::new();
            {
                let mut machines = self.machines.lock().unwrap();
                for (id, group) in &present {
                    machines.entry(id.clone()).or_insert_with(|| {
                        let notice = Arc::new(AtomicBool::new(false));
                        let (task, stop) = self.start_worker(group, id, &notice);
                        Machine {
                            group: group.clone(),
                            notice,
                            worker: Some(task),
                            stop: Some(stop),
                            noticed_at: None,
                            restart_at: None,
                            reclaimed: false,
                        }
                    });
                }
                let now = Instant::now();
                machines.retain(|id, m| {
                    if complete && gone.contains(id) {
                        // The machine is gone, and its worker with it.
                        if let Some(t) = m.worker.take() {
                            t.abort();
                        }
                        return false;
                    }
                    let ended = m.worker.as_ref().is_some_and(|t| t.is_finished());
                    if ended {
                        m.worker = None;
                        m.stop = None;
                    }
                    if let Some(at) = m.noticed_at {
                        // The market takes the machine once its worker left,
                        // or two control-plane minutes after the notice.
                        if !m.reclaimed
                            && (m.worker.is_none()
                                || now.duration_since(at)
                                    > Duration::from_secs(120 / u64::from(SPEED)))
                        {
                            m.reclaimed = true;
                            if let Some(t) = m.worker.take() {
                                t.abort();
                            }
                            reclaim.push(id.clone());
                        }
                    } else if m.worker.is_none() && m.restart_at.is_some_and(|t| now >= t) {
                        m.restart_at = None;
                        let (task, stop) = self.start_worker(&m.group, id, &m.notice);
                        m.worker = Some(task);
                        m.stop = Some(stop);
                        self.chaos.tally.restarts.fetch_add(1, Ordering::SeqCst);
                    }
                    true
                });
            }
            for id in reclaim {
                self.chaos.tally.reclaims.fetch_add(1, Ordering::SeqCst);
                let _ = asg
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(id.as_str())
                    .should_decrement_desired_capacity(false)
                    .send()
                    .await;
                for state in ["shutting-down", "terminated"] {
                    let late = self.chaos.millis(500);
                    self.ec2_event(
                        "EC2 Instance State-change Notification",
                        &id,
                        Some(state),
                        late,
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Which of `ids` EC2 reports shutting down or terminated (or no
    /// longer knows); `None` when it could not be asked.
    async fn ended(&self, ids: &[InstanceId]) -> Option<HashSet<InstanceId>> {
        let out = aws_sdk_ec2::Client::new(&self.obs_sdk)
            .describe_instances()
            .set_instance_ids(Some(ids.iter().map(|i| i.to_string()).collect()))
            .send()
            .await
            .ok()?;
        let mut alive = HashSet::new();
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if !matches!(state.as_str(), "shutting-down" | "terminated") {
                alive.extend(i.instance_id().map(String::from));
            }
        }
        // AWS's ForceDelete terminates every instance of the group, scale-in
        // protection or not
        // (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DeleteAutoScalingGroup.html);
        // moto's leaves the protected ones running, held by no group. Such a
        // machine is terminated here, as AWS would have.
        if !alive.is_empty() {
            let asked: Vec<String> = alive.iter().cloned().collect();
            let held: HashSet<String> = aws_sdk_autoscaling::Client::new(&self.obs_sdk)
                .describe_auto_scaling_instances()
                .set_instance_ids(Some(asked.clone()))
                .send()
                .await
                .ok()?
                .auto_scaling_instances()
                .iter()
                .filter_map(|i| i.instance_id().map(String::from))
                .collect();
            let orphans: Vec<String> = asked.into_iter().filter(|i| !held.contains(i)).collect();
            if !orphans.is_empty() {
                aws_sdk_ec2::Client::new(&self.obs_sdk)
                    .terminate_instances()
                    .set_instance_ids(Some(orphans.clone()))
                    .send()
                    .await
                    .ok()?;
                for o in orphans {
                    report!("chaos(aws): {o} outlived its group's ForceDelete (moto keeps protected instances); terminated as AWS would");
                    alive.remove(&o);
                }
            }
        }
        Some(
            ids.iter()
                .filter(|i| !alive.contains(i.as_str()))
                .cloned()
                .collect(),
        )
    }

    /// The chaos itself, every 400 ms: each running attempt seen for the
    /// first time is reclaimed (45 %), loses its worker (10 %) or is left be.
    async fn havoc(self: Arc<Self>, attempts_seen: Arc<Mutex<HashSet<(String, u32)>>>) {
        let mut stop = self.stop.subscribe();
        while !*stop.borrow() && self.chaos.on.load(Ordering::SeqCst) {
            if let Ok(running) = self.obs.store.list_jobs(None, &[JobState::Running]).await {
                for j in running {
                    let Some(on) = j.instance.clone() else {
                        continue;
                    };
                    if !attempts_seen
                        .lock()
                        .unwrap()
                        .insert((j.id.to_string(), j.attempt))
                    {
                        continue;
                    }
                    if self.chaos.chance(0.45) {
                        let mut machines = self.machines.lock().unwrap();
                        let Some(m) = machines.get_mut(&on) else {
                            continue;
                        };
                        if m.noticed_at.is_none() {
                            m.noticed_at = Some(Instant::now());
                            m.notice.store(true, Ordering::SeqCst);
                            self.chaos.tally.notices.fetch_add(1, Ordering::SeqCst);
                            // Up to a second late: often after the machine's end.
                            let late = self.chaos.millis(1000);
                            self.ec2_event(
                                "EC2 Spot Instance Interruption Warning",
                                &on,
                                None,
                                late,
                            );
                        }
                    } else if self.chaos.chance(0.1) {
                        let mut machines = self.machines.lock().unwrap();
                        let Some(m) = machines.get_mut(&on) else {
                            continue;
                        };
                        if let Some(t) = m.worker.take() {
                            t.abort();
                            m.stop = None;
                            self.chaos.tally.worker_kills.fetch_add(1, Ordering::SeqCst);
                            if self.chaos.chance(0.5) {
                                // systemd: RestartSec=5, in control-plane time.
                                m.restart_at = Some(
                                    Instant::now() + Duration::from_millis(5000 / u64::from(SPEED)),
                                );
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(400)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Waits (polling, with a deadline) until all `n` jobs ended.
    async fn until_all_ended(&self, n: usize, limit: Duration, seed: u64) -> Vec<Job> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(jobs) = self.obs.store.list_jobs(None, &[]).await {
                if jobs.len() == n && jobs.iter().all(|j| j.state.is_terminal()) {
                    return jobs;
                }
                if Instant::now() > deadline {
                    let stuck: Vec<String> = jobs
                        .iter()
                        .filter(|j| !j.state.is_terminal())
                        .take(5)
                        .map(|j| {
                            format!(
                                "{} {:?} attempt {} {:?}",
                                j.id, j.state, j.attempt, j.events
                            )
                        })
                        .collect();
                    panic!(
                        "seed {seed}: {} of {n} jobs ended within {limit:?}; {} recorded; stuck: {stuck:#?}",
                        jobs.iter().filter(|j| j.state.is_terminal()).count(),
                        jobs.len()
                    );
                }
            }
            // Every 2 s: a listing of every job is a scan, and moto (one
            // python process) is what bounds this test's pace.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// What is left of the deployment's pools: pool records, groups
    /// (pending delete included), launch templates, work queues, machines
    /// the test still runs a worker for.
    async fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let p = &self.cfg.prefix;
        match self.obs.store.live_pools().await {
            Ok(pools) => left.extend(
                pools
                    .iter()
                    .map(|p| format!("pool {} ({:?})", p.key, p.state)),
            ),
            Err(e) => left.push(format!("pools: {e}")),
        }
        let groups = aws_sdk_autoscaling::Client::new(&self.obs_sdk)
            .describe_auto_scaling_groups()
            .send()
            .await
            .map(|g| {
                g.auto_scaling_groups()
                    .iter()
                    .filter_map(|g| g.auto_scaling_group_name().map(String::from))
                    .collect()
            });
        let templates = aws_sdk_ec2::Client::new(&self.obs_sdk)
            .describe_launch_templates()
            .send()
            .await
            .map(|t| {
                t.launch_templates()
                    .iter()
                    .filter_map(|t| t.launch_template_name().map(String::from))
                    .collect()
            });
        let queues = self
            .sqs(&self.obs_sdk)
            .list_queues()
            .queue_name_prefix(p)
            .send()
            .await
            .map(|q| {
                q.queue_urls()
                    .iter()
                    .filter_map(|u| u.rsplit('/').next().map(String::from))
                    .collect()
            });
        let keep = [
            self.cfg.submit_queue.clone(),
            format!("{}-dlq", self.cfg.submit_queue),
            self.cfg.interruption_queue.clone().unwrap(),
            format!("{}-dlq", self.cfg.interruption_queue.as_ref().unwrap()),
        ];
        left.extend(ours("group", p, &[], groups));
        left.extend(ours("launch template", p, &[], templates));
        left.extend(ours("queue", p, &keep, queues));
        left.extend(
            self.machines
                .lock()
                .unwrap()
                .keys()
                .map(|id| format!("machine {id} with a worker")),
        );
        left
    }

    /// Messages parked in the functions' dead-letter queues.
    async fn dead_letters(&self) -> usize {
        let mut n = 0;
        for q in [
            &self.cfg.submit_queue,
            self.cfg.interruption_queue.as_ref().unwrap(),
        ] {
            let d = self.obs.queue.depth(&format!("{q}-dlq")).await.unwrap();
            n += (d.visible + d.in_flight) as usize;
        }
        n
    }

    /// Stops every task and worker.
    async fn shut(&self, tasks: Vec<JoinHandle<()>>) {
        let _ = self.stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let workers: Vec<_> = self
            .machines
            .lock()
            .unwrap()
            .drain()
            .filter_map(|(_, m)| m.worker)
            .collect();
        for w in workers {
            w.abort();
        }
    }
}

/// `WHAT NAME` for each listed name of this deployment (its `prefix`) but
/// those to `keep`, or why the listing failed.
fn ours<E: std::fmt::Display>(
    what: &str,
    prefix: &str,
    keep: &[String],
    listed: Result<Vec<String>, E>,
) -> Vec<String> {
    match listed {
        Ok(names) => names
            .into_iter()
            .filter(|n| n.starts_with(prefix) && !keep.contains(n))
            .map(|n| format!("{what} {n}"))
            .collect(),
        Err(e) => vec![format!("{what}s: {e}")],
    }
}

/// A boxed future without a `futures` dependency.
mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

/// The functions, the schedules, the clock and the cloud, running.
fn start(w: &Arc<World>) -> Vec<JoinHandle<()>> {
    let submit = |w: Arc<World>, e: Batch| -> futures_like::BoxFuture<BatchOut> {
        Box::pin(async move { lambda::submit_batch(&w.jobs, e).await })
    };
    let interruption = |w: Arc<World>, e: Batch| -> futures_like::BoxFuture<BatchOut> {
        Box::pin(async move {
            let q = w.cfg.interruption_queue.clone().unwrap();
            lambda::interruption_batch(&w.jobs, &q, e).await
        })
    };
    vec![
        tokio::spawn(
            w.clone()
                .poller("submit", w.cfg.submit_queue.clone(), submit),
        ),
        tokio::spawn(w.clone().poller(
            "handle-spot-interruption",
            w.cfg.interruption_queue.clone().unwrap(),
            interruption,
        )),
        tokio::spawn(w.clone().schedules()),
        tokio::spawn(w.clone().time()),
        tokio::spawn(w.clone().cloud()),
    ]
}

/// Every job finished once, with its attempts.
fn check_jobs(jobs: &[Job], seed: u64) -> (usize, usize) {
    let mut attempts = 0;
    let mut again = 0;
    for j in jobs {
        let id = &j.id;
        assert_eq!(
            j.state,
            JobState::Finished,
            "seed {seed}: {id}: {:?} {:?}",
            j.reason,
            j.events
        );
        let finished = j
            .events
            .iter()
            .filter(|e| e.to == JobState::Finished)
            .count();
        assert_eq!(
            finished, 1,
            "seed {seed}: {id} finished once: {:?}",
            j.events
        );
        let ok = j
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(JobState::Finished))
            .count();
        assert_eq!(
            ok, 1,
            "seed {seed}: {id}: one successful attempt: {:?}",
            j.attempts
        );
        assert_eq!(
            j.attempts.len() as u32,
            j.attempt,
            "seed {seed}: {id}: every attempt is recorded: {:?}",
            j.attempts
        );
        let (last, earlier) = j.attempts.split_last().unwrap();
        assert_eq!(last.outcome, Some(JobState::Finished), "seed {seed}: {id}");
        assert!(
            earlier
                .iter()
                .all(|a| a.outcome == Some(JobState::Interrupted)),
            "seed {seed}: {id}: every earlier attempt was interrupted: {:?}",
            j.attempts
        );
        attempts += j.attempts.len();
        again += usize::from(j.attempts.len() > 1);
    }
    (attempts, again)
}

/// Polls until nothing of the pools is left, or fails with what is.
async fn until_clean(w: &World, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = w.leftovers().await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: left after cleanup: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_chaos_every_job_finishes_exactly_once_whatever_dies() {
    let n: usize = std::env::var("STUDIO_CHAOS_AWS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = Rng::seed_from_env("STUDIO_CHAOS_SEED");
    report!(
        "chaos(aws): {n} jobs, seed {seed} (STUDIO_CHAOS_AWS_JOBS={n} STUDIO_CHAOS_SEED={seed} to replay)"
    );
    // Workers poll and beat faster than on a cloud machine (the clock runs
    // 20 times faster), but no faster than moto keeps up with; the request
    // counts are the other test's.
    let fast = Cadence {
        poll_wait: Duration::from_secs(1),
        heartbeat: Duration::from_millis(500),
        beat_every: Duration::from_secs(1),
        seen_every: Duration::from_secs(2),
        notice_every: Duration::from_millis(100),
        log_every: Duration::from_millis(500),
        progress_every: Duration::from_secs(1),
    };
    let w = world(seed, fast).await;
    let ws = w.workspace().await;
    w.chaos.on.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let mut tasks = start(&w);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    tasks.push(tokio::spawn(w.clone().havoc(seen.clone())));
    // Scripts of 0.1–0.7 s.
    let lengths: Vec<f64> = {
        let mut rng = w.chaos.rng.lock().unwrap();
        (0..n)
            .map(|_| 0.1 + rng.below(600) as f64 / 1000.0)
            .collect()
    };
    w.submit(n, &ws, |i| lengths[i]).await;
    report!("chaos(aws): {n} submitted in {:?}", t0.elapsed());
    let jobs = w.until_all_ended(n, Duration::from_secs(900), seed).await;
    let took = t0.elapsed();
    w.chaos.on.store(false, Ordering::SeqCst);
    let (attempts, again) = check_jobs(&jobs, seed);
    let t = &w.chaos.tally;
    let notices = t.notices.load(Ordering::SeqCst);
    report!(
        "chaos(aws): {n} jobs finished in {took:?}; {attempts} attempts, {notices} notices ({} % of attempts), {} reclaims, {} workers killed ({} restarted), {} function invocations killed, {} EC2 events ({} sent twice), {again} jobs ran more than once",
        notices * 100 / attempts.max(1),
        t.reclaims.load(Ordering::SeqCst),
        t.worker_kills.load(Ordering::SeqCst),
        t.restarts.load(Ordering::SeqCst),
        t.invocation_kills.load(Ordering::SeqCst),
        t.events.load(Ordering::SeqCst),
        t.duplicated.load(Ordering::SeqCst),
    );
    assert!(
        notices * 5 >= attempts,
        "seed {seed}: notices reached {notices} of {attempts} attempts, under 20 %"
    );
    // Nothing is dead-lettered but what SQS must move: a message whose
    // invocation was killed (15 % of them), or whose item failed, at each
    // of its five receives. Such a message is moved at its next receive
    // attempt, after its visibility timeout.
    let exhausted = w.exhausted();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dead = w.dead_letters().await;
    while dead < exhausted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        dead = w.dead_letters().await;
    }
    assert_eq!(
        dead,
        exhausted.len(),
        "seed {seed}: dead-lettered only what was received five times without a delete: {exhausted:?}"
    );
    // The machines idle out, the pools' grace passes, cleanup removes them.
    until_clean(&w, seed).await;
    w.shut(tasks).await;
}

/// Requests per job on the AWS adapters, by operation and by caller, for
/// calm 0.2 s jobs submitted one `SendMessage` each, with workers at the
/// cloud's cadence. Printed for `scripts/bench`, which prices them; the
/// assertions here are about which calls a job makes, not how fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_requests_per_job_by_service() {
    let n = 40;
    let w = world(1, Cadence::CLOUD).await;
    let ws = w.workspace().await;
    let tasks = start(&w);
    let t0 = Instant::now();
    w.submit(n, &ws, |_| 0.2).await;
    let jobs = w.until_all_ended(n, Duration::from_secs(600), 1).await;
    let took = t0.elapsed();
    let (attempts, _) = check_jobs(&jobs, 1);
    let again: Vec<_> = jobs
        .iter()
        .filter(|j| j.attempts.len() > 1)
        .map(|j| (&j.id, &j.attempts, &j.events))
        .collect();
    assert_eq!(attempts, n, "calm jobs run once: {again:?}");
    let per =
        |door: &str| -> BTreeMap<String, usize> { w.fid.calls_through(door).into_iter().collect() };
    let (jobs_calls, poller, scale, cleanup) =
        (per("jobs"), per("poller"), per("scale"), per("cleanup"));
    // Job record size: DynamoDB charges writes by the KB, reads by 4 KB.
    let sizes: Vec<usize> = jobs
        .iter()
        .map(|j| serde_json::to_vec(j).unwrap().len())
        .collect();
    let mean_size = sizes.iter().sum::<usize>() / sizes.len();
    let fields: Vec<String> = match serde_json::to_value(&jobs[0]).unwrap() {
        serde_json::Value::Object(m) => {
            let mut f: Vec<(usize, String)> = m
                .iter()
                .map(|(k, v)| (v.to_string().len(), k.clone()))
                .collect();
            f.sort_by(|a, b| b.cmp(a));
            f.iter().take(4).map(|(n, k)| format!("{k} {n}")).collect()
        }
        _ => Vec::new(),
    };
    let line = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(op, c)| format!("{op}={:.2}", *c as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let invocations = w.invocations.lock().unwrap().clone();
    report!(
        "requests(aws): {n} jobs of 0.2 s in {took:?}, {} workers at most, job record {mean_size} bytes on average (largest fields: {})",
        w.cfg.max_workers,
        fields.join(", ")
    );
    report!(
        "requests(aws) per job, functions and workers: {}",
        line(&jobs_calls)
    );
    report!(
        "requests(aws) per job, Lambda's SQS poller (besides one receive per invocation): {}",
        line(&poller)
    );
    report!("requests(aws) invocations: {invocations:?}; scale's calls in all: {scale:?}; cleanup's: {cleanup:?}");
    // For scripts/bench, which prices them.
    report!(
        "requests(aws) json: {}",
        serde_json::json!({
            "jobs": n,
            "record_bytes": mean_size,
            "calls": { "jobs": jobs_calls, "poller": poller, "scale": scale, "cleanup": cleanup },
            "invocations": invocations,
        })
    );
    // What a job must cost: one submit send, one claim, at least one
    // workspace fetch; no listing of the bucket, no scan of the table.
    assert!(jobs_calls.get("SendMessage").copied().unwrap_or(0) >= n);
    assert!(jobs_calls.get("GetObject").copied().unwrap_or(0) >= n);
    for forbidden in ["Scan", "ListObjectsV2", "ListObjects"] {
        assert_eq!(
            jobs_calls.get(forbidden),
            None,
            "no job should cost a {forbidden}: {jobs_calls:?}"
        );
    }
    w.shut(tasks).await;
}

/// The median of `d`, in milliseconds.
fn median_ms(mut d: Vec<Duration>) -> f64 {
    d.sort();
    d.get(d.len() / 2)
        .map_or(f64::NAN, |m| m.as_secs_f64() * 1000.0)
}

/// Interruption → the job queued again, on the AWS adapters, both ways a
/// machine's loss reaches the control plane:
/// - the worker hears the spot notice from its metadata service (asked
///   every 100 ms here; every 5 s on a cloud machine, which adds up to 5 s),
///   stops the script and hands the job back;
/// - the worker is gone without a word and the machine's `shutting-down`
///   arrives through EventBridge, SQS and the interruption function (its
///   poller asks every 250 ms here; Lambda's long-polls).
///
/// Each round must end with the job queued again as attempt 2, for the
/// right reason (then it is cancelled). The times are printed for
/// `scripts/bench`, with the interruption function's own time per
/// invocation; nothing here is timed against a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_interruption_to_queued_again() {
    let rounds = 5;
    let fast = Cadence {
        poll_wait: Duration::from_secs(1),
        heartbeat: Duration::from_millis(500),
        beat_every: Duration::from_secs(1),
        seen_every: Duration::from_secs(2),
        notice_every: Duration::from_millis(100),
        log_every: Duration::from_millis(500),
        progress_every: Duration::from_secs(1),
    };
    let w = world(2, fast).await;
    let ws = w.workspace().await;
    let tasks = start(&w);
    let (mut by_notice, mut by_event) = (Vec::new(), Vec::new());
    let mut gone: Vec<InstanceId> = Vec::new();
    for round in 0..2 * rounds {
        let id = format!("r{round:05}");
        w.submit_one(&id, &ws, 600.0).await;
        let (job, machine) =
            studio_tests::eventually("the job to run", Duration::from_secs(60), async || {
                let j = w
                    .obs
                    .store
                    .get_job(&studio_tests::job_id(&id))
                    .await
                    .ok()??;
                (j.state == JobState::Running && j.attempt == 1)
                    .then(|| (j.id.clone(), j.instance.clone().unwrap()))
            })
            .await;
        let notice = round % 2 == 0;
        let t0 = Instant::now();
        {
            let mut machines = w.machines.lock().unwrap();
            let Some(m) = machines.get_mut(&machine) else {
                panic!("round {round}: the job runs on {machine}, which the cloud does not know");
            };
            if notice {
                m.noticed_at = Some(Instant::now());
                m.notice.store(true, Ordering::SeqCst);
            } else {
                // Gone without a word: the machine's end tells.
                m.worker.take().unwrap().abort();
                m.stop = None;
            }
        }
        if !notice {
            gone.push(machine.clone());
            w.ec2_event(
                "EC2 Instance State-change Notification",
                &machine,
                Some("shutting-down"),
                Duration::ZERO,
            );
        }
        let j = studio_tests::eventually(
            "the job queued again",
            Duration::from_secs(60),
            async || {
                let j = w.obs.store.get_job(&job).await.ok()??;
                (j.attempt == 2).then_some(j)
            },
        )
        .await;
        let took = t0.elapsed();
        let reason = &j
            .events
            .iter()
            .rev()
            .find(|e| e.to == JobState::Interrupted)
            .expect("an interruption")
            .reason;
        if notice {
            by_notice.push(took);
            assert!(!reason.contains("shutting-down"), "round {round}: {reason}");
        } else {
            by_event.push(took);
            assert!(reason.contains("shutting-down"), "round {round}: {reason}");
        }
        studio_core::handlers::cancel(w.obs.store.as_ref(), &w.clock, &job, "test")
            .await
            .unwrap();
    }
    // The invocations that carried one of the rounds' `shutting-down` (the
    // default event bus is shared: other tests' machines' events come too,
    // as any instance's do in a real account). An invocation's time is
    // recorded when it returns, which is after the write the round saw: the
    // last round's may still be on its way, so wait for it.
    let carried = || -> Vec<Duration> {
        w.durations
            .lock()
            .unwrap()
            .get("handle-spot-interruption")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, bodies)| {
                bodies.contains("shutting-down") && gone.iter().any(|m| bodies.contains(m.as_str()))
            })
            .map(|(d, _)| d)
            .collect()
    };
    let handler = studio_tests::eventually(
        "every round's shutting-down to go through the function",
        Duration::from_secs(60),
        async || {
            let h = carried();
            (h.len() >= rounds).then_some(h)
        },
    )
    .await;
    let (notice_ms, event_ms, handler_n, handler_ms) = (
        median_ms(by_notice),
        median_ms(by_event),
        handler.len(),
        median_ms(handler),
    );
    report!(
        "interruption(aws): notice → queued again, median of {rounds}: {notice_ms:.0} ms; machine's shutting-down → queued again, median of {rounds}: {event_ms:.0} ms; interruption function, median of {handler_n} invocations: {handler_ms:.1} ms"
    );
    report!(
        "interruption(aws) json: {}",
        serde_json::json!({
            "rounds": rounds,
            "notice_ms": notice_ms,
            "event_ms": event_ms,
            "handler_ms": handler_ms,
            "handler_invocations": handler_n,
        })
    );
    w.shut(tasks).await;
}
