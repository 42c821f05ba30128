//! The REST calls of `studio gcp setup`: one small client over Google's
//! JSON APIs (Service Usage, Resource Manager, IAM, workload identity
//! pools, Logging, Pub/Sub and Cloud Storage admin).
//!
//! Why REST and not the generated `google-cloud-*` crates: workload
//! identity pools have no Rust client, Cloud Storage's bucket admin in
//! `google-cloud-storage` is gRPC (which fake-gcs-server does not serve),
//! and five more generated crates would add minutes to every build for
//! about twenty idempotent calls made once per deployment. Credentials are
//! google-cloud-auth's (Application Default Credentials), as for every
//! other Google call of Studio.
//!
//! Every mutation goes through [`Admin::mutate`], which under `--dry-run`
//! only records what it would send: the set-up's list of changes is the
//! same either way.

use google_cloud_auth::credentials::CacheableResource;
pub use google_cloud_auth::credentials::Credentials;
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;

/// Base URLs of the services, Google's unless overridden (tests point them
/// all at one stand-in with `STUDIO_GCP_API_ENDPOINT`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub serviceusage: String,
    pub resourcemanager: String,
    pub iam: String,
    pub logging: String,
    pub pubsub: String,
    pub storage: String,
    pub compute: String,
}

impl Endpoints {
    /// Google's endpoints.
    pub fn google() -> Endpoints {
        Endpoints {
            serviceusage: "https://serviceusage.googleapis.com".into(),
            resourcemanager: "https://cloudresourcemanager.googleapis.com".into(),
            iam: "https://iam.googleapis.com".into(),
            logging: "https://logging.googleapis.com".into(),
            pubsub: "https://pubsub.googleapis.com".into(),
            storage: "https://storage.googleapis.com".into(),
            compute: "https://compute.googleapis.com".into(),
        }
    }

    /// Every service at `base` (a stand-in).
    pub fn all_at(base: &str) -> Endpoints {
        let b = base.trim_end_matches('/').to_string();
        Endpoints {
            serviceusage: b.clone(),
            resourcemanager: b.clone(),
            iam: b.clone(),
            logging: b.clone(),
            pubsub: b.clone(),
            storage: b.clone(),
            compute: b,
        }
    }
}

/// Application Default Credentials (`gcloud auth application-default
/// login`, or `GOOGLE_APPLICATION_CREDENTIALS`).
///
/// # Errors
/// None found.
pub fn default_credentials() -> Result<Credentials, String> {
    google_cloud_auth::credentials::Builder::default()
        .build()
        .map_err(|e| e.to_string())
}

/// A call that failed: the HTTP status (0: no answer) and Google's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct ApiError {
    pub what: String,
    pub status: u16,
    pub message: String,
}

/// How long a step waits for Google: an operation to finish, a new service
/// account to be visible to IAM policies (Google: "usually within 60
/// seconds, sometimes up to 7 minutes").
const OPERATION_DEADLINE: Duration = Duration::from_secs(600);
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(420);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    pub endpoints: Endpoints,
    http: reqwest::Client,
    credentials: Credentials,
    /// Only record mutations, never send them.
    pub dry_run: bool,
    /// The mutations made (or, dry, that would be), in order: one line each.
    changes: Mutex<Vec<String>>,
    /// Where the first retry of a propagation wait starts (tests: short).
    pub first_backoff: Duration,
    /// `x-goog-user-project`: the project the calls are billed and quota'd
    /// to. User credentials (`gcloud auth application-default login`)
    /// without a quota project are refused by some APIs otherwise.
    pub quota_project: Option<String>,
}

impl Admin {
    pub fn new(endpoints: Endpoints, credentials: Credentials, dry_run: bool) -> Admin {
        Admin {
            endpoints,
            http: reqwest::Client::new(),
            credentials,
            dry_run,
            changes: Mutex::default(),
            first_backoff: Duration::from_secs(2),
            quota_project: None,
        }
    }

    /// The changes made so far (dry: that would be made).
    pub fn changes(&self) -> Vec<String> {
        self.changes.lock().unwrap().clone()
    }

    async fn headers(&self) -> Result<reqwest::header::HeaderMap, ApiError> {
        let mut headers = match self.credentials.headers(Default::default()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => Default::default(),
            Err(e) => Err(ApiError {
                what: "Google credentials".into(),
                status: 0,
                message: format!(
                    "{e} (log in with `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS)"
                ),
            })?,
        };
        if let Some(p) = &self.quota_project {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(p) {
                headers.insert("x-goog-user-project", v);
            }
        }
        Ok(headers)
    }

