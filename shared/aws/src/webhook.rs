//! The webhook: HTTP entry point for programs that cannot send to SQS (a CI
//! system, a notebook, a lab's scheduler). Written over the ports and plain
//! request/response values, so the Lambda function URL adapter and the tests'
//! HTTP server drive the same code.
//!
//! Every request but the Pub/Sub push is signed with a named key. Headers
//! `X-Studio-Key` (the key's name), `X-Studio-Timestamp` (Unix seconds,
//! within 5 minutes of now) and `X-Studio-Signature: v2=<hex>`, the
//! HMAC-SHA256 under the key's secret of [`string_to_sign`]:
//! `"v2\n{key}\n{METHOD}\n{target}\n{timestamp}\n{hex SHA-256 of the body}"`
//! (`target`: the path as sent, with `?` and the query if there is one), so
//! a signature is good for one key, one method, one path and one body. The
//! first version, `sha256=<hex>` of `"{timestamp}.{body}"`, names no method
//! or path: it is taken on `POST /v1/jobs` only, where the body is the
//! whole request.
//!
//! - `POST /v1/jobs`: body = a SubmitJob (without `owner`: the owner is the
//!   name of the key that signed the request). A valid request puts the
//!   SubmitJob on the submit queue and answers `202 {"job_id", "status_url"}`;
//!   without a `job_id` the id is derived from the key and body, so a
//!   retried request (a new timestamp, a new signature) is the same job.
//! - `GET /v1/jobs/{id}`, signed with v2 over an empty body: the job's
//!   state, attempts and times, for a job of the signing key only; another
//!   key's job answers as one that does not exist.
//!
//! Every refusal says why, and nothing is enqueued; except that an unknown
//! key and a wrong signature get the same answer, so that the keys' names
//! cannot be probed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use studio_core::contract::SubmitJob;
use studio_core::handlers::{Ctx, InstanceEvent, InstanceEventKind};
use studio_core::ids::InstanceId;
use studio_core::ids::JobId;

/// Largest body taken: an SQS message's limit, 256 KiB.
pub const MAX_BODY: usize = 256 * 1024;
/// How far a request's timestamp may be from now, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// The signing keys: name → secret. Several at once, so a key is rotated by
/// adding the new one, moving the senders, then removing the old.
#[derive(Clone, Default)]
pub struct Keys(BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: secrets never reach a log.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Keys {
    /// From the stored JSON object `{"name": "secret", ...}`.
    ///
    /// # Errors
    /// Not such an object, or no key, or an empty secret.
    pub fn from_json(text: &str) -> Result<Keys, String> {
        let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
            format!("the webhook keys are not a JSON object of name to secret: {e}")
        })?;
        if map.is_empty() {
            return Err("no webhook key is configured".into());
        }
        if let Some((name, _)) = map.iter().find(|(_, s)| s.len() < 16) {
            return Err(format!(
                "webhook key '{name}': a secret of at least 16 characters"
            ));
        }
        Ok(Keys(
            map.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        ))
    }
}

