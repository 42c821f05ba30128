//! Prove it (issue 13): bad input, and delivery twice and out of order.
//!
//! **Bad input**, one table: `SubmitJob` bodies through the submit function's
//! code, EventBridge envelopes through the interruption function's code
//! (both on `moto_server`, delivered by SQS as Lambda's poller does), and
//! tampered workspace tarballs through the unpacker every worker uses. Each
//! case must name its problem, panic nothing, and change nothing: after
//! each, the jobs and pools tables, the deployment's queues and groups and
//! the bucket are as before; a poison message is in its dead-letter queue
//! with the reason, and nowhere else.
//!
//! **Duplicates**: one scenario (submit, scale, a spot warning, the
//! machine's end) is played once, then on a second deployment with every
//! SQS message and EventBridge event delivered twice and the instance's
//! `terminated` before its spot warning; the two end states are compared
//! record by record.

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{json, Value};
use std::sync::Arc;
use studio_aws::config::AwsConfig;
use studio_aws::lambda::{self, Fate};
use studio_core::clock::ManualClock;
use studio_core::handlers::Ctx;
use studio_core::job::{Job, JobState};
use studio_core::resources::Cloud;
use studio_tests::{job_id, JobBuilder};

/// Says what a test of size and seed did, on the real stderr: libtest
/// captures `eprintln!` of passing tests, and CI's log must show the sizes
/// and seeds of every run.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

struct World {
    ctx: Ctx,
    sdk: aws_config::SdkConfig,
    cfg: AwsConfig,
}

async fn world() -> World {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let clock = ManualClock::new(studio_core::clock::Clock::now(
        &studio_core::clock::SystemClock,
    ));
    let ctx = lambda::context(&cfg, &sdk, Arc::new(clock));
    World { ctx, sdk, cfg }
}

/// What a bad case must leave as it found it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    jobs: i32,
    pools: i32,
    queues: Vec<String>,
    groups: Vec<String>,
    objects: Vec<String>,
    /// Messages waiting in each of the deployment's queues (DLQs aside).
    waiting: Vec<(String, i32)>,
}

impl World {
    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    async fn url(&self, queue: &str) -> String {
        studio_tests::queue_url(&self.sqs(), queue).await
    }

    async fn snapshot(&self) -> Snapshot {
        let ddb = aws_sdk_dynamodb::Client::new(&self.sdk);
        let count = |t: String| {
            let ddb = ddb.clone();
            async move { ddb.scan().table_name(t).send().await.unwrap().count() }
        };
        let queues: Vec<String> = self
            .sqs()
            .list_queues()
            .queue_name_prefix(&self.cfg.prefix)
            .send()
            .await
            .unwrap()
            .queue_urls()
            .iter()
            .map(|u| u.rsplit('/').next().unwrap().to_string())
            .collect();
        let mut waiting = Vec::new();
        for q in queues.iter().filter(|q| !q.ends_with("-dlq")) {
            let d = self.ctx.queue.depth(q).await.unwrap();
            waiting.push((q.clone(), (d.visible + d.in_flight) as i32));
        }
        let groups = aws_sdk_autoscaling::Client::new(&self.sdk)
            .describe_auto_scaling_groups()
            .send()
            .await
            .unwrap()
            .auto_scaling_groups()
            .iter()
            .filter_map(|g| g.auto_scaling_group_name())
            .filter(|n| n.starts_with(&self.cfg.prefix))
            .map(String::from)
            .collect();
        let s3 = studio_aws::s3::client(&self.sdk);
        let objects = s3
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect();
        let mut queues = queues;
        queues.sort();
        Snapshot {
            jobs: count(self.cfg.jobs_table.clone()).await,
            pools: count(self.cfg.pools_table.clone()).await,
            queues,
            groups,
            objects,
            waiting,
        }
    }

    /// Sends `body` to `queue`, hands it to `run` as Lambda's poller would,
    /// and returns what became of it.
    async fn deliver<F, Fut>(&self, queue: &str, body: &str, run: F) -> Fate
    where
        F: FnOnce(SqsEvent) -> Fut,
        Fut: std::future::Future<
            Output = (aws_lambda_events::event::sqs::SqsBatchResponse, Vec<Fate>),
        >,
    {
        let url = self.url(queue).await;
        self.sqs()
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
        let event = studio_tests::poll_as_lambda(&self.sqs(), &url).await;
        assert_eq!(event.records.len(), 1);
        let receipt = event.records[0].receipt_handle.clone().unwrap();
        let (resp, mut fates) = run(event).await;
        assert!(
            resp.batch_item_failures.is_empty(),
            "not retried: {fates:?}"
        );
        // Lambda's poller deletes what the function did not report failed:
        // left in flight, it would come back once its visibility timeout
        // ends (seen when this test ran slower than that timeout).
        self.sqs()
            .delete_message()
            .queue_url(&url)
            .receipt_handle(receipt)
            .send()
            .await
            .unwrap();
        fates.pop().unwrap()
    }

