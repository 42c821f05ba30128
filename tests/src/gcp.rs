//! The GCP side of the test world: Google's Pub/Sub emulator and a GCS
//! emulator (both started by `scripts/test`, found through
//! `STUDIO_TEST_PUBSUB` and `STUDIO_TEST_GCS`), and the Compute stand-in
//! (`tests/standins/gce.py`, one per test, started here). No Compute
//! emulator exists, so the stand-in speaks Compute's REST shapes itself:
//! operations that are not done until polled, `deleteInstances` lowering
//! the target, label fingerprints, spot reclamation with replacement.

use std::process::{Child, Command, Stdio};
use studio_gcp::GcpConfig;

/// The Pub/Sub emulator's endpoint.
pub fn pubsub_endpoint() -> String {
    std::env::var("STUDIO_TEST_PUBSUB").expect(
        "STUDIO_TEST_PUBSUB must point at Google's Pub/Sub emulator: run the tests with scripts/test, which starts it",
    )
}

/// Whether the Pub/Sub emulator is there. `scripts/test` sets
/// `STUDIO_TEST_NO_PUBSUB=1` when this machine has none, and says so in a
/// banner before and after the run (and fails under `STUDIO_REQUIRE_PUBSUB`,
/// as CI runs it); a test that needs it then returns at once, saying so.
pub fn have_pubsub(test: &str) -> bool {
    if std::env::var("STUDIO_TEST_NO_PUBSUB").is_ok_and(|v| v == "1") {
        eprintln!(
            "{test}: NOT RUN: no Pub/Sub emulator on this machine (see scripts/test's banner)"
        );
        return false;
    }
    true
}

/// The GCS emulator's endpoint; it serves the bucket [`TEST_BUCKET`].
pub fn gcs_endpoint() -> String {
    std::env::var("STUDIO_TEST_GCS").expect(
        "STUDIO_TEST_GCS must point at the GCS emulator: run the tests with scripts/test, which starts it",
    )
}

/// The bucket `scripts/test` has the GCS emulator create.
pub const TEST_BUCKET: &str = "studio-test-gcs";
pub const PROJECT: &str = "studio-test";
pub const ZONE: &str = "us-central1-a";
pub const IMAGE: &str = "projects/studio-images/global/images/family/studio-worker";

/// The Compute stand-in, stopped when dropped.
pub struct StandIn {
    child: Child,
    pub url: String,
}

