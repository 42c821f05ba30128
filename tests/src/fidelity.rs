//! A fidelity layer: an HTTP proxy between the SDK clients and `moto_server`
//! that reproduces documented AWS behaviours moto does not (see
//! `shared/docs/TESTING.md`, "Where moto is kinder than AWS").
//!
//! Every request is forwarded to moto unchanged (method, path and query,
//! headers, body) and every answer comes back unchanged, except where a rule
//! applies. Time for every rule comes from the test's [`ManualClock`]: tests
//! advance it past a window instead of sleeping.
//!
//! # Rules
//! - SQS ([`Fidelity::set_depth_lag`]): `ApproximateNumberOfMessages` does
//!   not yet count recent sends.
//! - SQS: a deleted queue's name is refused for 60 s (`QueueDeletedRecently`)
//!   and sends to it in that window answer success but are lost.
//! - SQS: `ChangeMessageVisibility` (and each `ChangeMessageVisibilityBatch`
//!   entry) cannot end more than 12 h after the receive that produced the
//!   receipt handle.
//! - Auto Scaling ([`Fidelity::set_pending_delete`]): a deleted group stays
//!   "pending delete": its name is taken, it may not be modified, and
//!   `DescribeAutoScalingGroups` shows it with `Status` "Delete in progress".
//! - Auto Scaling: `SetDesiredCapacity` outside `[MinSize, MaxSize]` is refused.
//! - S3 ([`Fidelity::set_list_bucket`]): a missing key is `403 AccessDenied`
//!   for a caller without `s3:ListBucket` (the default here).
//! - S3: `ListParts` and `CompleteMultipartUpload` answer with their
//!   documented `<…Result>` roots (moto's are `<…Response>`, which the SDK
//!   cannot read).
//! - Service Quotas ([`Fidelity::set_ec2_quota`]): EC2's quotas, which
//!   moto does not know.
//! - EC2 ([`Fidelity::set_console`]): `GetConsoleOutput` answers what the
//!   test's machine printed (moto answers a fixed banner for every one).
//! - Auto Scaling: [`Fidelity::group_rebalances`] makes a group terminate
//!   (and replace) instances by itself, as capacity rebalancing and AZ
//!   rebalancing do.
//!
//! [`Fidelity::calls`] counts the operations clients called through the proxy
//! (the proxy's own look-ups in moto are not counted). [`Fidelity::door`]
//! opens another address onto the same proxy (same rules, same state) whose
//! calls are also counted under its label ([`Fidelity::calls_through`]), so a
//! test can tell whose calls they were (the functions', the workers', its own).
//!
//! moto's EC2 backend is not thread-safe: a request that writes tags (a
//! worker's liveness tag, a launch) during one that reads them fails the
//! reader with a 500 ("dictionary changed size during iteration"). AWS has
//! no such defect, so the proxy passes EC2 and Auto Scaling calls (the query
//! protocol) to moto one at a time, across every proxy in the process.
//!
//! # Protocols
//! SQS speaks AWS JSON 1.0 (`X-Amz-Target: AmazonSQS.<Op>`; errors carry
//! `__type` and `x-amzn-query-error: <Code>;Sender`, which the SDK reads as
//! the error code). Auto Scaling and EC2 speak the query protocol
//! (form-encoded `Action=..`, XML answers and `<ErrorResponse>` errors). S3 is
//! REST-XML. The operation of any other JSON service (DynamoDB) is read from
//! `X-Amz-Target` too.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use studio_core::clock::{Clock, ManualClock, Timestamp};

/// How long a deleted queue's name stays refused, and sends to it are lost.
pub const QUEUE_DELETED_WINDOW: Duration = Duration::from_secs(60);
/// The most a message may stay invisible, counted from its receive.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// The proxy. Dropping it does not stop the server task; it ends with the
/// test's runtime.
pub struct Fidelity {
    /// Point the SDK here (`studio_aws::emulator_config(region, &url)`).
    pub url: String,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    clock: ManualClock,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
}

struct State {
    depth_lag: Duration,
    pending_delete: Duration,
    list_bucket: bool,
    /// Most keys one BatchGetItem answers; the rest come back unprocessed.
    batch_get_limit: Option<usize>,
    calls: HashMap<String, usize>,
    /// (door label, operation) → count.
    calls_by_door: HashMap<(String, String), usize>,
    /// Every call as IAM sees it, in order.
    requests: Vec<Authorized>,
    /// Queue name → times of sends not yet older than the lag.
    sends: HashMap<String, Vec<Timestamp>>,
    /// Queue name → when it was deleted.
    deleted_queues: HashMap<String, Timestamp>,
    /// Receipt handle → when the receive that produced it happened.
    receipts: HashMap<String, Timestamp>,
    /// Group name → when it was deleted, and its last description (the
    /// `<member>` XML) to show while it is pending delete.
    deleted_groups: HashMap<String, (Timestamp, Option<String>)>,
    /// Group name → `CapacityRebalance` as last set by
    /// `UpdateAutoScalingGroup`, which moto 5.2 accepts but ignores.
    capacity_rebalance: HashMap<String, bool>,
    /// Group name → why its launches fail (see [`Fidelity::fail_launches`]).
    failing_launches: HashMap<String, String>,
    /// Instance id → what its console shows (see [`Fidelity::set_console`]).
    consoles: HashMap<String, String>,
    /// EC2 quota code → its value (see [`Fidelity::set_ec2_quota`]).
    quotas: HashMap<String, f64>,
}

/// A call as IAM authorizes it: the action (`sqs:SendMessage` for a
/// `SendMessageBatch`, `s3:GetObject` for a `HeadObject`), where the
/// request names it the resource's ARN (moto's account `123456789012`), and
/// the tag condition keys of the request: `aws:RequestTag/K` and
/// `aws:TagKeys` from the tags it sets, `aws:ResourceTag/K` from the tags
/// of the instance, group or launch template it acts on (looked up in moto
/// before the call goes on), `ec2:CreateAction` for the tagging AWS
/// authorizes inside a create call. A launch template's or group's ARN
/// holds an id no request names: those stay `None` (the policies match
/// them with `*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Authorized {
    pub action: String,
    pub resource: Option<String>,
    /// Condition key → its values, sorted by key.
    pub context: Vec<(String, Vec<String>)>,
}

impl Authorized {
    fn with(mut self, key: &str, values: Vec<String>) -> Authorized {
        self.context.retain(|(k, _)| k != key);
        self.context.push((key.to_string(), values));
        self.context.sort();
        self
    }

    /// The tags a request sets, as condition keys.
    fn requesting(mut self, tags: &[(String, String)]) -> Authorized {
        if tags.is_empty() {
            return self;
        }
        for (k, v) in tags {
            self = self.with(&format!("aws:RequestTag/{k}"), vec![v.clone()]);
        }
        let mut keys: Vec<String> = tags.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        self.with("aws:TagKeys", keys)
    }

    /// The tags of the resource acted on, as condition keys.
    fn on_tagged(mut self, tags: &[(String, String)]) -> Authorized {
        for (k, v) in tags {
            self = self.with(&format!("aws:ResourceTag/{k}"), vec![v.clone()]);
        }
        self
    }

