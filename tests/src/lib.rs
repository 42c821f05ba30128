//! Fixtures for the cross-crate scenarios in `tests/tests/`.
//!
//! # Layout
//! - [`LocalWorld`]: a local backend in a temporary `$STUDIO_HOME` with a
//!   [`ManualClock`], whose fleet starts real processes (`sleep`) as its
//!   instances, so the fleet's bookkeeping is real while the test decides
//!   what the "workers" do by calling the worker-side handlers itself.
//! - [`JobBuilder`]: `SubmitJob` bodies that read like sentences.

pub mod artifacts;
pub mod fidelity;
pub mod gcp;
pub mod pubsub_push;
pub mod stack;
pub mod template;

use std::sync::Arc;
use std::time::Duration;
use studio_core::clock::{ManualClock, Timestamp};
use studio_core::contract::{SubmitJob, WorkspaceRef};
use studio_core::handlers::Settings;
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::ports::{Received, WorkQueue};
use studio_core::resources::{Cloud, ResourceRequest};
use studio_local::LocalBackend;

pub struct LocalWorld {
    pub dir: tempfile::TempDir,
    pub be: LocalBackend,
    pub clock: ManualClock,
}

impl LocalWorld {
    pub async fn new(settings: Settings) -> LocalWorld {
        let dir = tempfile::tempdir().expect("a temp dir");
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let launcher: studio_local::fleet::Launcher = Arc::new(|_: &PoolKey, _: &InstanceId| {
            let mut c = std::process::Command::new("sleep");
            c.arg("600");
            c
        });
        let be = LocalBackend::open(dir.path(), settings, Arc::new(clock.clone()), launcher)
            .await
            .expect("local backend opens");
        LocalWorld { dir, be, clock }
    }

    pub async fn default() -> LocalWorld {
        LocalWorld::new(Settings {
            pool_grace: Duration::from_secs(60),
            max_attempts: 3,
            max_auto_workers: 3,
            ..Settings::default()
        })
        .await
    }

    /// Receives one item from a queue as a worker would (lease 30 s, no wait).
    pub async fn receive(&self, queue: &str) -> Option<Received> {
        self.be
            .queue
            .receive(queue, 1, Duration::from_secs(30), Duration::ZERO)
            .await
            .expect("receive")
            .pop()
    }
}

/// The pool of a job, read from the store.
#[allow(async_fn_in_trait)]
pub trait JobPool {
    async fn store_job_pool(&self, id: &str) -> PoolKey;
}

impl JobPool for LocalBackend {
    async fn store_job_pool(&self, id: &str) -> PoolKey {
        use studio_core::ports::JobStore;
        self.store
            .get_job(&job_id(id))
            .await
            .expect("store")
            .expect("job")
            .pool
    }
}

impl Drop for LocalWorld {
    fn drop(&mut self) {
        for pid in self.be.fleet.live_pids().unwrap_or_default() {
            // SAFETY: these are the `sleep` processes this world started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Builds `SubmitJob` messages: `JobBuilder::new("j1").workers(3).json()`.
pub struct JobBuilder(SubmitJob);

impl JobBuilder {
    pub fn new(id: &str) -> JobBuilder {
        JobBuilder(SubmitJob {
            job_id: Some(JobId::new(id).expect("a valid id")),
            workspace: WorkspaceRef {
                sha256: "0".repeat(64),
                bytes: 0,
            },
            entrypoint: "train.py".into(),
            ..SubmitJob::new(Cloud::Local, ResourceRequest::default(), "tester")
        })
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.0.num_workers = Some(n);
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.0.resources.cpus = n;
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.0.args = a.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn workspace(mut self, w: WorkspaceRef) -> Self {
        self.0.workspace = w;
        self
    }
    pub fn spec(self) -> SubmitJob {
        self.0
    }
    pub fn json(self) -> String {
        self.0.to_json()
    }
}

pub fn job_id(s: &str) -> JobId {
    JobId::new(s).expect("a valid id")
}

pub fn instance(s: &str) -> InstanceId {
    InstanceId::new(s).expect("a valid id")
}

/// The `moto_server` endpoint `scripts/test` started. The AWS scenarios need
/// it and fail (rather than pass vacuously) without it.
pub fn moto_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL must point at moto_server: run the tests with scripts/test, which starts it")
}

/// The URL of queue `name` (it must exist).
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .expect("GetQueueUrl")
        .queue_url
        .expect("a queue URL")
}

/// What the Lambda SQS poller does: receive up to 10 messages and hand them
/// over as an `SqsEvent` (record shape from `tests/fixtures/events/sqs-batch.json`).
pub async fn poll_as_lambda(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> aws_lambda_events::event::sqs::SqsEvent {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage");
    sqs_event(out.messages())
}

/// The `SqsEvent` Lambda's SQS poller hands a function for `messages`
/// (record shape from `tests/fixtures/events/sqs-batch.json`; the receive
/// count is the message's own when it was asked for).
pub fn sqs_event(
    messages: &[aws_sdk_sqs::types::Message],
) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut event: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/events/sqs-batch.json")).expect("fixture");
    let template = event["Records"][0].clone();
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut r = template.clone();
            r["messageId"] = m.message_id().unwrap_or_default().into();
            r["receiptHandle"] = m.receipt_handle().unwrap_or_default().into();
            r["body"] = m.body().unwrap_or_default().into();
            if let Some(n) = m.attributes().and_then(|a| {
                a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
            }) {
                r["attributes"]["ApproximateReceiveCount"] = n.as_str().into();
            }
            r
        })
        .collect();
    event["Records"] = records.into();
    serde_json::from_value(event).expect("an SqsEvent")
}