/// An HTTP request, as far as the webhook cares (header names lower case).
#[derive(Debug, Clone)]
pub struct Request {
    /// Upper case.
    pub method: String,
    /// The request target as sent: the path and, if the request has one,
    /// `?` and its query string (what a v2 signature covers).
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP response: status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

fn refuse(status: u16, why: impl Into<String>) -> Response {
    Response {
        status,
        body: serde_json::json!({ "error": why.into() }),
    }
}

/// Who may push Pub/Sub messages: OIDC tokens Google signs for the push
/// subscription's service account, for this audience. Google signs such a
/// token for any service account of any project, for any audience its
/// owner asks; so the token's identity is pinned too.
pub struct PushAuth {
    /// The audience the push subscription sets (the endpoint's URL).
    pub audience: String,
    /// Google's signing keys, kept current.
    pub jwks: GoogleKeys,
    /// The push subscription's service account (`--push-auth-service-account`):
    /// the token's `email`, which Google must have verified. Empty: every
    /// push is refused, and each refusal logged with the reason.
    pub email: String,
    /// That account's unique id, when configured: the token's `sub`.
    pub subject: Option<String>,
    /// The GCP project whose VMs' preemptions count (`STUDIO_GCP_PROJECT`):
    /// an entry of another project is refused.
    pub project: Option<String>,
}

/// Where Google publishes the keys that sign its OIDC tokens.
pub const GOOGLE_CERTS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Google's token-signing keys, fetched from its certificates URL and kept
/// for the response's `Cache-Control: max-age`. Google rotates them: a new
/// key signs tokens before a cache made earlier expires, so a token naming
/// a key not in the cache fetches again at once, at most once per
/// `refetch_after` (an unknown key in a forged token cannot make every
/// request a fetch). A fetch that fails keeps the keys there are.
pub struct GoogleKeys {
    /// `None`: a fixed set (tests, or keys an operator pins).
    url: Option<String>,
    refetch_after: std::time::Duration,
    http: Option<reqwest::Client>,
    cache: tokio::sync::Mutex<KeyCache>,
}

struct KeyCache {
    set: jsonwebtoken::jwk::JwkSet,
    fetched: Option<std::time::Instant>,
    /// The last fetch tried, whether it answered or not: the bound on
    /// fetches holds while Google's endpoint fails too.
    tried: Option<std::time::Instant>,
    max_age: std::time::Duration,
}

impl GoogleKeys {
    /// Exactly these keys, never fetched.
    pub fn fixed(set: jsonwebtoken::jwk::JwkSet) -> GoogleKeys {
        GoogleKeys {
            url: None,
            refetch_after: std::time::Duration::MAX,
            http: None,
            cache: tokio::sync::Mutex::new(KeyCache {
                set,
                fetched: None,
                tried: None,
                max_age: std::time::Duration::MAX,
            }),
        }
    }

    /// The keys at `url` ([`GOOGLE_CERTS`] in production), fetched on
    /// first need; an unknown key fetches again after `refetch_after`.
    pub fn fetched(url: &str, refetch_after: std::time::Duration) -> GoogleKeys {
        GoogleKeys {
            url: Some(url.to_string()),
            refetch_after,
            http: Some(
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(5))
                    .build()
                    .expect("an HTTP client (its TLS setup failed)"),
            ),
            cache: tokio::sync::Mutex::new(KeyCache {
                set: jsonwebtoken::jwk::JwkSet { keys: Vec::new() },
                fetched: None,
                tried: None,
                max_age: std::time::Duration::ZERO,
            }),
        }
    }

    /// The key named `kid`.
    ///
    /// # Errors
    /// Why no key of that name can be had (unknown, or the keys could not
    /// be fetched).
    pub async fn find(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, String> {
        let mut cache = self.cache.lock().await;
        let age = cache.fetched.map(|t| t.elapsed());
        let known = cache.set.find(kid).is_some();
        let stale = age.is_none_or(|a| a >= cache.max_age);
        let may_try = cache
            .tried
            .is_none_or(|t| t.elapsed() >= self.refetch_after);
        let mut fetch_error = None;
        if let (Some(url), Some(http)) = (&self.url, &self.http) {
            if (stale || !known) && may_try {
                cache.tried = Some(std::time::Instant::now());
                match fetch_keys(http, url).await {
                    Ok((set, max_age)) => {
                        cache.set = set;
                        cache.fetched = cache.tried;
                        // Google says hours; a day at most whatever it says.
                        cache.max_age = max_age.min(std::time::Duration::from_secs(86_400));
                    }
                    Err(e) => {
                        tracing::warn!(url, error = %e, "could not fetch Google's signing keys; keeping the ones there are");
                        fetch_error = Some(e);
                    }
                }
            }
        }
        if let Some(k) = cache.set.find(kid) {
            return Ok(k.clone());
        }
        Err(match fetch_error {
            Some(e) => format!(
                "the token's key '{kid}' is not known and Google's keys could not be fetched: {e}"
            ),
            None => format!("the token's key '{kid}' is not among Google's signing keys"),
        })
    }
}

/// GET of a JWKS and its `Cache-Control: max-age` (none: an hour).
async fn fetch_keys(
    http: &reqwest::Client,
    url: &str,
) -> Result<(jsonwebtoken::jwk::JwkSet, std::time::Duration), String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let max_age = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
        })
        .unwrap_or(3600);
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let set = serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))?;
    Ok((set, std::time::Duration::from_secs(max_age)))
}