    /// The context as the evaluator takes it: one value as a string.
    pub fn context_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.context
                .iter()
                .map(|(k, v)| {
                    let v = if v.len() == 1 && !k.ends_with("TagKeys") {
                        serde_json::json!(v[0])
                    } else {
                        serde_json::json!(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    }
}

/// The tags a query-protocol request sets: EC2's `TagSpecification.N.Tag.M`
/// and `Tag.N` (CreateTags), Auto Scaling's `Tags.member.N`.
fn request_tags(form: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = form
        .iter()
        .filter_map(|(k, key)| {
            let stem = k.strip_suffix(".Key")?;
            let tagged = stem.starts_with("Tag.")
                || stem.starts_with("Tags.member.")
                || (stem.starts_with("TagSpecification.") && stem.contains(".Tag."));
            tagged.then(|| {
                let value = form
                    .get(&format!("{stem}.Value"))
                    .cloned()
                    .unwrap_or_default();
                (key.clone(), value)
            })
        })
        .collect();
    out.sort();
    out
}

/// What the first `<name>` element of `xml` holds (as written).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

/// The `<key>`/`<value>` pairs of an EC2 `DescribeTags` answer, or the
/// `<Key>`/`<Value>` of an Auto Scaling group's `<Tags>` members.
fn answer_tags(xml: &str) -> Vec<(String, String)> {
    let field = |item: &str, name: &str| element(item, name).map(xml_unescape);
    let mut out = Vec::new();
    for item in xml
        .split("<item>")
        .skip(1)
        .chain(xml.split("<member>").skip(1))
    {
        let pair = field(item, "key")
            .zip(field(item, "value"))
            .or_else(|| field(item, "Key").zip(field(item, "Value").or(Some(String::new()))));
        if let Some(p) = pair {
            out.push(p);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// moto's account.
pub const ACCOUNT: &str = "123456789012";

impl Authorized {
    fn of(parts: &hyper::http::request::Parts, call: &Call) -> Option<Authorized> {
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // `Credential=AKID/20260101/us-east-1/sqs/aws4_request`
        let scope: Vec<&str> = auth
            .split("Credential=")
            .nth(1)
            .and_then(|s| s.split([',', ' ']).next())
            .unwrap_or_default()
            .split('/')
            .collect();
        let region = scope.get(2).copied().unwrap_or("us-east-1");
        let service = scope.get(3).copied().unwrap_or_default();
        let req = |action: String, resource: Option<String>| {
            Some(Authorized {
                action,
                resource,
                context: Vec::new(),
            })
        };
        match call {
            Call::Json { service, op, body } if service == "AmazonSQS" => {
                let name = body["QueueName"].as_str().map(String::from).or_else(|| {
                    body["QueueUrl"]
                        .as_str()
                        .and_then(|u| u.rsplit('/').next())
                        .map(String::from)
                });
                // IAM authorizes the batch calls as their single forms.
                let action = op.strip_suffix("Batch").unwrap_or(op);
                req(
                    format!("sqs:{action}"),
                    name.map(|n| format!("arn:aws:sqs:{region}:{ACCOUNT}:{n}")),
                )
            }
            Call::Json { service, op, body } if service.starts_with("DynamoDB") => {
                let table = body["TableName"].as_str()?;
                let arn = format!("arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}");
                let arn = match body["IndexName"].as_str() {
                    Some(i) => format!("{arn}/index/{i}"),
                    None => arn,
                };
                req(format!("dynamodb:{op}"), Some(arn))
            }
            Call::Json { service, op, body } if service == "AmazonSSM" => {
                let name = body["Name"].as_str().unwrap_or_default();
                req(
                    format!("ssm:{op}"),
                    Some(format!(
                        "arn:aws:ssm:{region}:{ACCOUNT}:parameter/{}",
                        name.trim_start_matches('/')
                    )),
                )
            }
            Call::Json { service, op, .. } => req(format!("{}:{op}", service.to_lowercase()), None),
            Call::Query { action, form } => {
                let instance = form
                    .get("InstanceId")
                    .or_else(|| form.get("InstanceId.1"))
                    .or_else(|| form.get("ResourceId.1").filter(|r| r.starts_with("i-")));
                let resource = match (service, form.get("AutoScalingGroupName"), instance) {
                    ("autoscaling", Some(g), _) => Some(format!(
                        "arn:aws:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{g}"
                    )),
                    // Describe calls have no resource level (wildcard only).
                    ("ec2", _, Some(i)) if !action.starts_with("Describe") => {
                        Some(format!("arn:aws:ec2:{region}:{ACCOUNT}:instance/{i}"))
                    }
                    _ => None,
                };
                req(format!("{service}:{action}"), resource)
                    .map(|r| r.requesting(&request_tags(form)))
            }
            Call::S3 { op, .. } => {
                let path = parts.uri.path().trim_start_matches('/');
                let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
                let (action, arn) = match op.as_str() {
                    "GetObject" | "HeadObject" => ("GetObject", format!("{bucket}/{key}")),
                    "PutObject" | "DeleteObject" => (op.as_str(), format!("{bucket}/{key}")),
                    // IAM authorizes a multipart upload's steps as PutObject.
                    "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload" => {
                        ("PutObject", format!("{bucket}/{key}"))
                    }
                    "ListParts" => ("ListMultipartUploadParts", format!("{bucket}/{key}")),
                    "AbortMultipartUpload" => ("AbortMultipartUpload", format!("{bucket}/{key}")),
                    "ListMultipartUploads" => ("ListBucketMultipartUploads", bucket.to_string()),
                    "ListObjectsV2" | "ListObjects" | "HeadBucket" => {
                        ("ListBucket", bucket.to_string())
                    }
                    other => (other, bucket.to_string()),
                };
                req(format!("s3:{action}"), Some(format!("arn:aws:s3:::{arn}")))
            }
            Call::Other => None,
        }
    }
}

/// What a request is, as far as the rules care.
enum Call {
    /// AWS JSON (`X-Amz-Target`): service prefix, operation, body.
    Json {
        service: String,
        op: String,
        body: serde_json::Value,
    },
    /// Query protocol: `Action` and the form's fields.
    Query {
        action: String,
        form: HashMap<String, String>,
    },
    /// S3 REST: the operation's name, and whether it addresses an object.
    S3 {
        op: String,
        object: bool,
    },
    Other,
}

type Answer = Response<Full<Bytes>>;

impl Fidelity {
    /// Starts the proxy on a free loopback port, forwarding to `upstream`
    /// (moto's base URL, e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str, clock: ManualClock) -> Fidelity {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fidelity proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            clock,
            client: Client::builder(TokioExecutor::new()).build_http(),
            state: Mutex::new(State {
                depth_lag: Duration::from_secs(60),
                pending_delete: Duration::from_secs(300),
                list_bucket: false,
                batch_get_limit: None,
                calls: HashMap::new(),
                calls_by_door: HashMap::new(),
                requests: Vec::new(),
                sends: HashMap::new(),
                deleted_queues: HashMap::new(),
                receipts: HashMap::new(),
                deleted_groups: HashMap::new(),
                capacity_rebalance: HashMap::new(),
                failing_launches: HashMap::new(),
                consoles: HashMap::new(),
                quotas: HashMap::new(),
            }),
        });
        serve(listener, shared.clone(), Arc::from(""));
        Fidelity { url, shared }
    }

    /// Another address onto this proxy: the same rules and state, its calls
    /// counted under `label` as well ([`Fidelity::calls_through`]).
    pub async fn door(&self, label: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a door of the fidelity proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        serve(listener, self.shared.clone(), Arc::from(label));
        url
    }

    /// Every operation called through the door `label`, with its count.
    pub fn calls_through(&self, label: &str) -> HashMap<String, usize> {
        self.shared
            .state()
            .calls_by_door
            .iter()
            .filter(|((door, _), _)| door == label)
            .map(|((_, op), n)| (op.clone(), *n))
            .collect()
    }

    /// How long a sent message stays out of `ApproximateNumberOfMessages`
    /// (default 60 s).
    pub fn set_depth_lag(&self, lag: Duration) {
        self.shared.state().depth_lag = lag;
    }

    /// How long a deleted Auto Scaling group stays "pending delete" (default
    /// 5 min).
    pub fn set_pending_delete(&self, d: Duration) {
        self.shared.state().pending_delete = d;
    }

    /// Whether the caller holds `s3:ListBucket` (default `false`: a missing
    /// key answers `403 AccessDenied`).
    pub fn set_list_bucket(&self, granted: bool) {
        self.shared.state().list_bucket = granted;
    }

    /// At most `n` keys of each `BatchGetItem` are read, the rest returned
    /// as `UnprocessedKeys` (default: all read, as moto does).
    /// Launches of `group` fail with `reason`, as a Spot vCPU quota of 0,
    /// `InsufficientInstanceCapacity` or a bid under the market make them
    /// fail on AWS: the desired capacity is taken (the call succeeds) but no
    /// instance comes, and the only trace is a `Failed` scaling activity
    /// (`DescribeScalingActivities`; "Troubleshoot Amazon EC2 Auto Scaling:
    /// EC2 instance launch failures" in the user guide). `None`: launches
    /// work again. moto launches whatever is asked.
    pub fn fail_launches(&self, group: &str, reason: Option<&str>) {
        let mut st = self.shared.state();
        match reason {
            Some(r) => st.failing_launches.insert(group.to_string(), r.to_string()),
            None => st.failing_launches.remove(group),
        };
    }

    /// What `instance`'s console shows (`GetConsoleOutput`): a machine's
    /// boot as the test plays it. moto boots nothing and answers every
    /// instance with the same fixed kernel banner.
    pub fn set_console(&self, instance: &str, text: &str) {
        self.shared
            .state()
            .consoles
            .insert(instance.to_string(), text.to_string());
    }

    /// The account's EC2 quota `code` (Service Quotas `GetServiceQuota`,
    /// e.g. `L-34B43A08`, Spot vCPUs) is `value`. moto's Service Quotas know
    /// only VPC's and answer `NoSuchResourceException` for EC2's.
    pub fn set_ec2_quota(&self, code: &str, value: f64) {
        self.shared.state().quotas.insert(code.to_string(), value);
    }

    pub fn set_batch_get_limit(&self, n: usize) {
        self.shared.state().batch_get_limit = Some(n.max(1));
    }

    /// How many times clients called `op` (e.g. `"SetDesiredCapacity"`,
    /// `"CreateLaunchTemplate"`, `"SendMessageBatch"`, `"GetObject"`)
    /// through the proxy.
    pub fn calls(&self, op: &str) -> usize {
        self.shared.state().calls.get(op).copied().unwrap_or(0)
    }

    /// Every call so far, as IAM would authorize it, in order.
    pub fn requests(&self) -> Vec<Authorized> {
        self.shared.state().requests.clone()
    }

    /// Every operation called so far with its count, for failure messages.
    pub fn all_calls(&self) -> HashMap<String, usize> {
        self.shared.state().calls.clone()
    }

    /// The group terminates instances by itself, as AWS does on a rebalance
    /// recommendation (Capacity Rebalancing) or when its Availability Zones
    /// are unbalanced (`AZRebalance`): each terminated instance goes through
    /// moto's `TerminateInstanceInAutoScalingGroup` with
    /// `ShouldDecrementDesiredCapacity=false`, so the group launches a
    /// replacement. Returns the terminated ids.
    ///
    /// Which instances go, per the AWS documentation:
    /// - Only `InService` instances that are **not protected from scale in**.
    ///   "Use instance scale-in protection"
    ///   (<https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html>)
    ///   lists what protection does *not* guard against: manual termination
    ///   (`TerminateInstances`, `TerminateInstanceInAutoScalingGroup`),
    ///   health-check replacement and Spot interruptions. Neither kind of
    ///   rebalancing is in that list. AZ rebalancing chooses its victims with
    ///   the termination policies, which skip protected instances ("Control
    ///   which Auto Scaling instances terminate during scale in", section
    ///   "Availability Zone rebalancing"); operators rely on protection for
    ///   exactly that (hashicorp/nomad-autoscaler#650). For Capacity
    ///   Rebalancing the guide ("Use Capacity Rebalancing to handle Amazon EC2
    ///   Spot Interruptions") says only that the group launches a replacement
    ///   and then terminates the old instance; that protection also stops
    ///   this termination is modelled here, not stated there: verify on a
    ///   real account before the product depends on it. A protected Spot
    ///   instance is still *interrupted* by EC2 after its two-minute notice:
    ///   that is a spot notice, not this.
    /// - Nothing when the group's `Terminate` process is suspended ("How
    ///   suspended processes affect other processes": with `Terminate`
    ///   suspended, AZ rebalancing "can launch new instances without
    ///   terminating the old ones"; assumed the same for Capacity
    ///   Rebalancing).
    /// - With Capacity Rebalancing off, the only remaining cause is AZ
    ///   rebalancing, so nothing when `AZRebalance` is suspended, nor when
    ///   `Launch` is ("Launch is suspended: AZRebalance stops rebalancing the
    ///   group"; "Suspend and resume Amazon EC2 Auto Scaling processes").
    ///   Suspending `AZRebalance` does **not** stop Capacity Rebalancing:
    ///   that is the group's `CapacityRebalance` setting
    ///   (`UpdateAutoScalingGroup` API reference, `CapacityRebalance`: "If
    ///   Capacity Rebalancing is disabled, proactive replacement of at-risk
    ///   Spot Instances does not occur ... To suspend rebalancing across
    ///   Availability Zones, use the SuspendProcesses API").
    ///
    /// moto 5.2 stores `CapacityRebalance` at creation but ignores it in
    /// `UpdateAutoScalingGroup`; the proxy remembers the updated value.
    ///
    /// # Panics
    /// When moto refuses a termination.
    pub async fn group_rebalances(&self, group: &str) -> Vec<String> {
        let s = &self.shared;
        let _turn = EC2_TURN.lock().await;
        let Some(g) = s.describe_member(group).await else {
            return Vec::new();
        };
        let g = g.as_str();
        let suspended = |p: &str| g.contains(&format!("<ProcessName>{p}</ProcessName>"));
        let capacity_rebalance = match s.state().capacity_rebalance.get(group) {
            Some(on) => *on,
            None => xml_text(g, "CapacityRebalance").as_deref() == Some("true"),
        };
        if suspended("Terminate")
            || (!capacity_rebalance && (suspended("AZRebalance") || suspended("Launch")))
        {
            return Vec::new();
        }
        let victims: Vec<String> = xml_inner(g, "Instances")
            .map(xml_members)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| xml_text(i, "LifecycleState").as_deref() == Some("InService"))
            .filter(|i| xml_text(i, "ProtectedFromScaleIn").as_deref() != Some("true"))
            .filter_map(|i| xml_text(i, "InstanceId"))
            .collect();
        for id in &victims {
            let (status, body) = s
                .upstream_query(
                    "autoscaling",
                    &[
                        ("Action", "TerminateInstanceInAutoScalingGroup"),
                        ("Version", "2011-01-01"),
                        ("InstanceId", id),
                        ("ShouldDecrementDesiredCapacity", "false"),
                    ],
                )
                .await;
            assert!(
                status.is_success(),
                "TerminateInstanceInAutoScalingGroup {id}: {body}"
            );
        }
        victims
    }
}

/// Serves `listener` for the proxy's life, each call counted under `door`.
fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, door: Arc<str>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (shared, door) = (shared.clone(), door.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (shared, door) = (shared.clone(), door.clone());
                    async move { Ok::<_, std::convert::Infallible>(shared.handle(&door, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// One EC2 or Auto Scaling call in moto at a time (see the module's doc).
static EC2_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fidelity state")
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn handle(&self, door: &str, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        let call = classify(&parts, &body);
        let op = match &call {
            Call::Json { op, .. } => op.clone(),
            Call::Query { action, .. } => action.clone(),
            Call::S3 { op, .. } => op.clone(),
            Call::Other => String::new(),
        };
        let request = Authorized::of(&parts, &call);
        let request: Vec<Authorized> = match (request, &call) {
            (Some(r), Call::Query { action, form }) => self.in_context(r, action, form).await,
            (r, _) => r.into_iter().collect(),
        };
        {
            let mut state = self.state();
            if !op.is_empty() {
                *state
                    .calls_by_door
                    .entry((door.to_string(), op.clone()))
                    .or_default() += 1;
                *state.calls.entry(op).or_default() += 1;
            }
            state.requests.extend(request);
        }
        match call {
            Call::Json {
                service,
                op,
                body: json,
            } if service == "AmazonSQS" => self.sqs(&op, &json, parts, body).await,
            Call::Json {
                service,
                op,
                body: json,
            } if service.starts_with("DynamoDB") && op == "BatchGetItem" => {
                self.batch_get(json, parts, body).await
            }
            Call::Json {
                service,
                op,
                body: json,
            } if service.starts_with("ServiceQuotas") && op == "GetServiceQuota" => {
                let code = json["QuotaCode"].as_str().unwrap_or_default().to_string();
                let held = (json["ServiceCode"] == "ec2")
                    .then(|| self.state().quotas.get(&code).copied())
                    .flatten();
                match held {
                    // GetServiceQuota API reference
                    // (https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_GetServiceQuota.html).
                    Some(v) => Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/x-amz-json-1.1")
                        .body(Full::new(Bytes::from(
                            serde_json::json!({"Quota": {
                                "ServiceCode": "ec2",
                                "QuotaCode": code,
                                "QuotaArn": format!("arn:aws:servicequotas:us-east-1:{ACCOUNT}:ec2/{code}"),
                                "Value": v,
                                "Unit": "None",
                                "Adjustable": true,
                                "GlobalQuota": false,
                            }})
                            .to_string(),
                        )))
                        .expect("a response"),
                    None => self.forward(parts, body).await,
                }
            }
            Call::Query { action, form } => {
                let _turn = EC2_TURN.lock().await;
                self.query(&action, &form, parts, body).await
            }
            Call::S3 { op, object } => {
                let answer = self.forward(parts, body).await;
                self.s3(&op, object, answer)
            }
            _ => self.forward(parts, body).await,
        }
    }

    /// A query call as AWS authorizes it: with the tags of the group,
    /// instance or launch template it acts on (read from moto before the
    /// call goes on, as AWS evaluates them), and, for a create call that
    /// tags what it makes, the `ec2:CreateTags` AWS authorizes inside it
    /// (`ec2:CreateAction`).
    async fn in_context(
        &self,
        mut r: Authorized,
        action: &str,
        form: &HashMap<String, String>,
    ) -> Vec<Authorized> {
        let _turn = EC2_TURN.lock().await;
        let tags = request_tags(form);
        let mut out = Vec::new();
        if r.action.starts_with("autoscaling:") {
            let mut group = form.get("AutoScalingGroupName").cloned();
            if group.is_none() {
                if let Some(i) = form.get("InstanceId") {
                    let (_, xml) = self
                        .upstream_query(
                            "autoscaling",
                            &[
                                ("Action", "DescribeAutoScalingInstances"),
                                ("Version", "2011-01-01"),
                                ("InstanceIds.member.1", i),
                            ],
                        )
                        .await;
                    group = element(&xml, "AutoScalingGroupName").map(xml_unescape);
                    r.resource = group.as_ref().map(|g| {
                        format!("arn:aws:autoscaling:us-east-1:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{g}")
                    });
                }
            }
            if let Some(g) = group.filter(|_| action != "CreateAutoScalingGroup") {
                let (_, xml) = self
                    .upstream_query(
                        "autoscaling",
                        &[
                            ("Action", "DescribeAutoScalingGroups"),
                            ("Version", "2011-01-01"),
                            ("AutoScalingGroupNames.member.1", &g),
                        ],
                    )
                    .await;
                r = r.on_tagged(&answer_tags(element(&xml, "Tags").unwrap_or_default()));
            }
        } else if r.action.starts_with("ec2:") {
            if let Some(i) = r
                .resource
                .as_deref()
                .and_then(|a| a.split(":instance/").nth(1))
                .map(str::to_string)
            {
                let (_, xml) = self
                    .upstream_query(
                        "ec2",
                        &[
                            ("Action", "DescribeTags"),
                            ("Version", "2016-11-15"),
                            ("Filter.1.Name", "resource-id"),
                            ("Filter.1.Value.1", &i),
                        ],
                    )
                    .await;
                r = r.on_tagged(&answer_tags(&xml));
            }
            if let Some(name) = form
                .get("LaunchTemplateName")
                .filter(|_| action != "CreateLaunchTemplate")
            {
                let (_, xml) = self
                    .upstream_query(
                        "ec2",
                        &[
                            ("Action", "DescribeLaunchTemplates"),
                            ("Version", "2016-11-15"),
                            ("LaunchTemplateName.1", name),
                        ],
                    )
                    .await;
                let id = element(&xml, "launchTemplateId").map(str::to_string);
                r = r.on_tagged(&answer_tags(element(&xml, "tagSet").unwrap_or_default()));
                if let Some(id) = id {
                    r.resource = Some(format!(
                        "arn:aws:ec2:us-east-1:{ACCOUNT}:launch-template/{id}"
                    ));
                }
            }
            let creates = action.starts_with("Create") && action != "CreateTags";
            if creates && !tags.is_empty() {
                // "Grant permission to tag resources during creation": AWS
                // authorizes ec2:CreateTags with ec2:CreateAction inside.
                out.push(
                    Authorized {
                        action: "ec2:CreateTags".into(),
                        resource: None,
                        context: Vec::new(),
                    }
                    .requesting(&tags)
                    .with("ec2:CreateAction", vec![action.to_string()]),
                );
            }
        }
        out.insert(0, r);
        out
    }

    /// BatchGetItem API reference
    /// (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html):
    /// "BatchGetItem returns a partial result if the response size limit is
    /// exceeded, the table's provisioned throughput is exceeded, more than
    /// 1MB per partition is requested, or an internal processing failure
    /// occurs. If a partial result is returned, the operation returns a
    /// value for UnprocessedKeys." moto always answers every key; with
    /// [`Fidelity::set_batch_get_limit`] the proxy asks moto for the first
    /// keys only and returns the others unprocessed.
    async fn batch_get(
        &self,
        mut json: serde_json::Value,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Answer {
        let Some(mut room) = self.state().batch_get_limit else {
            return self.forward(parts, body).await;
        };
        let mut unprocessed = serde_json::Map::new();
        if let Some(tables) = json["RequestItems"].as_object_mut() {
            for (table, wanted) in tables.iter_mut() {
                let Some(keys) = wanted["Keys"].as_array_mut() else {
                    continue;
                };
                let keep = room.min(keys.len());
                room -= keep;
                let rest = keys.split_off(keep);
                if !rest.is_empty() {
                    let mut left = wanted.clone();
                    left["Keys"] = serde_json::Value::Array(rest);
                    unprocessed.insert(table.clone(), left);
                }
            }
            tables.retain(|_, w| w["Keys"].as_array().is_some_and(|k| !k.is_empty()));
        }
        let answer = self.forward(parts, Bytes::from(json.to_string())).await;
        let (parts, body) = answer.into_parts();
        let Ok(mut out) = serde_json::from_slice::<serde_json::Value>(&full_bytes(&body)) else {
            return Response::from_parts(parts, body);
        };
        if parts.status.is_success() && !unprocessed.is_empty() {
            out["UnprocessedKeys"] = serde_json::Value::Object(unprocessed);
        }
        with_body(parts, out.to_string().into_bytes())
    }

    /// Sends the request to moto as it came, and its answer back as it came.
    async fn forward(&self, parts: hyper::http::request::Parts, body: Bytes) -> Answer {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: hyper::Uri = match format!("{}{path}", self.upstream).parse() {
            Ok(u) => u,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("uri: {e}")),
        };
        let mut req = Request::builder().method(parts.method).uri(uri);
        for (k, v) in parts.headers.iter() {
            // hyper sets Content-Length from the body, which a rule may rewrite.
            if !is_hop_by_hop(k) && k != hyper::header::CONTENT_LENGTH {
                req = req.header(k, v);
            }
        }
        let req = req.body(Full::new(body)).expect("a request");
        match self.client.request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
                };
                let mut out = Response::builder().status(parts.status);
                for (k, v) in parts.headers.iter() {
                    if !is_hop_by_hop(k) {
                        out = out.header(k, v);
                    }
                }
                out.body(Full::new(body)).expect("a response")
            }
            Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
        }
    }

    /// A query-protocol call the proxy makes itself (not counted), with a
    /// placeholder SigV4 `Authorization` so moto knows the service.
    async fn upstream_query(&self, service: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let body: String = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    studio_core::url::encode(k),
                    studio_core::url::encode(v)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/", self.upstream))
            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .body(Full::new(Bytes::from(body)))
            .expect("a request");
        match self.client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                (status, body)
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }

    // ---------------------------------------------------------------- SQS

    async fn sqs(
        &self,
        op: &str,
        json: &serde_json::Value,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Answer {
        let now = self.now();
        let queue = json["QueueUrl"]
            .as_str()
            .map(queue_name)
            .or_else(|| json["QueueName"].as_str().map(str::to_string))
            .unwrap_or_default();
        let recently_deleted = {
            let st = self.state();
            st.deleted_queues
                .get(&queue)
                .is_some_and(|t| now.since(*t) < QUEUE_DELETED_WINDOW)
        };
        match op {
            // DeleteQueue API reference
            // (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteQueue.html):
            // "When you delete a queue, you must wait at least 60 seconds
            // before creating a queue with the same name."
            "CreateQueue" if recently_deleted => sqs_error(
                "AWS.SimpleQueueService.QueueDeletedRecently",
                "com.amazonaws.sqs#QueueDeletedRecently",
                "You must wait 60 seconds after deleting a queue before you can create another with the same name.",
            ),
            // Same page: "When you delete a queue, the deletion process takes
            // up to 60 seconds. Requests you send involving that queue during
            // the 60 seconds might succeed." The message is never delivered.
            "SendMessage" if recently_deleted => {
                let text = json["MessageBody"].as_str().unwrap_or_default();
                sqs_ok(serde_json::json!({
                    "MessageId": message_id(),
                    "MD5OfMessageBody": md5_hex(text),
                }))
            }
            "SendMessageBatch" if recently_deleted => {
                let ok: Vec<serde_json::Value> = json["Entries"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "Id": e["Id"],
                            "MessageId": message_id(),
                            "MD5OfMessageBody": md5_hex(e["MessageBody"].as_str().unwrap_or_default()),
                        })
                    })
                    .collect();
                sqs_ok(serde_json::json!({ "Successful": ok, "Failed": [] }))
            }
            // ChangeMessageVisibility API reference
            // (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html):
            // "you have a message with a visibility timeout of 5 minutes.
            // After 3 minutes, you call ChangeMessageVisibility with a
            // timeout of 10 minutes. You can continue to call
            // ChangeMessageVisibility to extend the visibility timeout to the
            // maximum allowed time. If you try to extend the visibility
            // timeout beyond 12 hours, your request is rejected." The total is
            // the time since the receive plus the new timeout.
            // moto 5.2 enforces this too, but on the wall clock since its
            // own receive; here it follows the test's clock, so a test can
            // reach the limit by advancing it. The error is the one both
            // AWS and moto send.
            "ChangeMessageVisibility" => match self.beyond_visibility_limit(json, now) {
                Some(message) => sqs_error(
                    "InvalidParameterValue",
                    "com.amazonaws.sqs#InvalidParameterValue",
                    &message,
                ),
                None => self.forward(parts, body).await,
            },
            // The same limit, per entry: refused entries are reported in
            // `Failed` (SenderFault, InvalidParameterValue), the others go to
            // moto.
            "ChangeMessageVisibilityBatch" => {
                let entries = json["Entries"].as_array().cloned().unwrap_or_default();
                let (refused, allowed): (Vec<_>, Vec<_>) = entries
                    .into_iter()
                    .map(|e| (self.beyond_visibility_limit(&e, now), e))
                    .partition(|(m, _)| m.is_some());
                if refused.is_empty() {
                    return self.forward(parts, body).await;
                }
                let failed: Vec<serde_json::Value> = refused
                    .into_iter()
                    .map(|(m, e)| {
                        serde_json::json!({
                            "Id": e["Id"],
                            "SenderFault": true,
                            "Code": "InvalidParameterValue",
                            "Message": m,
                        })
                    })
                    .collect();
                let mut out = serde_json::json!({ "Successful": [], "Failed": [] });
                if !allowed.is_empty() {
                    let mut req = json.clone();
                    req["Entries"] = allowed.into_iter().map(|(_, e)| e).collect();
                    let answer = self
                        .forward(parts, Bytes::from(req.to_string().into_bytes()))
                        .await;
                    if !answer.status().is_success() {
                        return answer;
                    }
                    out = serde_json::from_slice(&full_bytes(answer.body())).unwrap_or(out);
                }
                let mut all = out["Failed"].as_array().cloned().unwrap_or_default();
                all.extend(failed);
                out["Failed"] = all.into();
                if out["Successful"].is_null() {
                    out["Successful"] = serde_json::json!([]);
                }
                sqs_ok(out)
            }
            _ => {
                let answer = self.forward(parts, body).await;
                if !answer.status().is_success() {
                    return answer;
                }
                self.sqs_after(op, &queue, answer, now)
            }
        }
    }