    /// One call; `Ok(None)` for 404. A service this run just enabled may
    /// still answer `SERVICE_DISABLED` for a while ("wait a few minutes for
    /// the action to propagate"): retried, within Google's bound. On a dry
    /// run a disabled service holds nothing yet: `Ok(None)`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let disabled = |r: &Result<Option<Value>, ApiError>| matches!(r, Err(e) if e.status == 403 && e.message.contains("SERVICE_DISABLED"));
        if self.dry_run {
            let r = self.call_once(method, url, body).await;
            return if disabled(&r) { Ok(None) } else { r };
        }
        let enabled_now = self.changes().iter().any(|c| c.starts_with("enable "));
        self.retrying(
            "an API enabled just now",
            || self.call_once(method.clone(), url, body),
            |r| enabled_now && disabled(r),
        )
        .await
    }

    async fn call_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let what = format!("{method} {url}");
        let mut req = self
            .http
            .request(method, url)
            .headers(self.headers().await?)
            .timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ApiError {
            what: what.clone(),
            status: 0,
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        match status {
            200..=299 if bytes.is_empty() => Ok(Some(Value::Null)),
            200..=299 => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ApiError {
                    what,
                    status,
                    message: format!("not JSON: {e}"),
                }),
            404 => Ok(None),
            _ => Err(ApiError {
                what,
                status,
                message: google_message(&bytes),
            }),
        }
    }

    /// GET; `None` for 404.
    pub async fn get(&self, url: &str) -> Result<Option<Value>, ApiError> {
        self.call(reqwest::Method::GET, url, None).await
    }

    /// A POST that only reads (`:getIamPolicy`, `:testIamPermissions`).
    pub async fn read_post(&self, url: &str, body: &Value) -> Result<Option<Value>, ApiError> {
        self.call(reqwest::Method::POST, url, Some(body)).await
    }

    /// A change, said as `said`: sent (and its long-running operation
    /// waited for, when it answers with one), or under `--dry-run` only
    /// recorded. `Ok(None)` when dry.
    pub async fn mutate(
        &self,
        said: String,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        self.changes.lock().unwrap().push(said);
        if self.dry_run {
            return Ok(None);
        }
        let what = format!("{method} {url}");
        // Something made a moment ago may not be visible yet: a new
        // service account in a policy ("does not exist").
        let out = self
            .retrying(
                "IAM propagation",
                || self.call(method.clone(), url, body),
                |r| matches!(r, Err(e) if e.status == 400 && e.message.contains("does not exist")),
            )
            .await?;
        let out = out.ok_or_else(|| ApiError {
            what,
            status: 404,
            message: "not found".into(),
        })?;
        Ok(Some(self.wait_operation(url, out).await?))
    }

    /// A media upload, said as `said` (dry: only recorded); an object that
    /// exists already (412 on `ifGenerationMatch=0`) is left as it is.
    pub async fn upload(&self, said: String, url: &str, bytes: Vec<u8>) -> Result<(), ApiError> {
        self.changes.lock().unwrap().push(said);
        if self.dry_run {
            return Ok(());
        }
        let resp = self
            .http
            .post(url)
            .headers(self.headers().await?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(600))
            .body(bytes)
            .send()
            .await
            .map_err(|e| ApiError {
                what: format!("POST {url}"),
                status: 0,
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 | 412 => Ok(()),
            _ => Err(ApiError {
                what: format!("POST {url}"),
                status,
                message: google_message(&resp.bytes().await.unwrap_or_default()),
            }),
        }
    }

    /// `f` until `again` says its answer is final, with backoff from
    /// [`Self::first_backoff`], within Google's bound for propagation
    /// (after which the last answer stands). Google's consistency lags:
    /// an API enabled, an account made, a moment ago.
    pub async fn retrying<F, Fut>(
        &self,
        why: &str,
        f: F,
        again: impl Fn(&Result<Option<Value>, ApiError>) -> bool,
    ) -> Result<Option<Value>, ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Value>, ApiError>>,
    {
        let start = std::time::Instant::now();
        let mut wait = self.first_backoff;
        loop {
            let r = f().await;
            if !again(&r) || start.elapsed() + wait > PROPAGATION_DEADLINE {
                return r;
            }
            tracing::info!("retrying in {wait:?} ({why})");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// `answer` when it is not a long-running operation, or when it is one
    /// that is done; else the operation polled until done. Service Usage
    /// and IAM answer `{name, done, response|error}`; Compute and the rest
    /// answer with the resource itself.
    async fn wait_operation(&self, url: &str, answer: Value) -> Result<Value, ApiError> {
        let Some(name) = operation_name(&answer) else {
            return Ok(answer);
        };
        // Polled at the same host and API version as the call.
        let base = operations_base(url);
        let start = std::time::Instant::now();
        let mut op = answer;
        let mut wait = Duration::from_millis(200);
        loop {
            if op.get("done").and_then(Value::as_bool) == Some(true) {
                if let Some(err) = op.get("error") {
                    return Err(ApiError {
                        what: format!("operation {name}"),
                        status: err.get("code").and_then(Value::as_u64).unwrap_or(0) as u16,
                        message: err
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("failed")
                            .to_string(),
                    });
                }
                return Ok(op.get("response").cloned().unwrap_or(Value::Null));
            }
            if start.elapsed() > OPERATION_DEADLINE {
                return Err(ApiError {
                    what: format!("operation {name}"),
                    status: 0,
                    message: format!("not done after {OPERATION_DEADLINE:?}"),
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            op = self
                .get(&format!("{base}/{name}"))
                .await?
                .ok_or_else(|| ApiError {
                    what: format!("operation {name}"),
                    status: 404,
                    message: "the operation vanished".into(),
                })?;
        }
    }
}

/// The name of a long-running operation (`operations/…` or
/// `…/operations/…`), if `v` is one: by its name alone, since a running
/// operation may carry neither `done` (proto3 JSON leaves out `false`) nor
/// `metadata` ("some services might not provide such metadata").
fn operation_name(v: &Value) -> Option<String> {
    let name = v.get("name")?.as_str()?;
    let segments: Vec<&str> = name.split('/').collect();
    let n = segments.len();
    // `operations/ID` or `…/operations/ID`: the second to last segment.
    (n >= 2 && segments[n - 2] == "operations" && !segments[n - 1].is_empty())
        .then(|| name.to_string())
}

/// `https://HOST/VERSION` of a call's URL (`v1`, `v1beta1`, `v2`).
fn operations_base(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let version = parts
        .find(|p| p.len() > 1 && p.starts_with('v') && p[1..2].chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("v1");
    format!("{scheme}://{host}/{version}")
}

/// Google's message from an error body (`{"error": {"message": …}}`), or
/// the body itself.
fn google_message(bytes: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return String::from_utf8_lossy(bytes).chars().take(300).collect();
    };
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // ErrorInfo's reason (SERVICE_DISABLED, IAM_PERMISSION_DENIED, ...).
    let reason = v
        .pointer("/error/details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|d| d.get("reason").and_then(Value::as_str));
    match reason {
        Some(r) => format!("{r}: {message}"),
        None if message.is_empty() => String::from_utf8_lossy(bytes).chars().take(300).collect(),
        None => message.to_string(),
    }
}

/// `s` for a URL's path segment.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_are_told_from_resources() {
        assert_eq!(
            operation_name(&json!({"name": "operations/acf.p2-1", "metadata": {}})),
            Some("operations/acf.p2-1".into())
        );
        assert_eq!(
            operation_name(
                &json!({"name": "projects/p/locations/global/workloadIdentityPools/x/operations/o1", "done": false})
            ),
            Some("projects/p/locations/global/workloadIdentityPools/x/operations/o1".into())
        );
        // A resource named like anything else is the answer itself.
        assert_eq!(
            operation_name(&json!({"name": "projects/p/topics/t"})),
            None
        );
        assert_eq!(
            operation_name(&json!({"name": "projects/p/topics/operations", "done": true})),
            None
        );
        // A running operation with neither `done` nor `metadata` is one.
        assert_eq!(
            operation_name(&json!({"name": "operations/acat.p2-1"})),
            Some("operations/acat.p2-1".into())
        );
        assert_eq!(
            operations_base("https://serviceusage.googleapis.com/v1beta1/projects/p/services/x:generateServiceIdentity"),
            "https://serviceusage.googleapis.com/v1beta1"
        );
        assert_eq!(
            operations_base("http://127.0.0.1:4000/v1/projects/p/locations/global/workloadIdentityPools?workloadIdentityPoolId=x"),
            "http://127.0.0.1:4000/v1"
        );
    }

    #[test]
    fn google_errors_give_their_message() {
        assert_eq!(
            google_message(
                br#"{"error": {"code": 400, "message": "Service account x does not exist."}}"#
            ),
            "Service account x does not exist."
        );
        assert_eq!(google_message(b"plain"), "plain");
        assert_eq!(
            google_message(
                br#"{"error": {"code": 403, "message": "Compute Engine API has not been used", "details": [{"reason": "SERVICE_DISABLED"}]}}"#
            ),
            "SERVICE_DISABLED: Compute Engine API has not been used"
        );
        assert_eq!(escape("releases/studio-ab"), "releases%2Fstudio-ab");
    }
}