/// Issuers of Google's OIDC tokens.
const GOOGLE_ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];

/// What the webhook needs.
pub struct Webhook<'a> {
    pub keys: &'a Keys,
    /// The handlers' context: the submit queue, the job store, the clock.
    pub ctx: &'a Ctx,
    /// `None`: the Pub/Sub push route refuses every request.
    pub push: Option<&'a PushAuth>,
    /// The submit queue's name.
    pub submit_queue: &'a str,
    /// The contract's schema, compiled on first need.
    pub schema: &'a Schema,
}

/// The SubmitJob schema, compiled when a body is refused (for its reasons).
/// Compiling it (jsonschema 0.30, the 2020-12 meta-schema) takes about
/// 30 ms and 45 MB at its peak: it was most of the function's cold start
/// and memory (`scripts/bench`), and a body the parser takes needs no
/// schema. The parser is the contract's source of truth (the submit
/// function uses it alone); the schema is generated from the same types
/// and only says where a refused body went wrong.
pub struct Schema(std::sync::OnceLock<jsonschema::Validator>);

impl Schema {
    pub fn validator(&self) -> &jsonschema::Validator {
        self.0.get_or_init(|| {
            jsonschema::validator_for(&SubmitJob::json_schema())
                .expect("the SubmitJob schema compiles")
        })
    }
}

/// The schema, not yet compiled.
pub fn schema() -> Schema {
    Schema(std::sync::OnceLock::new())
}

/// The HMAC key of an unknown key name: the signature is checked all the
/// same, so an unknown key takes as long to refuse as a wrong signature.
const NO_SECRET: &[u8] = b"studio: no such key";

/// The request's path without its query and trailing `/`: what routes match.
fn route_path(target: &str) -> &str {
    target
        .split_once('?')
        .map_or(target, |(p, _)| p)
        .trim_end_matches('/')
}