    /// The error message when a visibility change (`ReceiptHandle`,
    /// `VisibilityTimeout`) would end more than 12 h after the receive that
    /// produced the handle; `None` when allowed or the handle is unknown.
    fn beyond_visibility_limit(&self, entry: &serde_json::Value, now: Timestamp) -> Option<String> {
        let at = entry["ReceiptHandle"]
            .as_str()
            .and_then(|h| self.state().receipts.get(h).copied())?;
        let timeout = entry["VisibilityTimeout"].as_i64().unwrap_or(0).max(0) as u64;
        (now.since(at) + Duration::from_secs(timeout) > MAX_VISIBILITY).then(|| {
            format!(
                "Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        })
    }

    /// Bookkeeping on moto's successful answers, and the depth lag.
    fn sqs_after(&self, op: &str, queue: &str, answer: Answer, now: Timestamp) -> Answer {
        let (parts, body) = answer.into_parts();
        let out: serde_json::Value = serde_json::from_slice(&full_bytes(&body)).unwrap_or_default();
        let mut st = self.state();
        match op {
            "SendMessage" => st.sends.entry(queue.to_string()).or_default().push(now),
            "SendMessageBatch" => {
                let n = out["Successful"].as_array().map_or(0, Vec::len);
                st.sends
                    .entry(queue.to_string())
                    .or_default()
                    .extend(std::iter::repeat_n(now, n));
            }
            "DeleteQueue" => {
                st.deleted_queues.insert(queue.to_string(), now);
                st.sends.remove(queue);
            }
            "ReceiveMessage" => {
                for m in out["Messages"].as_array().into_iter().flatten() {
                    if let Some(h) = m["ReceiptHandle"].as_str() {
                        st.receipts.insert(h.to_string(), now);
                    }
                }
            }
            // GetQueueAttributes API reference
            // (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_GetQueueAttributes.html),
            // AttributeNames: "The ApproximateNumberOfMessagesDelayed,
            // ApproximateNumberOfMessagesNotVisible, and
            // ApproximateNumberOfMessages metrics may not achieve consistency
            // until at least 1 minute after the producers stop sending
            // messages." Modelled as: a send is not counted in
            // ApproximateNumberOfMessages until `depth_lag` after it.
            "GetQueueAttributes" => {
                let lag = st.depth_lag;
                let sends = st.sends.entry(queue.to_string()).or_default();
                sends.retain(|t| now.since(*t) < lag);
                let young = sends.len() as u64;
                let visible = out["Attributes"]["ApproximateNumberOfMessages"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(v), true) = (visible, young > 0) {
                    let mut out = out;
                    out["Attributes"]["ApproximateNumberOfMessages"] =
                        v.saturating_sub(young).to_string().into();
                    return with_body(parts, out.to_string().into_bytes());
                }
            }
            _ => {}
        }
        Response::from_parts(parts, body)
    }

    // --------------------------------------------------------- Query (ASG, EC2)

    async fn query(
        &self,
        action: &str,
        form: &HashMap<String, String>,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Answer {
        let now = self.now();
        let group = form
            .get("AutoScalingGroupName")
            .cloned()
            .unwrap_or_default();
        let pending = {
            let mut st = self.state();
            let window = st.pending_delete;
            st.deleted_groups.retain(|_, (t, _)| now.since(*t) < window);
            st.deleted_groups.contains_key(&group)
        };
        let console = (action == "GetConsoleOutput")
            .then(|| form.get("InstanceId"))
            .flatten()
            .and_then(|i| self.state().consoles.get(i).cloned());
        match action {
            // GetConsoleOutput API reference
            // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html):
            // the output is base64-encoded, at most the last 64 KB.
            "GetConsoleOutput" if console.is_some() => {
                use base64::Engine as _;
                let text = console.unwrap_or_default();
                let tail = &text.as_bytes()[text.len().saturating_sub(64 * 1024)..];
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/xml")
                    .body(Full::new(Bytes::from(format!(
                        "<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>{}</requestId><instanceId>{}</instanceId><timestamp>{}</timestamp><output>{}</output></GetConsoleOutputResponse>",
                        request_id(),
                        xml_escape(form.get("InstanceId").map_or("", String::as_str)),
                        iso8601(now),
                        base64::engine::general_purpose::STANDARD.encode(tail)
                    ))))
                    .expect("a response")
            }
            // DeleteAutoScalingGroup API reference
            // (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_DeleteAutoScalingGroup.html)
            // and "Delete your Auto Scaling infrastructure": the group is
            // deleted only after its instances terminate; meanwhile its name
            // is taken. AWS answers (as seen in hashicorp/terraform#1105,
            // kubernetes/test-infra#33190): "AlreadyExists: AutoScalingGroup
            // by this name already exists - A group with the name X already
            // exists and is pending delete. ..."
            "CreateAutoScalingGroup" if pending => query_error(
                "AlreadyExists",
                &format!(
                    "AutoScalingGroup by this name already exists - A group with the name {group} already exists and is pending delete.  Please wait until Autoscaling completes the deletion process before creating another group with the same name."
                ),
            ),
            // No API reference documents the refusal's code; AWS answers
            // `ValidationError: The AutoScaling group may not be modified
            // while it is pending delete` (kubernetes/kops#844 and #1001,
            // yaybu/touchdown#134, for UpdateAutoScalingGroup). Applied to
            // SetDesiredCapacity too, the other call that modifies the group.
            "SetDesiredCapacity" | "UpdateAutoScalingGroup" | "SetInstanceProtection"
            | "SuspendProcesses" | "ResumeProcesses"
                if pending =>
            {
                query_error(
                    "ValidationError",
                    "The AutoScaling group may not be modified while it is pending delete",
                )
            }
            // SetDesiredCapacity API reference
            // (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html)
            // and UpdateAutoScalingGroup's DesiredCapacity: "This number must
            // be greater than or equal to the minimum size of the group and
            // less than or equal to the maximum size of the group." AWS
            // answers ValidationError "New SetDesiredCapacity value N is above
            // max value M for the AutoScalingGroup." moto 5.2 accepts any
            // value (the test shows it).
            "SetDesiredCapacity" => {
                let desired: Option<i64> = form.get("DesiredCapacity").and_then(|d| d.parse().ok());
                if let (Some(d), Some((min, max))) = (desired, self.group_bounds(&group).await) {
                    if d > max {
                        return query_error(
                            "ValidationError",
                            &format!("New SetDesiredCapacity value {d} is above max value {max} for the AutoScalingGroup."),
                        );
                    }
                    if d < min {
                        return query_error(
                            "ValidationError",
                            &format!("New SetDesiredCapacity value {d} is below min value {min} for the AutoScalingGroup."),
                        );
                    }
                }
                if self.state().failing_launches.contains_key(&group) {
                    return self.failing_launch(action, &group, form, now).await;
                }
                self.forward(parts, body).await
            }
            // Deleting a group again while it is pending delete: not
            // documented; modelled as an accepted no-op (the deletion is
            // already under way), so the window does not restart.
            "DeleteAutoScalingGroup" if pending => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/xml")
                .body(Full::new(Bytes::from(format!(
                    "<DeleteAutoScalingGroupResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></DeleteAutoScalingGroupResponse>",
                    request_id()
                ))))
                .expect("a response"),
            "DeleteAutoScalingGroup" => {
                let snapshot = self.describe_member(&group).await;
                let answer = self.forward(parts, body).await;
                if answer.status().is_success() {
                    self.state()
                        .deleted_groups
                        .insert(group, (now, snapshot));
                }
                answer
            }
            "CreateAutoScalingGroup" | "UpdateAutoScalingGroup" => {
                let failing = self.state().failing_launches.contains_key(&group);
                let answer = if failing && action == "UpdateAutoScalingGroup" {
                    self.failing_launch(action, &group, form, now).await
                } else {
                    self.forward(parts, body).await
                };
                if answer.status().is_success() {
                    let mut st = self.state();
                    match form.get("CapacityRebalance") {
                        Some(v) if action == "UpdateAutoScalingGroup" => {
                            st.capacity_rebalance.insert(group, v == "true");
                        }
                        _ if action == "CreateAutoScalingGroup" => {
                            st.capacity_rebalance.remove(&group);
                        }
                        _ => {}
                    }
                }
                answer
            }
            "DescribeScalingActivities" if self.state().failing_launches.contains_key(&group) =>
            {
                self.failing_launch(action, &group, form, now).await
            }
            "DescribeAutoScalingGroups" => {
                let answer = self.forward(parts, body).await;
                if !answer.status().is_success() {
                    return answer;
                }
                self.show_pending(form, answer)
            }
            _ => self.forward(parts, body).await,
        }
    }

    /// A group whose launches fail: the new desired capacity is not passed
    /// on (no instance comes), the rest of an update is; its activities
    /// are one failed launch with the reason.
    async fn failing_launch(
        &self,
        action: &str,
        group: &str,
        form: &HashMap<String, String>,
        now: Timestamp,
    ) -> Answer {
        let ok = |body: String| {
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/xml")
                .body(Full::new(Bytes::from(body)))
                .expect("a response")
        };
        const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
        match action {
            "SetDesiredCapacity" => ok(format!(
                "<SetDesiredCapacityResponse xmlns=\"{NS}\"><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></SetDesiredCapacityResponse>",
                request_id()
            )),
            "UpdateAutoScalingGroup" => {
                let fields: Vec<(&str, &str)> = form
                    .iter()
                    .filter(|(k, _)| k.as_str() != "DesiredCapacity")
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let (status, body) = self.upstream_query("autoscaling", &fields).await;
                Response::builder()
                    .status(status)
                    .header("content-type", "text/xml")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a response")
            }
            _ => {
                let reason = self.state().failing_launches.get(group).cloned().unwrap_or_default();
                let at = iso8601(now);
                ok(format!(
                    "<DescribeScalingActivitiesResponse xmlns=\"{NS}\"><DescribeScalingActivitiesResult><Activities><member>\
                     <ActivityId>{id}</ActivityId><AutoScalingGroupName>{g}</AutoScalingGroupName>\
                     <Description>Launching a new EC2 instance.  Status Reason: {r}. Launching EC2 instance failed.</Description>\
                     <Cause>At {at} an instance was started in response to a difference between desired and actual capacity, increasing the capacity from 0 to 1.</Cause>\
                     <StartTime>{at}</StartTime><EndTime>{at}</EndTime><StatusCode>Failed</StatusCode>\
                     <StatusMessage>{r}. Launching EC2 instance failed.</StatusMessage><Progress>100</Progress>\
                     </member></Activities></DescribeScalingActivitiesResult><ResponseMetadata><RequestId>{id}</RequestId></ResponseMetadata></DescribeScalingActivitiesResponse>",
                    id = request_id(),
                    g = xml_escape(group),
                    r = xml_escape(&reason),
                ))
            }
        }
    }

    /// The group's `<member>` XML in moto, if it exists.
    async fn describe_member(&self, group: &str) -> Option<String> {
        let (status, body) = self
            .upstream_query(
                "autoscaling",
                &[
                    ("Action", "DescribeAutoScalingGroups"),
                    ("Version", "2011-01-01"),
                    ("AutoScalingGroupNames.member.1", group),
                ],
            )
            .await;
        if !status.is_success() {
            return None;
        }
        xml_inner(&body, "AutoScalingGroups")
            .and_then(|m| xml_inner(m, "member"))
            .map(str::to_string)
    }

    async fn group_bounds(&self, group: &str) -> Option<(i64, i64)> {
        let m = self.describe_member(group).await?;
        Some((
            xml_text(&m, "MinSize")?.parse().ok()?,
            xml_text(&m, "MaxSize")?.parse().ok()?,
        ))
    }

    /// Adds the groups pending delete to a `DescribeAutoScalingGroups`
    /// answer (when the request named them or named none, without filters):
    /// their last description, `Status` "Delete in progress", instances
    /// `Terminating`, as AWS shows a group being deleted
    /// (`AutoScalingGroup.Status` in the API reference: "The current state
    /// of the group when the DeleteAutoScalingGroup operation is in
    /// progress").
    fn show_pending(&self, form: &HashMap<String, String>, answer: Answer) -> Answer {
        let named: Vec<&String> = form
            .iter()
            .filter(|(k, _)| k.starts_with("AutoScalingGroupNames.member."))
            .map(|(_, v)| v)
            .collect();
        if form.keys().any(|k| k.starts_with("Filters.")) {
            return answer;
        }
        let extra: String = {
            let st = self.state();
            st.deleted_groups
                .iter()
                .filter(|(name, _)| named.is_empty() || named.contains(name))
                .filter_map(|(_, (_, snap))| snap.as_ref())
                .map(|m| {
                    let m = m
                        .replace(
                            "<LifecycleState>InService</LifecycleState>",
                            "<LifecycleState>Terminating</LifecycleState>",
                        )
                        .replace(
                            "<LifecycleState>Pending</LifecycleState>",
                            "<LifecycleState>Terminating</LifecycleState>",
                        );
                    let m = match (m.find("<Status>"), m.find("</Status>")) {
                        (Some(a), Some(b)) if a < b => {
                            format!(
                                "{}<Status>Delete in progress</Status>{}",
                                &m[..a],
                                &m[b + 9..]
                            )
                        }
                        _ => format!("{m}<Status>Delete in progress</Status>"),
                    };
                    format!("<member>{m}</member>")
                })
                .collect()
        };
        if extra.is_empty() {
            return answer;
        }
        let (parts, body) = answer.into_parts();
        let text = String::from_utf8_lossy(&full_bytes(&body)).into_owned();
        let text = if let Some(i) = text.find("</AutoScalingGroups>") {
            format!("{}{extra}{}", &text[..i], &text[i..])
        } else if let Some(i) = text.find("<AutoScalingGroups/>") {
            format!(
                "{}<AutoScalingGroups>{extra}</AutoScalingGroups>{}",
                &text[..i],
                &text[i + "<AutoScalingGroups/>".len()..]
            )
        } else {
            return Response::from_parts(parts, body);
        };
        with_body(parts, text.into_bytes())
    }

    // ------------------------------------------------------------------ S3

    /// GetObject API reference
    /// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html),
    /// "Permissions": "If the object you request doesn't exist, the error
    /// that Amazon S3 returns depends on whether you also have the
    /// s3:ListBucket permission. If you have the s3:ListBucket permission on
    /// the bucket, Amazon S3 returns an HTTP status code 404 Not Found error.
    /// If you don't have the s3:ListBucket permission, Amazon S3 returns an
    /// HTTP status code 403 Access Denied error." (HeadObject: the same, with
    /// no body.)
    fn s3(&self, op: &str, object: bool, answer: Answer) -> Answer {
        if matches!(op, "ListParts" | "CompleteMultipartUpload")
            && answer.status() == StatusCode::OK
        {
            return documented_root(op, answer);
        }
        if !object
            || answer.status() != StatusCode::NOT_FOUND
            || self.state().list_bucket
            || !matches!(op, "GetObject" | "HeadObject")
        {
            return answer;
        }
        let (parts, body) = answer.into_parts();
        if op == "GetObject"
            && !String::from_utf8_lossy(&full_bytes(&body)).contains("<Code>NoSuchKey</Code>")
        {
            return Response::from_parts(parts, body);
        }
        let mut parts = parts;
        parts.status = StatusCode::FORBIDDEN;
        let text = if op == "HeadObject" {
            String::new()
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>{}</RequestId><HostId>fidelity</HostId></Error>",
                request_id()
            )
        };
        parts
            .headers
            .insert("content-type", HeaderValue::from_static("application/xml"));
        with_body(parts, text.into_bytes())
    }
}

// ------------------------------------------------------------------ helpers

/// moto (5.2.1 to 5.2.5 at least) answers ListParts and
/// CompleteMultipartUpload with `<ListPartsResponse>` and
/// `<CompleteMultipartUploadResponse>` roots; S3 documents and sends
/// `<ListPartsResult>` and `<CompleteMultipartUploadResult>`
/// (<https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListParts.html>,
/// `API_CompleteMultipartUpload.html`), and the SDK refuses any other root.
/// The root is put right, nothing else.
fn documented_root(op: &str, answer: Answer) -> Answer {
    let (parts, body) = answer.into_parts();
    let text = String::from_utf8_lossy(&full_bytes(&body))
        .replace(&format!("<{op}Response"), &format!("<{op}Result"))
        .replace(&format!("</{op}Response>"), &format!("</{op}Result>"));
    with_body(parts, text.into_bytes())
}

fn classify(parts: &hyper::http::request::Parts, body: &Bytes) -> Call {
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let target = header("x-amz-target");
    if let Some((service, op)) = target.split_once('.') {
        return Call::Json {
            service: service.to_string(),
            op: op.to_string(),
            body: serde_json::from_slice(body).unwrap_or_default(),
        };
    }
    if header("content-type").starts_with("application/x-www-form-urlencoded") {
        let form = parse_form(&String::from_utf8_lossy(body));
        if let Some(action) = form.get("Action").cloned() {
            return Call::Query { action, form };
        }
    }
    // The SigV4 credential scope names the service: `.../<region>/s3/aws4_request`.
    let auth = header("authorization");
    if auth.contains("/s3/aws4_request") {
        let path = parts.uri.path().trim_start_matches('/');
        let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
        let object = !bucket.is_empty() && !key.is_empty();
        let query = parts.uri.query().unwrap_or_default();
        let op = match (&parts.method, object) {
            (&Method::GET, true) if query.contains("uploadId=") => "ListParts",
            (&Method::PUT, true) if query.contains("uploadId=") => "UploadPart",
            (&Method::POST, true) if query.contains("uploadId=") => "CompleteMultipartUpload",
            (&Method::POST, true) if query.contains("uploads") => "CreateMultipartUpload",
            (&Method::DELETE, true) if query.contains("uploadId=") => "AbortMultipartUpload",
            (&Method::GET, false) if query.contains("uploads") => "ListMultipartUploads",
            (&Method::GET, true) => "GetObject",
            (&Method::HEAD, true) => "HeadObject",
            (&Method::PUT, true) if parts.headers.contains_key("x-amz-copy-source") => "CopyObject",
            (&Method::PUT, true) => "PutObject",
            (&Method::DELETE, true) => "DeleteObject",
            (&Method::PUT, false) => "CreateBucket",
            (&Method::HEAD, false) => "HeadBucket",
            (&Method::DELETE, false) => "DeleteBucket",
            (&Method::POST, false) if query.contains("delete") => "DeleteObjects",
            (&Method::GET, false) if query.contains("list-type=2") => "ListObjectsV2",
            (&Method::GET, false) => "ListObjects",
            _ => "S3",
        };
        return Call::S3 {
            op: op.to_string(),
            object,
        };
    }
    Call::Other
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade"
    )
}

/// The bytes of a `Full` body that was built from collected bytes.
fn full_bytes(body: &Full<Bytes>) -> Bytes {
    use hyper::body::Body;
    // A `Full` yields its one frame at once; poll it without a runtime.
    let mut b = body.clone();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(&mut b).poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

fn with_body(mut parts: hyper::http::response::Parts, body: Vec<u8>) -> Answer {
    parts.headers.insert(
        "content-length",
        HeaderValue::from_str(&body.len().to_string()).expect("a length"),
    );
    Response::from_parts(parts, Full::new(Bytes::from(body)))
}

fn plain(status: StatusCode, text: &str) -> Answer {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text.to_string())))
        .expect("a response")
}