    /// The one message in `queue`'s DLQ: its body and reason (then deleted).
    async fn dead_letter(&self, queue: &str) -> (String, String) {
        let url = self.url(&format!("{queue}-dlq")).await;
        let out = self
            .sqs()
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        assert_eq!(out.messages().len(), 1, "one dead letter");
        let m = &out.messages()[0];
        self.sqs()
            .delete_message()
            .queue_url(&url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
        let reason = m
            .message_attributes()
            .and_then(|a| a.get("studio-reason"))
            .and_then(|a| a.string_value())
            .unwrap_or_default()
            .to_string();
        (m.body().unwrap_or_default().to_string(), reason)
    }
}

/// A valid request's JSON, changed by `f`.
fn spec_with(f: impl FnOnce(&mut Value)) -> String {
    let mut v = serde_json::to_value(JobBuilder::new("bad-input").spec()).unwrap();
    f(&mut v);
    v.to_string()
}

fn submit_cases() -> Vec<(&'static str, String, &'static str)> {
    let big = "x".repeat(70 * 1024);
    vec![
        (
            "not JSON",
            "{not json".into(),
            "not a valid SubmitJob message",
        ),
        (
            "a JSON array",
            "[]".into(),
            "unsupported SubmitJob version 0",
        ),
        (
            "JSON null",
            "null".into(),
            "unsupported SubmitJob version 0",
        ),
        (
            "an empty object",
            "{}".into(),
            "unsupported SubmitJob version 0",
        ),
        (
            "a python that is neither a version nor an absolute path",
            spec_with(|v| {
                v["version"] = json!(3);
                v["python"] = json!("python3; curl evil");
            }),
            "python 'python3; curl evil' must be a version (3.12, 3.12.1) or an interpreter's absolute path",
        ),
        (
            "python in a version 2 message",
            spec_with(|v| {
                v["version"] = json!(2);
                v["python"] = json!("3.12");
            }),
            "field 'python' needs SubmitJob version 3 (the message says version 2)",
        ),
        (
            "an unknown version",
            spec_with(|v| v["version"] = json!(4)),
            "unsupported SubmitJob version 4: this build reads version 1 to 3",
        ),
        (
            "a version as text",
            spec_with(|v| v["version"] = json!("1")),
            "unsupported SubmitJob version 0",
        ),
        (
            "a negative version",
            spec_with(|v| v["version"] = json!(-1)),
            "unsupported SubmitJob version 0",
        ),
        (
            "a huge version",
            spec_with(|v| v["version"] = json!(1u64 << 40)),
            "unsupported SubmitJob version 4294967295",
        ),
        (
            "no workspace",
            spec_with(|v| {
                v.as_object_mut().unwrap().remove("workspace");
            }),
            "missing field `workspace`",
        ),
        (
            "no entrypoint",
            spec_with(|v| {
                v.as_object_mut().unwrap().remove("entrypoint");
            }),
            "missing field `entrypoint`",
        ),
        (
            "no owner",
            spec_with(|v| {
                v.as_object_mut().unwrap().remove("owner");
            }),
            "missing field `owner`",
        ),
        (
            "an unknown field",
            spec_with(|v| v["cpu"] = json!(8)),
            "unknown field `cpu`",
        ),
        (
            "an unknown resources field",
            spec_with(|v| v["resources"]["memory"] = json!(8)),
            "unknown field `memory`",
        ),
        (
            "an unknown workspace field",
            spec_with(|v| v["workspace"]["url"] = json!("x")),
            "unknown field `url`",
        ),
        (
            "cpus as text",
            spec_with(|v| v["resources"]["cpus"] = json!("eight")),
            "invalid type: string \"eight\"",
        ),
        (
            "negative gpus",
            spec_with(|v| v["resources"]["gpus"] = json!(-1)),
            "invalid value: integer `-1`",
        ),
        (
            "ram as text",
            spec_with(|v| v["resources"]["ram_mib"] = json!("16g")),
            "invalid type: string \"16g\"",
        ),
        (
            "zero cpus",
            spec_with(|v| v["resources"]["cpus"] = json!(0)),
            "cpus must be at least 1",
        ),
        (
            "ram not a multiple of 256",
            spec_with(|v| v["resources"]["ram_mib"] = json!(1000)),
            "multiple of 256",
        ),
        (
            "args not a list",
            spec_with(|v| v["args"] = json!("--lr 0.1")),
            "invalid type: string \"--lr 0.1\", expected a sequence",
        ),
        (
            "args of numbers",
            spec_with(|v| v["args"] = json!([1])),
            "invalid type: integer `1`, expected a string",
        ),
        (
            "env as a list",
            spec_with(|v| v["env"] = json!(["A=1"])),
            "expected a map",
        ),
        (
            "env of numbers",
            spec_with(|v| v["env"] = json!({"A": 1})),
            "invalid type: integer `1`, expected a string",
        ),
        (
            "an env name starting with a digit",
            spec_with(|v| v["env"] = json!({"1BAD": "x"})),
            "env name '1BAD' is not a valid variable name",
        ),
        (
            "an env name with '='",
            spec_with(|v| v["env"] = json!({"A=B": "x"})),
            "env name 'A=B' is not a valid variable name",
        ),
        (
            "a reserved env name",
            spec_with(|v| v["env"] = json!({"STUDIO_JOB_ID": "x"})),
            "env name 'STUDIO_JOB_ID' is reserved for Studio",
        ),
        (
            "oversized args",
            spec_with(|v| v["args"] = json!([big])),
            "at most 65536 are allowed",
        ),
        (
            "an entrypoint with ..",
            spec_with(|v| v["entrypoint"] = json!("../train.py")),
            "entrypoint '../train.py' must be a relative path inside the workspace",
        ),
        (
            "an absolute entrypoint",
            spec_with(|v| v["entrypoint"] = json!("/etc/passwd")),
            "entrypoint '/etc/passwd' must be a relative path",
        ),
        (
            "an empty entrypoint",
            spec_with(|v| v["entrypoint"] = json!("")),
            "entrypoint '' must be a relative path",
        ),
        (
            "an entrypoint escaping midway",
            spec_with(|v| v["entrypoint"] = json!("a/../../b.py")),
            "entrypoint 'a/../../b.py'",
        ),
        (
            "a blank owner",
            spec_with(|v| v["owner"] = json!("   ")),
            "owner must not be empty",
        ),
        (
            "zero num_workers",
            spec_with(|v| v["num_workers"] = json!(0)),
            "--num-workers must be at least 1",
        ),
        (
            "num_workers as text",
            spec_with(|v| v["num_workers"] = json!("3")),
            "invalid type: string \"3\"",
        ),
        (
            "num_workers above the cap",
            spec_with(|v| v["num_workers"] = json!(1000)),
            "--num-workers 1000 is above this deployment's cap of 5 workers",
        ),
        (
            "zero max_duration_secs",
            spec_with(|v| v["max_duration_secs"] = json!(0)),
            "max_duration_secs and lifetime_secs must be at least 1",
        ),
        (
            "zero lifetime_secs",
            spec_with(|v| v["lifetime_secs"] = json!(0)),
            "max_duration_secs and lifetime_secs must be at least 1",
        ),
        (
            "an unknown cloud",
            spec_with(|v| v["cloud"] = json!("azure")),
            "unknown variant `azure`",
        ),
        (
            "an unknown arch",
            spec_with(|v| v["arch"] = json!("sparc")),
            "arch must be x86_64 or arm64",
        ),
        (
            "a bid of an unknown kind",
            spec_with(|v| v["bid"] = json!({"dollars": 1})),
            "unknown variant `dollars`",
        ),
        (
            "a region with a slash",
            spec_with(|v| v["region"] = json!("us-east-1/../x")),
            "region 'us-east-1/../x' may hold only",
        ),
        (
            "a GPU type too long",
            spec_with(|v| v["gpu_type"] = json!("A".repeat(65))),
            "gpu_type",
        ),
        (
            "a job id with a space",
            spec_with(|v| v["job_id"] = json!("a b")),
            "job id",
        ),
        (
            "a job id too long",
            spec_with(|v| v["job_id"] = json!("j".repeat(65))),
            "job id",
        ),
        (
            "a workspace hash as a number",
            spec_with(|v| v["workspace"]["sha256"] = json!(5)),
            "invalid type: integer `5`, expected a string",
        ),
        (
            "nothing fits",
            spec_with(|v| {
                v["cloud"] = json!("ec2");
                v["resources"]["gpus"] = json!(64);
            }),
            "no EC2 instance type",
        ),
        (
            "outputs in version 1",
            spec_with(|v| v["outputs"] = json!(["runs"])),
            "field 'outputs' needs SubmitJob version 2 (the message says version 1)",
        ),
        (
            "an output with ..",
            spec_with(|v| {
                v["version"] = json!(2);
                v["outputs"] = json!(["../up"]);
            }),
            "output '../up' must be a relative path inside the workspace",
        ),
        (
            "an absolute output",
            spec_with(|v| {
                v["version"] = json!(2);
                v["outputs"] = json!(["/etc"]);
            }),
            "output '/etc' must be a relative path",
        ),
        (
            "65 outputs",
            spec_with(|v| {
                v["version"] = json!(2);
                v["outputs"] = json!((0..65).map(|i| format!("o{i}")).collect::<Vec<_>>());
            }),
            "at most 64 outputs",
        ),
        (
            "a zero budget",
            spec_with(|v| {
                v["version"] = json!(2);
                v["max_cost_cents"] = json!(0);
            }),
            "max_cost_cents must be at least 1",
        ),
        (
            "a budget in dollars",
            spec_with(|v| {
                v["version"] = json!(2);
                v["max_cost_cents"] = json!(2.5);
            }),
            "invalid type: floating point `2.5`",
        ),
        (
            "an input from gs://",
            spec_with(|v| {
                v["version"] = json!(2);
                v["inputs"] = json!([{"url": "gs://b/p", "path": "data"}]);
            }),
            "the URL must be s3://BUCKET/PREFIX",
        ),
        (
            "an input to an absolute path",
            spec_with(|v| {
                v["version"] = json!(2);
                v["inputs"] = json!([{"url": "s3://bucket/p", "path": "/etc"}]);
            }),
            "input 's3://bucket/p' -> '/etc'",
        ),
        (
            "an input with an unknown field",
            spec_with(|v| {
                v["version"] = json!(2);
                v["inputs"] = json!([{"url": "s3://bucket/p", "path": "d", "region": "x"}]);
            }),
            "unknown field `region`",
        ),
    ]
}

fn event(detail_type: &str, source: &str, detail: Value) -> String {
    json!({
        "version": "0", "id": "ev-bad", "detail-type": detail_type, "source": source,
        "account": "123456789012", "time": "2026-11-29T08:00:00Z", "region": "us-east-1",
        "resources": [], "detail": detail
    })
    .to_string()
}

fn envelope_cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("not JSON", "<xml/>".into(), "not an EventBridge event"),
        (
            "an SNS notification",
            json!({"Type": "Notification", "Message": "{}"}).to_string(),
            "not an EventBridge event",
        ),
        (
            "an event of another service",
            event("Object Created", "aws.s3", json!({})),
            "unexpected event 'Object Created' from aws.s3",
        ),
        (
            "an EC2 event of another kind",
            event("EBS Volume Notification", "aws.ec2", json!({})),
            "unexpected event 'EBS Volume Notification'",
        ),
        (
            "a warning without an instance",
            event(
                "EC2 Spot Instance Interruption Warning",
                "aws.ec2",
                json!({"instance-action": "terminate"}),
            ),
            "missing field `instance-id`",
        ),
        (
            "an instance id that is a number",
            event(
                "EC2 Instance State-change Notification",
                "aws.ec2",
                json!({"instance-id": 7, "state": "terminated"}),
            ),
            "invalid type: integer `7`",
        ),
        (
            "an unknown instance state",
            event(
                "EC2 Instance State-change Notification",
                "aws.ec2",
                json!({"instance-id": "i-0abc", "state": "melted"}),
            ),
            "unknown instance state Some(\"melted\")",
        ),
        (
            "an instance id with a slash",
            event(
                "EC2 Instance State-change Notification",
                "aws.ec2",
                json!({"instance-id": "i-0/../x", "state": "terminated"}),
            ),
            "event ev-bad:",
        ),
        (
            "a Health event of another service",
            event(
                "AWS Health Event",
                "aws.health",
                json!({"service": "RDS", "eventTypeCategory": "scheduledChange", "eventTypeCode": "X", "affectedEntities": [{"entityValue": "db-1"}]}),
            ),
            "is not an EC2 scheduled change",
        ),
        (
            "a Health event naming no instance",
            event(
                "AWS Health Event",
                "aws.health",
                json!({"service": "EC2", "eventTypeCategory": "scheduledChange", "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "affectedEntities": []}),
            ),
            "names no affected instance",
        ),
    ]
}

/// A `.tar.gz` of hand-made entries: `(path, kind, body)`, kind one of
/// `file`, `symlink` (body: target), `link` (body: target), `fifo`, `dir`;
/// `size` overrides the header's size of a file.
fn tarball(entries: &[(&str, &str, &str)], size: Option<u64>) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        // Written raw: `set_path` refuses `..` and absolute paths, which is
        // what a tampered tarball has.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(0);
        match *kind {
            "file" => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size.unwrap_or(body.len() as u64));
            }
            "dir" => h.set_entry_type(tar::EntryType::Directory),
            "fifo" => h.set_entry_type(tar::EntryType::Fifo),
            "symlink" | "link" => {
                h.set_entry_type(if *kind == "symlink" {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_link_name(body).unwrap();
            }
            _ => unreachable!(),
        }
        h.set_cksum();
        if *kind == "file" && size.is_none() {
            b.append(&h, body.as_bytes()).unwrap();
        } else {
            b.append(&h, std::io::empty()).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn tarball_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let many: Vec<(String, &str, &str)> = (0..200_001)
        .map(|i| (format!("f{i}"), "file", ""))
        .collect();
    let many_refs: Vec<(&str, &str, &str)> =
        many.iter().map(|(p, k, b)| (p.as_str(), *k, *b)).collect();
    vec![
        (
            "a path with ..",
            tarball(&[("../escaped.py", "file", "x")], None),
            "entry '../escaped.py' would be written outside the workspace",
        ),
        (
            "a path with .. midway",
            tarball(&[("a/../../escaped.py", "file", "x")], None),
            "would be written outside the workspace",
        ),
        (
            "an absolute path",
            tarball(&[("/tmp/studio-escaped.py", "file", "x")], None),
            "entry '/tmp/studio-escaped.py' would be written outside",
        ),
        (
            "a symlink out of the workspace",
            tarball(&[("etc", "symlink", "/etc")], None),
            "entry 'etc' is a symbolic link",
        ),
        (
            "a symlink then a file through it",
            tarball(
                &[("up", "symlink", ".."), ("up/escaped.py", "file", "x")],
                None,
            ),
            "entry 'up' is a symbolic link",
        ),
        (
            "a hard link to a machine file",
            tarball(&[("shadow", "link", "/etc/shadow")], None),
            "entry 'shadow' is a hard link",
        ),
        (
            "a FIFO",
            tarball(&[("pipe", "fifo", "")], None),
            "entry 'pipe' is a FIFO",
        ),
        (
            "a file claiming 4 GiB",
            tarball(&[("bomb.bin", "file", "")], Some(4 << 30)),
            "it expands to more than 3072 MiB (at 'bomb.bin')",
        ),
        (
            "200,001 entries",
            tarball(&many_refs, None),
            "it holds more than 200000 entries",
        ),
        (
            "not gzip at all",
            b"PK\x03\x04 a zip file".to_vec(),
            "workspace",
        ),
    ]
}

const WEBHOOK_SECRET: &str = "the-ci-key-secret-0123";

/// Webhook requests (`studio_aws::webhook`, the function URL's code), each
/// with the status and the words its refusal must carry. `now` is the
/// clock's Unix seconds.
fn webhook_cases(
    now: i64,
) -> Vec<(
    &'static str,
    studio_aws::webhook::Request,
    u16,
    &'static str,
)> {
    use studio_aws::webhook::{sign, Request, MAX_BODY};
    let job = br#"{"version": 1, "cloud": "ec2", "workspace": {"sha256": "0c1e3b5d7f9a1c3e5b7d9f1a9f2a5c0e4b7d1a3f6e8c0b2d4f6a8c0e1b3d5f7a", "bytes": 512}, "entrypoint": "hello.py"}"#;
    let req = |method: &str, path: &str, headers: &[(&str, String)], body: &[u8]| Request {
        method: method.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        body: body.to_vec(),
    };
    let signed = |key: &str, secret: &str, ts: &str, body: &[u8]| {
        vec![
            ("x-studio-key", key.to_string()),
            ("x-studio-timestamp", ts.to_string()),
            ("x-studio-signature", sign(secret.as_bytes(), ts, body)),
        ]
    };
    let ts = now.to_string();
    let ok = |body: &[u8]| signed("ci", WEBHOOK_SECRET, &ts, body);
    let spec = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(job).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let dotdot = spec(&|v| v["entrypoint"] = "../escape.py".into());
    let absolute = spec(&|v| v["entrypoint"] = "/etc/passwd".into());
    let taken = spec(&|v| v["job_id"] = "good".into());
    let big = vec![b' '; MAX_BODY + 1];
    vec![
        (
            "webhook: wrong secret",
            req(
                "POST",
                "/v1/jobs",
                &signed("ci", "not-the-secret-at-all", &ts, job),
                job,
            ),
            401,
            "does not match",
        ),
        (
            "webhook: unknown key",
            req(
                "POST",
                "/v1/jobs",
                &signed("intruder", WEBHOOK_SECRET, &ts, job),
                job,
            ),
            401,
            "unknown key",
        ),
        (
            "webhook: stale timestamp",
            req(
                "POST",
                "/v1/jobs",
                &signed("ci", WEBHOOK_SECRET, &(now - 301).to_string(), job),
                job,
            ),
            401,
            "s old",
        ),
        (
            "webhook: timestamp in the future",
            req(
                "POST",
                "/v1/jobs",
                &signed("ci", WEBHOOK_SECRET, &(now + 301).to_string(), job),
                job,
            ),
            401,
            "in the future",
        ),
        (
            "webhook: timestamp not a number",
            req(
                "POST",
                "/v1/jobs",
                &signed("ci", WEBHOOK_SECRET, "yesterday", job),
                job,
            ),
            401,
            "not Unix seconds",
        ),
        (
            "webhook: no signature",
            req("POST", "/v1/jobs", &ok(job)[..2], job),
            401,
            "missing header x-studio-signature",
        ),
        (
            "webhook: body changed after signing",
            req(
                "POST",
                "/v1/jobs",
                &ok(job),
                &[job.as_slice(), b" "].concat(),
            ),
            401,
            "does not match",
        ),
        (
            "webhook: body over the limit",
            req("POST", "/v1/jobs", &ok(&big), &big),
            413,
            "at most",
        ),
        (
            "webhook: body not JSON",
            req("POST", "/v1/jobs", &ok(b"{not json"), b"{not json"),
            400,
            "not JSON",
        ),
        (
            "webhook: body a JSON array",
            req("POST", "/v1/jobs", &ok(b"[]"), b"[]"),
            400,
            "JSON object",
        ),
        (
            "webhook: schema violation",
            req(
                "POST",
                "/v1/jobs",
                &ok(br#"{"version": 1, "resources": {"cpus": "eight"}}"#),
                br#"{"version": 1, "resources": {"cpus": "eight"}}"#,
            ),
            400,
            "not a valid SubmitJob",
        ),
        (
            "webhook: an owner in the body",
            req(
                "POST",
                "/v1/jobs",
                &ok(&spec(&|v| v["owner"] = "someone-else".into())),
                &spec(&|v| v["owner"] = "someone-else".into()),
            ),
            400,
            "owner is the signing key",
        ),
        (
            "webhook: entrypoint with ..",
            req("POST", "/v1/jobs", &ok(&dotdot), &dotdot),
            400,
            "..",
        ),
        (
            "webhook: absolute entrypoint",
            req("POST", "/v1/jobs", &ok(&absolute), &absolute),
            400,
            "/etc/passwd",
        ),
        (
            "webhook: another key's job id",
            req("POST", "/v1/jobs", &ok(&taken), &taken),
            409,
            "belongs to another key",
        ),
        (
            "webhook: no such route",
            req("POST", "/v1/jobz", &ok(job), job),
            404,
            "no route",
        ),
        (
            "webhook: DELETE a job",
            req("DELETE", "/v1/jobs/good", &ok(b""), b""),
            404,
            "no route",
        ),
        (
            "webhook: Pub/Sub push route not configured",
            req(
                "POST",
                "/v1/pubsub/preemption",
                &[("authorization", "Bearer x".into())],
                b"{}",
            ),
            401,
            "",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_with_its_reason_and_changes_nothing() {
    let w = world().await;
    // Something to compare against: one good job in place first.
    let good = JobBuilder::new("good").json();
    let fate = w
        .deliver(&w.cfg.submit_queue, &good, |e| {
            lambda::submit_batch(&w.ctx, e)
        })
        .await;
    assert_eq!(fate, Fate::Done);
    let before = w.snapshot().await;
    assert_eq!(before.jobs, 1);

    let submits = submit_cases();
    let envelopes = envelope_cases();
    let tarballs = tarball_cases();
    let now = studio_core::clock::Clock::now(w.ctx.clock.as_ref()).0 / 1000;
    let hooks = webhook_cases(now);
    let total = submits.len() + envelopes.len() + tarballs.len() + hooks.len();
    report!(
        "bad input: {} SubmitJob bodies, {} event envelopes, {} tarballs, {} webhook requests: {total} cases",
        submits.len(),
        envelopes.len(),
        tarballs.len(),
        hooks.len()
    );
    assert!(total >= 60, "{total} cases");

    for (name, body, want) in &submits {
        let fate = w
            .deliver(&w.cfg.submit_queue, body, |e| {
                lambda::submit_batch(&w.ctx, e)
            })
            .await;
        let Fate::DeadLettered(why) = &fate else {
            panic!("{name}: {fate:?}");
        };
        assert!(why.contains(want), "{name}: {why}");
        let (dead, reason) = w.dead_letter(&w.cfg.submit_queue).await;
        assert_eq!(&dead, body, "{name}: the message as sent");
        assert_eq!(&reason, why, "{name}: the reason on the dead letter");
        assert_eq!(w.snapshot().await, before, "{name}: nothing written");
    }

    let q = w.cfg.interruption_queue.clone().unwrap();
    for (name, body, want) in &envelopes {
        let fate = w
            .deliver(&q, body, |e| lambda::interruption_batch(&w.ctx, &q, e))
            .await;
        let Fate::DeadLettered(why) = &fate else {
            panic!("{name}: {fate:?}");
        };
        assert!(why.contains(want), "{name}: {why}");
        let (dead, reason) = w.dead_letter(&q).await;
        assert_eq!((&dead, &reason), (body, why), "{name}");
        assert_eq!(w.snapshot().await, before, "{name}: nothing written");
    }

    let keys =
        studio_aws::webhook::Keys::from_json(&format!(r#"{{"ci": "{WEBHOOK_SECRET}"}}"#)).unwrap();
    let schema = studio_aws::webhook::schema();
    let hook = studio_aws::webhook::Webhook {
        keys: &keys,
        ctx: &w.ctx,
        push: None,
        submit_queue: &w.cfg.submit_queue,
        schema: &schema,
    };
    for (name, req, status, want) in &hooks {
        let resp = hook.handle(req).await;
        assert_eq!(resp.status, *status, "{name}: {}", resp.body);
        let error = resp.body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{name}: a reason: {}", resp.body);
        assert!(
            resp.body.to_string().contains(want),
            "{name}: {}",
            resp.body
        );
        assert_eq!(
            w.snapshot().await,
            before,
            "{name}: nothing enqueued or written"
        );
    }

    for (name, tar, want) in &tarballs {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("workspace");
        let err = studio_core::workspace::unpack(tar, &dest)
            .err()
            .unwrap_or_else(|| panic!("{name}: unpacked"));
        assert!(err.to_string().contains(want), "{name}: {err}");
        let outside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            outside,
            ["workspace"],
            "{name}: nothing beside the workspace"
        );
        assert!(!std::path::Path::new("/tmp/studio-escaped.py").exists());
    }
}

/// The scenario's deliveries, as AWS makes them: the submit message, the
/// spot warning and the instance's `terminated` state change.
struct Plays {
    twice: bool,
    terminated_first: bool,
}

/// What a play ends with.
struct End {
    job: Job,
    /// Work items for the job's current attempt: exactly what runs next.
    live: usize,
    /// Items for earlier attempts: a worker drops them unrun ("stale").
    stale: usize,
    jobs: i32,
}

/// Submit → scale → the machine is warned and terminated → scale twice.
async fn play(p: &Plays) -> End {
    let w = world().await;
    let mut spec = JobBuilder::new("dup").cpus(2).spec();
    spec.cloud = Cloud::Ec2spot;
    let body = spec.to_json();
    let times = if p.twice { 2 } else { 1 };
    // SQS may deliver a message twice, even to two pollers at once.
    for _ in 0..times {
        let fate = w
            .deliver(&w.cfg.submit_queue, &body, |e| {
                lambda::submit_batch(&w.ctx, e)
            })
            .await;
        assert_eq!(fate, Fate::Done);
    }
    lambda::scale(&w.ctx).await.unwrap();
    let job = w.ctx.store.get_job(&job_id("dup")).await.unwrap().unwrap();
    // A worker on the group's machine claims it.
    let gk = w
        .ctx
        .store
        .get_pool(&job.pool)
        .await
        .unwrap()
        .unwrap()
        .group_key();
    let machine = studio_tests::eventually(
        "a machine",
        std::time::Duration::from_secs(30),
        async || {
            w.ctx
                .fleet
                .instances(&gk)
                .await
                .ok()?
                .first()
                .map(|i| i.id.clone())
        },
    )
    .await;
    let queue = w.ctx.settings.work_queue(&gk);
    let item = w
        .ctx
        .queue
        .receive(
            &queue,
            1,
            std::time::Duration::from_secs(30),
            std::time::Duration::ZERO,
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
    let claim = studio_core::handlers::claim_work(&w.ctx, &machine, &item)
        .await
        .unwrap();
    assert!(matches!(claim, studio_core::handlers::Claim::Run(_)));
    w.ctx.queue.ack(&queue, &item.receipt).await.unwrap();

    let warning = json!({
        "version": "0", "id": "ev-warn", "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-11-29T08:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"instance-id": machine.to_string(), "instance-action": "terminate"}
    })
    .to_string();
    let terminated = json!({
        "version": "0", "id": "ev-gone", "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-11-29T08:02:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"instance-id": machine.to_string(), "state": "terminated"}
    })
    .to_string();
    let order = if p.terminated_first {
        [&terminated, &warning]
    } else {
        [&warning, &terminated]
    };
    let q = w.cfg.interruption_queue.clone().unwrap();
    for ev in order {
        for _ in 0..times {
            let fate = w
                .deliver(&q, ev, |e| lambda::interruption_batch(&w.ctx, &q, e))
                .await;
            assert_eq!(fate, Fate::Done);
        }
    }
    lambda::scale(&w.ctx).await.unwrap();
    lambda::scale(&w.ctx).await.unwrap();
    let job = w.ctx.store.get_job(&job_id("dup")).await.unwrap().unwrap();
    // Every item waiting, read (and left to expire) as a worker would.
    let (mut live, mut stale) = (0, 0);
    loop {
        let got = w
            .ctx
            .queue
            .receive(
                &queue,
                10,
                std::time::Duration::from_secs(300),
                std::time::Duration::ZERO,
            )
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            let item = studio_core::contract::WorkItem::from_json(&m.body).unwrap();
            assert_eq!(item.job_id, job.id);
            if item.attempt == job.attempt {
                live += 1;
            } else {
                assert!(item.attempt < job.attempt, "{item:?}");
                stale += 1;
            }
        }
    }
    let jobs = aws_sdk_dynamodb::Client::new(&w.sdk)
        .scan()
        .table_name(&w.cfg.jobs_table)
        .send()
        .await
        .unwrap()
        .count();
    End {
        job,
        live,
        stale,
        jobs,
    }
}

/// What must match between two plays: everything but times, ids of
/// machines and event ids.
fn essence(j: &Job) -> Value {
    json!({
        "state": j.state,
        "attempt": j.attempt,
        "reason": j.reason.as_ref().map(|r| r.split(" i-").next().unwrap_or_default().to_string()),
        "attempts": j.attempts.iter().map(|a| json!({"number": a.number, "outcome": a.outcome})).collect::<Vec<_>>(),
        "moves": j.events.iter().map(|e| json!([e.from, e.to])).collect::<Vec<_>>(),
        "spec": j.spec,
        "pool": j.pool,
        "plan": j.plan,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_and_out_of_order_ends_as_once() {
    let once = play(&Plays {
        twice: false,
        terminated_first: false,
    })
    .await;
    assert_eq!(
        (once.job.state, once.job.attempt),
        (JobState::Queued, 2),
        "{:?}",
        once.job.events
    );
    assert_eq!(
        (once.live, once.stale, once.jobs),
        (1, 0, 1),
        "one item, for attempt 2"
    );
    for (twice, terminated_first) in [(true, false), (false, true), (true, true)] {
        let end = play(&Plays {
            twice,
            terminated_first,
        })
        .await;
        let what = format!("twice: {twice}, terminated first: {terminated_first}");
        assert_eq!(essence(&end.job), essence(&once.job), "{what}");
        // One job, one item for what runs next. A redelivered submit sends
        // attempt 1's item again (the first delivery may have died before
        // sending it); that copy is stale once attempt 1 is claimed.
        assert_eq!((end.live, end.jobs), (1, 1), "{what}");
        report!(
            "{what}: same records as once ({} events); {} stale item(s) a worker drops",
            end.job.events.len(),
            end.stale
        );
    }
}