impl Webhook<'_> {
    pub async fn handle(&self, req: &Request) -> Response {
        if req.body.len() > MAX_BODY {
            return refuse(
                413,
                format!(
                    "the body is {} bytes; at most {MAX_BODY} are taken",
                    req.body.len()
                ),
            );
        }
        let path = route_path(&req.path);
        if path == "/v1/pubsub/preemption" {
            return if req.method == "POST" {
                self.preemption(req).await
            } else {
                refuse(405, "POST only")
            };
        }
        // The routes are public (the contract page), so an unknown one is
        // told before the signature is checked.
        let read = match (req.method.as_str(), path) {
            ("POST", "/v1/jobs") => None,
            ("GET", p) if p.starts_with("/v1/jobs/") => Some(&p["/v1/jobs/".len()..]),
            (m, p) => {
                return refuse(
                    404,
                    format!("no route {m} {p}: POST /v1/jobs, GET /v1/jobs/ID"),
                )
            }
        };
        let owner = match self.authenticate(req, read.is_none()) {
            Ok(o) => o,
            Err(why) => return refuse(401, why),
        };
        match read {
            None => self.post_job(&owner, &req.body).await,
            Some(id) => self.get_job(&owner, id).await,
        }
    }

    /// The signing key's name, or why the request is refused. `v1_taken`:
    /// the route takes the first version's signature (`POST /v1/jobs`).
    fn authenticate(&self, req: &Request, v1_taken: bool) -> Result<String, String> {
        let header = |name: &str| {
            req.headers
                .get(name)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("missing header {name}"))
        };
        let key_name = header("x-studio-key")?;
        let ts_text = header("x-studio-timestamp")?;
        let signature = header("x-studio-signature")?;
        let ts: i64 = ts_text
            .parse()
            .map_err(|_| format!("x-studio-timestamp '{ts_text}' is not Unix seconds"))?;
        let now = self.ctx.clock.now().0 / 1000;
        let skew = MAX_SKEW.as_secs();
        // abs_diff: no overflow at either end of i64.
        let off = now.abs_diff(ts);
        if off > skew {
            return Err(if ts < now {
                format!(
                    "x-studio-timestamp is {off} s old; at most {skew} s are taken \
                     (sign each request anew)"
                )
            } else {
                format!("x-studio-timestamp is {off} s in the future; check the sender's clock")
            });
        }
        let (v2, hex_sig) = if let Some(h) = signature.strip_prefix("v2=") {
            (true, h)
        } else if let Some(h) = signature.strip_prefix("sha256=") {
            (false, h)
        } else {
            return Err(
                "x-studio-signature must be v2=<hex> (or, on POST /v1/jobs only, \
                 the first version's sha256=<hex>)"
                    .into(),
            );
        };
        if !v2 && !v1_taken {
            return Err(format!(
                "{} {} needs a v2 signature (x-studio-signature: v2=<hex>): the first \
                 version's sha256= covers no method or path, so it is taken on POST /v1/jobs only",
                req.method,
                route_path(&req.path)
            ));
        }
        let given =
            hex::decode(hex_sig).map_err(|_| "x-studio-signature is not hex".to_string())?;
        // An unknown key is checked against a secret no signature matches
        // and refused with the same words as a wrong signature: neither
        // the answer nor its time tells which names exist.
        let secret = self.keys.0.get(&key_name);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.map_or(NO_SECRET, Vec::as_slice))
            .expect("HMAC takes any key length");
        if v2 {
            mac.update(
                string_to_sign(&key_name, &req.method, &req.path, &ts_text, &req.body).as_bytes(),
            );
        } else {
            mac.update(ts_text.as_bytes());
            mac.update(b".");
            mac.update(&req.body);
        }
        // Constant-time comparison.
        let matches = mac.verify_slice(&given).is_ok();
        if secret.is_none() || !matches {
            return Err(if v2 {
                "unknown key or the signature does not match: v2= is the hex HMAC-SHA256, \
                 under the key's secret, of \"v2\\n{key}\\n{METHOD}\\n{path}\\n{timestamp}\\n\
                 {hex SHA-256 of the body}\""
            } else {
                "unknown key or the signature does not match: sha256= is the hex \
                 HMAC-SHA256, under the key's secret, of \"{timestamp}.{body}\""
            }
            .into());
        }
        Ok(key_name)
    }

    async fn post_job(&self, owner: &str, body: &[u8]) -> Response {
        let mut value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return refuse(400, format!("the body is not JSON: {e}")),
        };
        let Some(fields) = value.as_object_mut() else {
            return refuse(400, "the body must be a JSON object (a SubmitJob)");
        };
        match fields.get("owner") {
            Some(o) if o != owner => {
                return refuse(
                    400,
                    format!("owner is the signing key's name ('{owner}'); leave it out"),
                )
            }
            _ => {
                fields.insert("owner".into(), owner.into());
            }
        }
        if !fields.contains_key("job_id") {
            // The same key and body: the same job, however often retried.
            let digest = hex::encode(Sha256::digest([owner.as_bytes(), b"\n", body].concat()));
            fields.insert("job_id".into(), format!("wh-{}", &digest[..26]).into());
        }
        let text = value.to_string();
        let spec = match SubmitJob::from_json(&text) {
            Ok(s) => s,
            Err(e) => {
                // Every field at fault, with its path, where the schema
                // sees them; else the parser's reason.
                let mut reasons: Vec<String> = self
                    .schema
                    .validator()
                    .iter_errors(&value)
                    .map(|e| {
                        let at = e.instance_path.to_string();
                        format!("{}: {e}", if at.is_empty() { "/" } else { &at })
                    })
                    .collect();
                if reasons.is_empty() {
                    reasons.push(e.to_string());
                }
                return Response {
                    status: 400,
                    body: serde_json::json!({ "error": "not a valid SubmitJob", "reasons": reasons }),
                };
            }
        };
        let id = spec.job_id.clone().expect("set above");
        if let Ok(Some(existing)) = self.ctx.store.get_job(&id).await {
            if existing.spec.owner != owner {
                return refuse(409, format!("job id '{id}' belongs to another key"));
            }
        }
        if let Err(e) = self.ctx.queue.send(self.submit_queue, &[text]).await {
            return refuse(
                503,
                format!("the submit queue did not take it ({e}); retry"),
            );
        }
        Response {
            status: 202,
            body: serde_json::json!({
                "job_id": id.as_str(),
                "status_url": format!("/v1/jobs/{id}"),
            }),
        }
    }

    /// The job `id` if `owner`'s key submitted it. Another owner's job and
    /// no job answer alike, so a key cannot learn which ids exist.
    async fn get_job(&self, owner: &str, id: &str) -> Response {
        let Ok(id) = JobId::new(id) else {
            return refuse(400, format!("'{id}' is not a job id"));
        };
        match self.ctx.store.get_job(&id).await {
            Ok(Some(job)) if job.spec.owner == owner => Response {
                status: 200,
                body: serde_json::json!({
                    "job_id": job.id.as_str(),
                    "state": job.state.to_string(),
                    "attempt": job.attempt,
                    "attempts": job.attempts,
                    "events": job.events,
                }),
            },
            Ok(_) => refuse(
                404,
                "no such job of this key (a key sees the jobs it submitted; a job appears \
                 once the submit function has taken it, within seconds)",
            ),
            Err(e) => refuse(503, format!("the job store did not answer ({e}); retry")),
        }
    }
}