fn sqs_ok(v: serde_json::Value) -> Answer {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", request_id())
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("a response")
}

/// An SQS error as AWS sends it on the JSON protocol: `__type` plus the
/// query-compatible code in `x-amzn-query-error`, which the SDK reads as the
/// error's code.
fn sqs_error(code: &str, type_: &str, message: &str) -> Answer {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", request_id())
        .header("x-amzn-query-error", format!("{code};Sender"))
        .body(Full::new(Bytes::from(
            serde_json::json!({ "__type": type_, "message": message }).to_string(),
        )))
        .expect("a response")
}

/// A query-protocol (Auto Scaling, EC2) client error.
/// `at` as the ISO 8601 UTC time AWS's XML uses.
fn iso8601(at: Timestamp) -> String {
    let secs = at.0 / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn query_error(code: &str, message: &str) -> Answer {
    let body = format!(
        "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        xml_escape(message),
        request_id()
    );
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The content of the first `<tag>..</tag>`, up to its matching close
/// (tags of the same name may nest).
fn xml_inner<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let mut depth = 1;
    let mut i = start;
    loop {
        let next_close = xml[i..].find(&close)? + i;
        match xml[i..].find(&open).map(|o| o + i) {
            Some(o) if o < next_close => {
                depth += 1;
                i = o + open.len();
            }
            _ => {
                depth -= 1;
                if depth == 0 {
                    return Some(&xml[start..next_close]);
                }
                i = next_close + close.len();
            }
        }
    }
}

/// The top-level `<member>` elements of a list.
fn xml_members(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = list;
    while let Some(m) = xml_inner(rest, "member") {
        out.push(m);
        let end = m.as_ptr() as usize - rest.as_ptr() as usize + m.len() + "</member>".len();
        rest = &rest[end..];
    }
    out
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    xml_inner(xml, tag).map(|s| s.trim().to_string())
}

fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                studio_core::url::decode_form(k),
                studio_core::url::decode_form(v),
            )
        })
        .collect()
}

/// A queue's name from its URL (`http://host/123456789012/name`).
fn queue_name(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A UUID-shaped id, as SQS message ids and request ids look.
fn message_id() -> String {
    let h = format!("{:032x}", u128::from(ulid::Ulid::new()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn request_id() -> String {
    message_id()
}