impl StandIn {
    /// Starts `tests/standins/gce.py` on a free port, with the worker image
    /// registered (10 GB minimum disk).
    pub async fn start() -> StandIn {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/standins/gce.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, "--listen", "127.0.0.1:0"])
            .stderr(Stdio::null());
        let (child, url) = crate::spawn_announcing(cmd, "listening on ");
        let s = StandIn { child, url };
        s.control(
            "images",
            serde_json::json!({"project": "studio-images", "name": "studio-worker-1",
                "family": "studio-worker", "diskSizeGb": "10", "architecture": "X86_64"}),
        )
        .await;
        s
    }

    /// POSTs to a control endpoint (`/_standin/<what>`).
    pub async fn control(&self, what: &str, body: serde_json::Value) -> serde_json::Value {
        http_json("POST", &format!("{}/_standin/{what}", self.url), Some(body)).await
    }

    /// Everything the stand-in holds.
    pub async fn state(&self) -> serde_json::Value {
        http_json("GET", &format!("{}/_standin/state", self.url), None).await
    }

    /// The VM now named `name`, as the stand-in holds it (its numeric
    /// `id`, its `zone`, ...), if any.
    pub async fn vm(&self, name: &str) -> Option<serde_json::Value> {
        let state = self.state().await;
        state["instances"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
    }

    /// The metadata server base of one VM.
    pub fn metadata(&self, instance: &str) -> String {
        format!("{}/vm/{instance}", self.url)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin APIs' stand-in (`tests/standins/gcp_admin.py`: Service Usage,
/// Resource Manager, IAM, workload identity pools, Logging sinks; Pub/Sub
/// and Cloud Storage forwarded to their emulators), stopped when dropped.
pub struct AdminStandIn {
    child: Child,
    pub url: String,
}

impl AdminStandIn {
    /// Starts it for project `project` of number `number`, forwarding to
    /// the tests' Pub/Sub emulator and fake-gcs-server.
    pub fn start(project: &str, number: &str) -> AdminStandIn {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/standins/gcp_admin.py");
        let mut cmd = Command::new("python3");
        cmd.args([
            script,
            "--listen",
            "127.0.0.1:0",
            "--pubsub",
            &pubsub_endpoint(),
            "--gcs",
            &gcs_endpoint(),
            "--project",
            &format!("{project}={number}"),
        ])
        .stderr(Stdio::null());
        let (child, url) = crate::spawn_announcing(cmd, "listening on ");
        AdminStandIn { child, url }
    }

    /// Every request it was sent: `{method, path, query}`.
    pub async fn calls(&self) -> Vec<serde_json::Value> {
        let v = http_json("GET", &format!("{}/_standin/calls", self.url), None).await;
        v["calls"].as_array().cloned().unwrap_or_default()
    }

    /// Everything it holds.
    pub async fn state(&self) -> serde_json::Value {
        http_json("GET", &format!("{}/_standin/state", self.url), None).await
    }
}

impl Drop for AdminStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON request over plain HTTP/1.1 (the stand-in's control API).
pub async fn http_json(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .unwrap();
    let resp = client.request(req).await.expect("the stand-in answers");
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(status.is_success(), "{method} {url}: {status} {body:?}");
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}

/// A deployment's GCP settings for tests that reach no server.
pub fn config_without_emulators(prefix: &str) -> GcpConfig {
    settings(prefix, None, false)
}

/// A deployment's GCP settings pointing at the emulators and `standin`.
pub fn config(prefix: &str, standin: Option<&StandIn>) -> GcpConfig {
    settings(prefix, standin, true)
}

/// The workers' service account of the test settings.
pub fn worker_account() -> String {
    format!("studio-worker@{PROJECT}.iam.gserviceaccount.com")
}

/// The settings as a GCE worker holds them: its Compute calls are its
/// service account's (`/as/EMAIL` of the stand-in), which may do only what
/// `studio gcp setup` grants it: `roles/compute.instanceAdmin.v1` under the
/// deployment's name condition, set here on the stand-in.
pub async fn worker_config(prefix: &str, standin: &StandIn) -> GcpConfig {
    let (_, condition) = studio_gcp::setup::machines_condition(&prefix.to_ascii_lowercase());
    standin
        .control(
            "grants",
            serde_json::json!({"member": worker_account(), "bindings": [
                {"role": "roles/compute.instanceAdmin.v1", "condition": condition}]}),
        )
        .await;
    let mut cfg = settings(prefix, Some(standin), true);
    cfg.compute_endpoint = Some(format!("{}/as/{}", standin.url, worker_account()));
    cfg
}

fn settings(prefix: &str, standin: Option<&StandIn>, emulators: bool) -> GcpConfig {
    let env = |k: &str| -> Option<String> {
        match k {
            "STUDIO_GCP_PROJECT" => Some(PROJECT.into()),
            "STUDIO_GCP_ZONE" => Some(ZONE.into()),
            "STUDIO_GCP_BUCKET" => Some(TEST_BUCKET.into()),
            "STUDIO_GCP_SERVICE_ACCOUNT" => Some(worker_account()),
            "STUDIO_GCP_IMAGE" => Some(IMAGE.into()),
            "STUDIO_GCP_WORKER_ROLE_ARN" => {
                Some("arn:aws:iam::123456789012:role/studio-gce-worker".into())
            }
            "STUDIO_PUBSUB_ENDPOINT" => std::env::var("STUDIO_TEST_PUBSUB").ok(),
            "STUDIO_GCS_ENDPOINT" => emulators.then(gcs_endpoint),
            "STUDIO_COMPUTE_ENDPOINT" => standin.map(|s| s.url.clone()),
            "STUDIO_GCP_ANONYMOUS" => Some("1".into()),
            _ => None,
        }
    };
    GcpConfig::from_lookup(env, prefix)
        .expect("valid test settings")
        .expect("GCP is configured")
}