impl Webhook<'_> {
    /// `POST /v1/pubsub/preemption`: a Pub/Sub push of a GCE preemption
    /// audit-log entry, authenticated by the push's OIDC token; the job on
    /// that instance runs again elsewhere. Idempotent on `messageId` (a
    /// redelivery finds the job already requeued).
    async fn preemption(&self, req: &Request) -> Response {
        let Some(auth) = self.push else {
            return refuse(401, "Pub/Sub push is not configured on this deployment");
        };
        let token = match req
            .headers
            .get("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            Some(t) => t.trim(),
            None => return refuse(401, "missing header authorization: Bearer <OIDC token>"),
        };
        if let Err(why) = verify_token(auth, token).await {
            return refuse(401, why);
        }
        let event = match preemption_event(&req.body, auth.project.as_deref()) {
            Ok(e) => e,
            Err(why) => return refuse(400, why),
        };
        let message_id = event.event_id.clone();
        match studio_core::handlers::handle_interruption(self.ctx, &event).await {
            Ok(outcome) => Response {
                status: 200,
                body: serde_json::json!({ "message_id": message_id, "outcome": format!("{outcome:?}") }),
            },
            // Not acknowledged: Pub/Sub pushes it again.
            Err(e) => refuse(503, format!("{e}; Pub/Sub will push it again")),
        }
    }
}

/// The instance event a Pub/Sub push of a GCE preemption audit-log entry
/// carries: the VM's name, its numeric id and the entry's time (a managed
/// instance group recreates the VM under its name; the id and the time say
/// which VM it was). The push's `messageId` is the event's id.
///
/// What the sink writes is checked, not only the token: anyone who may
/// publish to the sink's topic gets a genuine push token for what they
/// publish, so the entry must be Compute's own system-event audit entry,
/// of `project` (when given), naming the VM's id.
///
/// # Errors
/// Why the body is not such a push (answered 400: Pub/Sub gives up on it).
pub fn preemption_event(body: &[u8], project: Option<&str>) -> Result<InstanceEvent, String> {
    let envelope: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err(format!("not a Pub/Sub push envelope: {e}")),
    };
    let (Some(message_id), Some(data)) = (
        envelope["message"]["messageId"].as_str(),
        envelope["message"]["data"].as_str(),
    ) else {
        return Err(
            "not a Pub/Sub push envelope: message.messageId and message.data are required".into(),
        );
    };
    use base64::Engine;
    let entry: serde_json::Value = match base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(e) => e,
        None => return Err("message.data is not base64 of a JSON log entry".into()),
    };
    let method = entry["protoPayload"]["methodName"]
        .as_str()
        .unwrap_or_default();
    if method != "compute.instances.preempted" {
        return Err(format!("not a preemption entry (methodName '{method}')"));
    }
    let log = entry["logName"].as_str().unwrap_or_default();
    if !log.ends_with("/logs/cloudaudit.googleapis.com%2Fsystem_event")
        || entry["protoPayload"]["serviceName"] != "compute.googleapis.com"
        || entry["resource"]["type"] != "gce_instance"
    {
        return Err(format!(
            "not Compute's system-event audit entry (logName '{log}', serviceName {}, resource.type {})",
            entry["protoPayload"]["serviceName"], entry["resource"]["type"]
        ));
    }
    if let Some(p) = project {
        let of = entry["resource"]["labels"]["project_id"]
            .as_str()
            .unwrap_or_default();
        if of != p {
            return Err(format!(
                "the entry is of project '{of}', not this deployment's '{p}'"
            ));
        }
    }
    let name = entry["protoPayload"]["resourceName"]
        .as_str()
        .and_then(|r| r.rsplit_once("/instances/").map(|(_, n)| n.to_string()));
    let Some(instance) = name.and_then(|n| InstanceId::new(n).ok()) else {
        return Err("the entry names no instance (protoPayload.resourceName)".into());
    };
    // A managed instance group recreates a preempted VM under the same
    // name: the entry's numeric id and time say which VM it was, so a
    // late push leaves the newer VM's attempt alone.
    let Some(machine_uid) = entry["resource"]["labels"]["instance_id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
    else {
        return Err("the entry names no VM id (resource.labels.instance_id)".into());
    };
    let at = entry["timestamp"]
        .as_str()
        .and_then(studio_core::clock::Timestamp::parse_rfc3339);
    Ok(InstanceEvent {
        event_id: message_id.to_string(),
        instance,
        kind: InstanceEventKind::Gone {
            state: "preempted".into(),
        },
        machine_uid: Some(machine_uid),
        at,
    })
}