/// EC2's events to the deployment's interruption queue as infra routes
/// them: the rules `SpotWarningRule` and `InstanceStateRule`, with their
/// patterns read from `infra/template.yaml`.
pub async fn route_ec2_events(sdk: &aws_config::SdkConfig, cfg: &studio_aws::config::AwsConfig) {
    let eb = aws_sdk_eventbridge::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let queue = cfg
        .interruption_queue
        .as_ref()
        .expect("an interruption queue");
    let attr = aws_sdk_sqs::types::QueueAttributeName::QueueArn;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(queue_url(&sqs, queue).await)
        .attribute_names(attr.clone())
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .and_then(|mut a| a.remove(&attr))
        .expect("the queue's ARN");
    let template = template::Template::load();
    for logical in ["SpotWarningRule", "InstanceStateRule"] {
        let pattern = &template.resource(logical)["Properties"]["EventPattern"];
        let rule = format!("{}-{logical}", cfg.prefix);
        eb.put_rule()
            .name(&rule)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .expect("PutRule");
        eb.put_targets()
            .rule(&rule)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("q")
                    .arn(&arn)
                    .build()
                    .expect("a target"),
            )
            .send()
            .await
            .expect("PutTargets");
    }
}

/// A small seeded generator (xorshift64*): a failing chaos run replays
/// with its printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// A seed from `var` when set, else from the clock.
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A Studio AWS deployment of its own (unique names) inside `moto_server`:
/// tables, submit and interruption queues, bucket.
pub async fn moto_deployment() -> (studio_aws::config::AwsConfig, aws_config::SdkConfig) {
    use studio_core::ports::WorkQueue;
    let sdk = studio_aws::emulator_config("us-east-1", &moto_endpoint());
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let images = ec2.describe_images().send().await.expect("DescribeImages");
    let image = images.images()[0]
        .image_id()
        .expect("an image id")
        .to_string();
    let p = format!(
        "t{}",
        &ulid::Ulid::new().to_string().to_ascii_lowercase()[18..]
    );
    let cfg = studio_aws::config::AwsConfig {
        region: "us-east-1".into(),
        prefix: p.clone(),
        jobs_table: format!("{p}-jobs"),
        pools_table: format!("{p}-pools"),
        submit_queue: format!("{p}-submit"),
        interruption_queue: Some(format!("{p}-interruptions")),
        bucket: format!("{p}-artifacts"),
        // A GPU image too (the same one: moto runs no driver), so GPU jobs
        // are taken; a deployment without one refuses them at submit.
        worker_gpu_ami: Some(image.clone()),
        worker_ami: image,
        worker_ami_arm64: None,
        worker_instance_profile: None,
        studio_sha256_x86_64: None,
        studio_sha256_arm64: None,
        uv_sha256_x86_64: None,
        uv_sha256_arm64: None,
        subnets: vec![],
        availability_zones: vec!["us-east-1a".into()],
        max_workers: 5,
        pool_grace: std::time::Duration::from_secs(60),
        max_attempts: 3,
        heartbeat_timeout: std::time::Duration::from_secs(120),
    };
    studio_aws::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &cfg.jobs_table,
        &cfg.pools_table,
    )
    .ensure_tables()
    .await
    .expect("tables");
    let q = studio_aws::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk));
    q.ensure_queue(&cfg.submit_queue)
        .await
        .expect("submit queue");
    q.ensure_queue(cfg.interruption_queue.as_ref().unwrap())
        .await
        .expect("interruption queue");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(&cfg.bucket)
        .send()
        .await
        .expect("bucket");
    (cfg, sdk)
}