/// A Google-signed OIDC token for `auth.audience` from the push
/// subscription's service account: the signature (RS256, by a key of the
/// JWKS named in the token's `kid`), the issuer, the audience, the expiry,
/// then who it is: `email` the configured account's, `email_verified`
/// true and, when configured, `sub` its unique id.
async fn verify_token(auth: &PushAuth, token: &str) -> Result<(), String> {
    let email = auth.email.trim();
    if email.is_empty() {
        let why = "Pub/Sub push is refused: this deployment names no push service account \
                   (STUDIO_PUBSUB_PUSH_EMAIL), so no token's sender can be checked";
        tracing::error!("{why}");
        return Err(why.into());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
    let kid = header.kid.ok_or("the token names no key (kid)")?;
    let jwk = auth.jwks.find(&kid).await?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("key '{kid}': {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[auth.audience.as_str()]);
    validation.set_issuer(GOOGLE_ISSUERS);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| format!("the token is not valid for this endpoint: {e}"))?
        .claims;
    match claims["email"].as_str() {
        Some(e) if e == email => {}
        Some(e) => {
            return Err(format!(
                "the token is from '{e}', not the push subscription's service account"
            ))
        }
        None => return Err("the token names no sender (email)".into()),
    }
    if claims["email_verified"] != serde_json::Value::Bool(true) {
        return Err("the token's email is not verified (email_verified must be true)".into());
    }
    if let Some(subject) = &auth.subject {
        if claims["sub"].as_str() != Some(subject.as_str()) {
            return Err(
                "the token's subject (sub) is not the push subscription's service account".into(),
            );
        }
    }
    Ok(())
}

/// What a version 2 signature covers: the key's name, the method, the
/// request target (the path as sent, with `?` and the query if any), the
/// `X-Studio-Timestamp` value as sent and the hex SHA-256 of the body, one
/// per line after `v2`.
pub fn string_to_sign(
    key: &str,
    method: &str,
    target: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    format!(
        "v2\n{key}\n{method}\n{target}\n{timestamp}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

/// The `X-Studio-Signature` value a sender computes: `v2=<hex>` (for the
/// tests; the contract page's example computes it with openssl).
pub fn sign_v2(
    secret: &[u8],
    key: &str,
    method: &str,
    target: &str,
    timestamp: &str,
    body: &[u8],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(string_to_sign(key, method, target, timestamp, body).as_bytes());
    format!("v2={}", hex::encode(mac.finalize().into_bytes()))
}

/// The first version's `X-Studio-Signature` value, `sha256=<hex>` of
/// `"{timestamp}.{body}"`: taken on `POST /v1/jobs` only; new senders use
/// [`sign_v2`].
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