/// A stand-in for the machines' metadata services, speaking their real
/// shapes: EC2 IMDSv2 (`PUT /latest/api/token`, then token-checked GETs of
/// `spot/instance-action` and the rebalance recommendation, 404 until there
/// is one) and GCE (`instance/preempted` with `Metadata-Flavor: Google`).
/// Neither cloud ships an emulator for them.
pub struct MetadataStandIn {
    pub url: String,
    terminate: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rebalance: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The instance profile's role and its credentials' JSON document.
    role: std::sync::Arc<std::sync::Mutex<Option<(String, String)>>>,
}

impl MetadataStandIn {
    pub const TOKEN: &'static str = "imds-token-1";

    pub async fn start() -> MetadataStandIn {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let terminate = std::sync::Arc::new(AtomicBool::new(false));
        let rebalance = std::sync::Arc::new(AtomicBool::new(false));
        let role = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, String)>));
        let (t, r, ro) = (terminate.clone(), rebalance.clone(), role.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (t, r, ro) = (t.clone(), r.clone(), ro.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let lower = req.to_ascii_lowercase();
                    let line = req.lines().next().unwrap_or_default().to_string();
                    let token_ok = lower.contains(&format!(
                        "x-aws-ec2-metadata-token: {}",
                        MetadataStandIn::TOKEN
                    ));
                    let (status, body) = if line.starts_with("PUT /latest/api/token ") {
                        if lower.contains("x-aws-ec2-metadata-token-ttl-seconds:") {
                            (200, MetadataStandIn::TOKEN.to_string())
                        } else {
                            (400, String::new())
                        }
                    } else if line.starts_with("GET /latest/meta-data/") && !token_ok {
                        (401, String::new())
                    } else if line.starts_with("GET /latest/meta-data/instance-id ") {
                        (200, "i-0standin0000001".to_string())
                    } else if let Some(rest) =
                        line.strip_prefix("GET /latest/meta-data/iam/security-credentials/")
                    {
                        // IMDS lists the profile's role, then serves its
                        // temporary credentials under the role's name.
                        let asked = rest.split(' ').next().unwrap_or_default();
                        match ro.lock().unwrap().clone() {
                            Some((name, _)) if asked.is_empty() => (200, name),
                            Some((name, doc)) if asked == name => (200, doc),
                            _ => (404, String::new()),
                        }
                    } else if line.starts_with("GET /latest/meta-data/placement/availability-zone ")
                    {
                        (200, "us-east-1c".to_string())
                    } else if line.starts_with("GET /computeMetadata/v1/instance/zone") {
                        (200, "projects/123/zones/us-central1-f".to_string())
                    } else if line.starts_with("GET /latest/meta-data/spot/instance-action ") {
                        if t.load(Ordering::SeqCst) {
                            (
                                200,
                                r#"{"action":"terminate","time":"2026-11-28T21:00:00Z"}"#
                                    .to_string(),
                            )
                        } else {
                            (404, String::new())
                        }
                    } else if line
                        .starts_with("GET /latest/meta-data/events/recommendations/rebalance ")
                    {
                        if r.load(Ordering::SeqCst) {
                            (200, r#"{"noticeTime":"2026-11-28T20:58:00Z"}"#.to_string())
                        } else {
                            (404, String::new())
                        }
                    } else if line.starts_with("GET /computeMetadata/v1/instance/preempted") {
                        if lower.contains("metadata-flavor: google") {
                            (
                                200,
                                if t.load(Ordering::SeqCst) {
                                    "TRUE"
                                } else {
                                    "FALSE"
                                }
                                .to_string(),
                            )
                        } else {
                            (403, String::new())
                        }
                    } else {
                        (404, String::new())
                    };
                    let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        MetadataStandIn {
            url,
            terminate,
            rebalance,
            role,
        }
    }

    /// Gives the machine an instance profile: `role`'s temporary
    /// credentials, in the document shape IMDS serves.
    pub fn set_role_credentials(&self, role: &str, key_id: &str, secret: &str, token: &str) {
        let doc = serde_json::to_string_pretty(&serde_json::json!({
            "Code": "Success",
            "LastUpdated": "2026-12-07T00:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": key_id,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": "2026-12-07T06:00:00Z",
        }))
        .unwrap();
        *self.role.lock().unwrap() = Some((role.to_string(), doc));
    }

    pub fn set_terminate(&self, on: bool) {
        self.terminate
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_rebalance(&self, on: bool) {
        self.rebalance
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls `f` every 50 ms until it yields, failing after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`moto_deployment`] behind the fidelity proxy: the same deployment, with
/// an `SdkConfig` whose endpoint is a [`fidelity::Fidelity`] in front of
/// moto, its rules timed by `clock`.
pub async fn fidelity_deployment(
    clock: studio_core::clock::ManualClock,
) -> (
    studio_aws::config::AwsConfig,
    aws_config::SdkConfig,
    fidelity::Fidelity,
) {
    let (cfg, _) = moto_deployment().await;
    let fidelity = fidelity::Fidelity::start(&moto_endpoint(), clock).await;
    let sdk = studio_aws::emulator_config("us-east-1", &fidelity.url);
    (cfg, sdk, fidelity)
}

/// A worker tuned for tests on the AWS adapters: beats and polls in tenths
/// of a second, leaves idle after five minutes, no notices, no virtualenvs.
pub fn quick_worker_config(
    pool: &studio_core::ids::PoolKey,
    instance: &InstanceId,
    work_root: std::path::PathBuf,
) -> studio_core::worker::WorkerConfig {
    studio_core::worker::WorkerConfig {
        pool: pool.clone(),
        instance: instance.clone(),
        lease: Duration::from_secs(30),
        beat_every: Duration::from_millis(100),
        poll_wait: Duration::from_millis(200),
        heartbeat: Duration::from_millis(100),
        seen_every: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(300),
        term_grace: Duration::from_secs(2),
        python: "python3".into(),
        notice: std::sync::Arc::new(studio_core::notice::NoNotice),
        notice_every: Duration::from_secs(5),
        checkpoint_every: Duration::from_secs(1),
        log_every: Duration::from_millis(100),
        progress_every: Duration::from_millis(100),
        env_root: work_root.join("envs"),
        work_root,
        uv: None,
        uv_env: uv_env(),
        job_users: None,
        metadata: Vec::new(),
        inputs: None,
        local_limits: false,
    }
}

/// Writes the wheel of a one-module pure-Python package into `dir`, offline
/// (`fixtures/python/make_wheel.py`, nothing but the standard library);
/// returns its file name, for a `requirements.txt` line `./NAME`.
pub fn make_wheel(dir: &std::path::Path, name: &str, version: &str, source: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/python/make_wheel.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .args([name, version, source])
        .output()
        .expect("python3, to write a wheel");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{name}-{version}-py3-none-any.whl")
}

/// The environment tests give uv: this process's `PATH` (where
/// `scripts/test` puts uv and the machine's interpreters are), and uv kept
/// offline (no test downloads anything: packages come from the workspace).
pub fn uv_env() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("UV_OFFLINE".into(), "1".into()),
        ("UV_PYTHON_DOWNLOADS".into(), "never".into()),
    ]
}

/// Jobs made for the listing tests, created in `store` directly: 57 of
/// them, two by two with the same creation time (the id breaks the tie),
/// every third owned by `bob` (the rest by `alice`), two pools (1 and 2
/// CPUs), every fifth cancelled, and job `job007` carrying a secret in its
/// env. Returns them newest first, as a listing must.
pub async fn listing_jobs(store: &dyn studio_core::ports::JobStore) -> Vec<studio_core::job::Job> {
    use studio_core::plan::Planner as _;
    let planner = studio_core::plan::CatalogPlanner::shipped();
    let base = 1_790_000_000_000i64;
    let mut made = Vec::new();
    for i in 0..57u32 {
        let mut spec = studio_core::contract::SubmitJob::new(
            studio_core::resources::Cloud::Local,
            studio_core::resources::ResourceRequest::parse(1 + i % 2, 0, None, None)
                .expect("a request"),
            if i % 3 == 0 { "bob" } else { "alice" },
        );
        spec.entrypoint = "train.py".into();
        if i == 7 {
            spec.env.insert("TOKEN".into(), "s3cr3t-value".into());
        }
        let plan = planner.plan(&spec).expect("a plan");
        let pool = studio_core::pool::PoolSpec::for_job(&spec, &plan).key();
        let at = Timestamp(base + i64::from(i / 2) * 1000);
        let mut job =
            studio_core::job::Job::new(job_id(&format!("job{i:03}")), spec, plan, pool, at, "test");
        if i % 5 == 0 {
            job.cancel(at, "test", "cancelled by the test")
                .expect("queued can be cancelled");
        }
        store.create_job(&job).await.expect("create");
        made.push(job);
    }
    made.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    made
}

/// Every page of `q` (its `limit` a page) from `store`, the ids in order,
/// and how many pages it took.
pub async fn all_pages(
    store: &dyn studio_core::ports::JobStore,
    mut q: studio_core::ports::JobQuery,
) -> (Vec<String>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    loop {
        let page = store.page_jobs(&q).await.expect("a page");
        pages += 1;
        assert!(
            page.jobs.len() <= q.limit as usize,
            "a page holds at most its limit"
        );
        ids.extend(page.jobs.iter().map(|j| j.id.to_string()));
        match page.next {
            Some(n) => q.before = Some(n),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the pages end");
    }
}

/// The listing contract every store keeps: every job once, newest first,
/// paged without gap or repeat, alone and with each filter.
pub async fn check_listing(store: &dyn studio_core::ports::JobStore) {
    use studio_core::job::{Job, JobState};
    use studio_core::ports::JobQuery;
    let made = listing_jobs(store).await;
    let ids = |keep: &dyn Fn(&Job) -> bool| -> Vec<String> {
        made.iter()
            .filter(|j| keep(j))
            .map(|j| j.id.to_string())
            .collect()
    };
    let q = |limit| JobQuery {
        limit,
        ..JobQuery::default()
    };
    assert_eq!(all_pages(store, q(20)).await, (ids(&|_| true), 3));
    assert_eq!(
        all_pages(store, q(57)).await,
        (ids(&|_| true), 1),
        "exactly one full page"
    );
    assert_eq!(all_pages(store, q(1)).await.0, ids(&|_| true));
    let bob = JobQuery {
        owner: Some("bob".into()),
        ..q(7)
    };
    assert_eq!(
        all_pages(store, bob).await.0,
        ids(&|j| j.spec.owner == "bob")
    );
    let cancelled = JobQuery {
        state: Some(JobState::Cancelled),
        ..q(4)
    };
    assert_eq!(
        all_pages(store, cancelled).await.0,
        ids(&|j| j.state == JobState::Cancelled)
    );
    let pool = made[0].pool.clone();
    let mixed = JobQuery {
        state: Some(JobState::Queued),
        owner: Some("alice".into()),
        pool: Some(pool.clone()),
        ..q(5)
    };
    let want = ids(&|j| j.state == JobState::Queued && j.spec.owner == "alice" && j.pool == pool);
    assert!(!want.is_empty());
    assert_eq!(all_pages(store, mixed).await.0, want);
    let nobody = JobQuery {
        owner: Some("carol".into()),
        ..q(10)
    };
    assert_eq!(all_pages(store, nobody).await, (vec![], 1));
}

/// Starts `cmd` with its stdout piped and returns it with the rest of the
/// first line it prints after `prefix` (a server announcing its address).
///
/// # Panics
/// When the first line does not start with `prefix`.
pub fn spawn_announcing(
    mut cmd: std::process::Command,
    prefix: &str,
) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("its first line");
    let said = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{cmd:?} said {line:?}"))
        .to_string();
    (child, said)
}
