//! `studio ui`: a web page of jobs and pools, served from this binary to a
//! browser on the same machine. It reads the same stores as `studio status`
//! (this home's SQLite, and the AWS deployment when one is configured) and
//! cancels the way `studio cancel` does; nothing else is written.
//!
//! The page (`index.html`, `app.js`, `app.css` beside this file) is embedded and
//! fetches only `/api/v1/…` of its own origin; the API is documented in
//! docs/using.md ("studio ui"). Live updates are polls with ETags: an unchanged
//! answer is a bodiless 304.
//!
//! Bound to 127.0.0.1 unless told otherwise. Every request must carry the
//! token the address printed at start holds (other users of the machine
//! can reach a loopback port): the page's first request brings it in the
//! query and gets it back as an `HttpOnly`, `SameSite=Strict` cookie;
//! scripts send `Authorization: Bearer TOKEN`. On loopback the `Host`
//! header must name loopback (a page elsewhere cannot reach it by DNS
//! rebinding), and the one write, cancel, needs a JSON content type (which
//! a cross-site form cannot send without a CORS preflight this server never
//! grants).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use studio_core::clock::{Clock, SystemClock, Timestamp};
use studio_core::handlers::{self, CancelOutcome};
use studio_core::ids::{JobId, PoolKey};
use studio_core::job::{usd, Attempt, Job, JobState};
use studio_core::pool::Pool;
use studio_core::ports::{
    merge_pages, parse_listing_key, ArtifactStore, JobPage, JobQuery, JobStore, PortError,
};
use studio_core::resources::WorkerPolicy;
use studio_core::url;
use studio_gcp::gcs::GcsArtifacts;
use studio_local::LocalBackend;

/// Answers are whole in memory (JSON, the page, an output file), so the
/// ETag is computed from their bytes before they go out.
type Answer = Response<Bytes>;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Most jobs on a page of the API.
const MAX_LIMIT: u32 = 200;
/// The first read of a log returns at most its last this many bytes.
const LOG_TAIL: usize = 64 << 10;
/// Most bytes one log answer carries (the page asks again from `next`).
const LOG_CHUNK: usize = 1 << 20;
/// How long after a cancel a script may still print (its SIGTERM grace).
const CANCEL_TAIL: Duration = Duration::from_secs(20);

/// Where the page's data comes from.
pub struct Sources {
    /// This home's backend; filled in when it appears (a `studio run` in
    /// another shell creates it after the page started).
    pub local: Mutex<Option<Arc<LocalBackend>>>,
    pub aws: Option<studio_aws::AwsJobs>,
    /// GCE jobs' files (their records are in the AWS deployment).
    pub gcs: Option<GcsArtifacts>,
    /// Who cancels, in the job's events: `ui:<user>`.
    pub user: String,
    /// `Some(port)`: only requests whose `Host` is loopback on this port.
    pub loopback_port: Option<u16>,
    /// Where output files are fetched to before they are sent.
    pub scratch: PathBuf,
    /// What every request must show (cookie `studio_ui`, or a bearer token).
    pub token: String,
    /// The page `--open` gave the browser (it holds the token): removed
    /// once the token has been presented.
    pub handover: Mutex<Option<PathBuf>>,
}

/// The cookie the page keeps the token in.
const COOKIE: &str = "studio_ui";
/// The answer to the printed address: the cookie is set, and the page
/// moves on to `/` in place (see [`answer`]).
const ENTER: &str = "<!doctype html>\n<meta charset=\"utf-8\">\n<meta http-equiv=\"refresh\" content=\"0; url=/\">\n<title>Studio</title>\n<script>location.replace(\"/\")</script>\n";

/// 128 random bits, hex.
///
/// # Errors
/// The system's random source cannot be read.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether the request shows the token: its cookie, or a bearer token.
fn shows_token(req: &Request<Incoming>, token: &str) -> bool {
    let h = req.headers();
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim(), token));
    let cookie = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && same(v, token));
    bearer || cookie
}

struct ApiError(StatusCode, String);

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        ApiError(StatusCode::BAD_GATEWAY, e.to_string())
    }
}

type ApiResult = Result<Answer, ApiError>;

impl Sources {
    fn local(&self) -> Option<Arc<LocalBackend>> {
        self.local.lock().expect("not poisoned").clone()
    }

    fn stores(&self) -> Vec<StoreRef<'_>> {
        let mut out = Vec::new();
        if let Some(l) = self.local() {
            out.push(StoreRef::Local(l));
        }
        if let Some(a) = &self.aws {
            out.push(StoreRef::Aws(a));
        }
        out
    }

    /// A job, and the store that holds its record.
    async fn find(&self, id: &JobId) -> Result<Option<(StoreRef<'_>, Job)>, ApiError> {
        for store in self.stores() {
            if let Some(j) = store.get().get_job(id).await? {
                return Ok(Some((store, j)));
            }
        }
        Ok(None)
    }
}

/// A job store however it is held.
enum StoreRef<'a> {
    Local(Arc<LocalBackend>),
    Aws(&'a studio_aws::AwsJobs),
}

impl<'a> StoreRef<'a> {
    fn get(&self) -> &dyn JobStore {
        match self {
            StoreRef::Local(l) => l.store.as_ref(),
            StoreRef::Aws(a) => &a.store,
        }
    }

    /// The files of `job`, whose record this store holds: GCE jobs'
    /// records are in the AWS deployment, their files in GCS.
    fn artifacts<'s>(
        &'s self,
        src: &'s Sources,
        job: &Job,
    ) -> Result<&'s dyn ArtifactStore, ApiError> {
        match self {
            StoreRef::Local(l) => Ok(l.artifacts.as_ref()),
            StoreRef::Aws(a) => {
                if studio_core::route::Provider::of(job.spec.cloud)
                    != studio_core::route::Provider::Gcp
                {
                    return Ok(&a.artifacts);
                }
                src.gcs.as_ref().map(|g| g as &dyn ArtifactStore).ok_or_else(|| {
                    ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "GCE jobs keep their files in a GCS bucket: set STUDIO_GCP_BUCKET (or bucket in [gcp] of config.toml)".into(),
                    )
                })
            }
        }
    }
}

/// Answers one request.
pub async fn handle(
    src: Arc<Sources>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(answer(&src, req).await.map(Full::new))
}

async fn answer(src: &Sources, req: Request<Incoming>) -> Answer {
    if let Some(port) = src.loopback_port {
        if !loopback_host(&req, port) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "this server answers only to 127.0.0.1 and localhost",
            );
        }
    }
    // The printed address: its token becomes the page's cookie, and a
    // page of ours moves on to `/` (the token leaves the address bar). Not
    // a redirect: a `SameSite=Strict` cookie is not sent on the next hop
    // of a navigation another site (or a `file://` page: `--open`'s)
    // started, and the page would answer 401; a navigation this page
    // starts is same-site, whatever brought the browser here.
    let offered = req.uri().query().and_then(|q| {
        query_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    });
    if req.uri().path() == "/" && offered.as_deref().is_some_and(|t| same(t, &src.token)) {
        // The browser has it now: the file that carried it is not needed.
        if let Some(page) = src.handover.lock().expect("not poisoned").take() {
            let _ = std::fs::remove_file(page);
        }
        let mut r = Response::new(Bytes::from_static(ENTER.as_bytes()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            src.token
        )) {
            h.insert(header::SET_COOKIE, v);
        }
        return r;
    }
    if !shows_token(&req, &src.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "open the address studio ui printed when it started: it carries this server's token",
        );
    }
    let etag_in = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let r = route(src, req)
        .await
        .unwrap_or_else(|ApiError(code, msg)| error(code, &msg));
    with_etag(r, etag_in.as_deref())
}

fn loopback_host(req: &Request<Incoming>, port: u16) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host == format!("{h}:{port}") || (port == 80 && host == *h))
}

async fn route(src: &Sources, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query().unwrap_or(""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, [""]) => Ok(asset(INDEX_HTML, "text/html; charset=utf-8")),
        (&Method::GET, ["app.js"]) => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        (&Method::GET, ["app.css"]) => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
        (&Method::GET, ["api", "v1", "jobs"]) => list(src, &query).await,
        (&Method::GET, ["api", "v1", "pools"]) => pools(src).await,
        (&Method::GET, ["api", "v1", "jobs", id]) => detail(src, &job_id(id)?).await,
        (&Method::GET, ["api", "v1", "jobs", id, "log"]) => log(src, &job_id(id)?, &query).await,
        (&Method::POST, ["api", "v1", "jobs", id, "cancel"]) => {
            let json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json");
            if !json {
                return Err(ApiError(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "cancel takes Content-Type: application/json".into(),
                ));
            }
            cancel(src, &job_id(id)?).await
        }
        (&Method::GET, ["api", "v1", "jobs", id, "outputs", attempt, rest @ ..])
            if !rest.is_empty() =>
        {
            let n: u32 = attempt.parse().map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("attempt '{attempt}' is not a number"),
                )
            })?;
            let file = rest
                .iter()
                .map(|p| url::decode(p))
                .collect::<Vec<_>>()
                .join("/");
            output(src, &job_id(id)?, n, &file).await
        }
        (_, ["api", ..]) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no API route {} {path}", req.method()),
        )),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("nothing at {path}"),
        )),
    }
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    JobId::new(url::decode(s))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("job id: {e}")))
}

/// `GET /api/v1/jobs`: a page of jobs from every store, newest first.
async fn list(src: &Sources, query: &[(String, String)]) -> ApiResult {
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let limit = match get("limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "limit '{v}' must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let state = get("state")
        .map(|s| s.parse::<JobState>().map_err(|_| bad(format!("state '{s}' is not one of queued, running, interrupted, finished, failed, cancelled"))))
        .transpose()?;
    let pool = get("pool")
        .map(|p| PoolKey::new(p).map_err(|e| bad(format!("pool: {e}"))))
        .transpose()?;
    let before = get("cursor")
        .map(|c| {
            parse_listing_key(c)
                .map(|_| c.to_string())
                .ok_or_else(|| bad(format!("cursor '{c}' is not one this API gave")))
        })
        .transpose()?;
    let q = JobQuery {
        state,
        pool,
        owner: get("owner").map(String::from),
        before,
        limit,
    };
    let mut pages = Vec::new();
    for store in src.stores() {
        pages.push(store.get().page_jobs(&q).await?);
    }
    let JobPage { jobs, next } = merge_pages(pages, limit);
    let now = SystemClock.now();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "jobs": jobs.iter().map(|j| summary(j, now)).collect::<Vec<_>>(),
            "next_cursor": next,
        }),
    ))
}

fn ms(t: Timestamp) -> i64 {
    t.0
}

/// The fields of a job in the list.
fn summary(j: &Job, now: Timestamp) -> Value {
    let started = j.attempts.first().map(|a| a.started_at);
    let cost = j.cost_micro_usd(now);
    json!({
        "id": j.id.as_str(),
        "script": j.command_line(),
        "owner": j.spec.owner,
        "state": j.state.as_str(),
        "cloud": j.spec.cloud.to_string(),
        "machine": j.plan.machine,
        "market": j.plan.market.to_string(),
        "pool": j.pool.as_str(),
        "attempts": j.attempt,
        "created_at": ms(j.created_at),
        "started_at": started.map(ms),
        "ended_at": j.ended_at().map(ms),
        "duration_secs": j.runtime(now).as_secs(),
        "cost_usd": cost as f64 / 1e6,
        "cost": usd(cost),
        // f32 on the record; four places are all a bar can show.
        "progress": j.progress.map(|p| (f64::from(p) * 1e4).round() / 1e4),
        "reason": j.reason,
    })
}

fn attempt_json(j: &Job, a: &Attempt, now: Timestamp) -> Value {
    json!({
        "number": a.number,
        "instance": a.instance.as_str(),
        "machine": a.machine,
        "market": a.market.to_string(),
        "zone": a.zone,
        "price_per_hour_usd": a.price_micro_usd_per_hour as f64 / 1e6,
        "price_basis": a.price_basis(),
        "started_at": ms(a.started_at),
        "ended_at": a.ended_at.map(ms),
        "duration_secs": a.ended_at.unwrap_or(now).since(a.started_at).as_secs(),
        "outcome": a.outcome.map(|o| o.as_str()),
        "exit_code": a.exit_code,
        "cost": usd(a.cost_micro_usd(now)),
        "outputs": a.outputs.as_ref().map(|o| json!({"files": o.files, "bytes": o.bytes})),
        "current": a.number == j.attempt,
    })
}

/// `GET /api/v1/jobs/ID`.
async fn detail(src: &Sources, id: &JobId) -> ApiResult {
    let Some((store, j)) = src.find(id).await? else {
        return Err(not_found(id));
    };
    let now = SystemClock.now();
    let mut v = summary(&j, now);
    let outputs = match j
        .attempts
        .iter()
        .rev()
        .find_map(|a| a.outputs.clone().map(|o| (a.number, o)))
    {
        None => Value::Null,
        Some((n, r)) => {
            let arts = store.artifacts(src, &j)?;
            let m = studio_core::outputs_store::manifest(arts, &j.id, &r, &src.scratch).await?;
            json!({
                "attempt": n,
                "files": m.files.iter().map(|f| json!({
                    "path": f.path,
                    "size": f.size,
                    "url": format!("/api/v1/jobs/{}/outputs/{n}/{}", j.id, f.path.split('/').map(url::encode).collect::<Vec<_>>().join("/")),
                })).collect::<Vec<_>>(),
            })
        }
    };
    let extra = json!({
        "events": j.events.iter().map(|e| json!({
            "at": ms(e.at),
            "from": e.from.map(|f| f.as_str()),
            "to": e.to.as_str(),
            "by": e.by,
            "reason": e.reason,
        })).collect::<Vec<_>>(),
        "attempts": j.attempts.iter().map(|a| attempt_json(&j, a, now)).collect::<Vec<_>>(),
        // Values may be secrets: only the names leave the store.
        "env": j.spec.env.keys().map(|k| (k.clone(), Value::from("••••"))).collect::<serde_json::Map<_, _>>(),
        "exit_code": j.exit_code,
        "last_lines": j.last_lines,
        "budget": j.spec.max_cost_cents.map(|c| usd(c * 10_000)),
        "outputs": outputs,
    });
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// `GET /api/v1/jobs/ID/log?offset=N`.
async fn log(src: &Sources, id: &JobId, query: &[(String, String)]) -> ApiResult {
    let Some((store, j)) = src.find(id).await? else {
        return Err(not_found(id));
    };
    let offset = match query.iter().find(|(k, _)| k == "offset") {
        None => None,
        Some((_, v)) => Some(v.parse::<u64>().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("offset '{v}' is not a byte count"),
            )
        })?),
    };
    let arts = store.artifacts(src, &j)?;
    let bytes = arts.read_log(id, offset.unwrap_or(0)).await?;
    let mut start = offset.unwrap_or(0);
    let mut text: &[u8] = &bytes;
    if offset.is_none() && text.len() > LOG_TAIL {
        // The tail, from a line's start.
        let cut = text.len() - LOG_TAIL;
        let line = text[cut..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(cut, |p| cut + p + 1);
        start += line as u64;
        text = &text[line..];
    }
    text = &text[..text.len().min(LOG_CHUNK)];
    let script_done = j.state.is_terminal()
        && (j.state != JobState::Cancelled
            || j.attempts
                .last()
                .is_none_or(|a| a.script_ended_at.is_some())
            || SystemClock.now().since(j.updated_at) > CANCEL_TAIL);
    // A character split by the end of what was written so far waits for
    // the rest (unless nothing more will come).
    if !script_done {
        if let Err(e) = std::str::from_utf8(text) {
            if e.error_len().is_none() {
                text = &text[..e.valid_up_to()];
            }
        }
    }
    let ended = script_done && bytes.is_empty();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "offset": start,
            "next": start + text.len() as u64,
            "text": String::from_utf8_lossy(text),
            "ended": ended,
        }),
    ))
}

/// `POST /api/v1/jobs/ID/cancel`: what `studio cancel` does.
async fn cancel(src: &Sources, id: &JobId) -> ApiResult {
    let Some((store, _)) = src.find(id).await? else {
        return Err(not_found(id));
    };
    let by = format!("ui:{}", src.user);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = match handlers::cancel(store.get(), &SystemClock, id, &by)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?
        {
            CancelOutcome::Cancelled => "cancelled".to_string(),
            CancelOutcome::AlreadyEnded(s) => format!("already ended: {s}"),
            CancelOutcome::NotFound => return Err(not_found(id)),
            CancelOutcome::Busy if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            CancelOutcome::Busy => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("job {id} is being requeued; try again"),
                ))
            }
        };
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "outcome": outcome }),
        ));
    }
}

/// `GET /api/v1/jobs/ID/outputs/N/PATH`: one output file of attempt N.
async fn output(src: &Sources, id: &JobId, n: u32, path: &str) -> ApiResult {
    let Some((store, j)) = src.find(id).await? else {
        return Err(not_found(id));
    };
    let r = j
        .attempts
        .iter()
        .find(|a| a.number == n)
        .and_then(|a| a.outputs.clone())
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("attempt {n} of job {id} left no outputs"),
            )
        })?;
    let arts = store.artifacts(src, &j)?;
    let m = studio_core::outputs_store::manifest(arts, id, &r, &src.scratch).await?;
    let f = m.files.iter().find(|f| f.path == path).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("attempt {n} of job {id} has no output '{path}'"),
        )
    })?;
    let tmp = src
        .scratch
        .join(format!("{}.{}", f.sha256, std::process::id()));
    arts.get_blob(id, &f.sha256, &tmp).await?;
    let read = tokio::fs::read(&tmp).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    let bytes = read.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {path}: {e}"),
        )
    })?;
    let name = path
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .replace(['"', '\\'], "_");
    let mut resp = Response::new(Bytes::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `GET /api/v1/pools`: live pools with what scaling last saw.
async fn pools(src: &Sources) -> ApiResult {
    let mut all: Vec<Pool> = Vec::new();
    for store in src.stores() {
        all.extend(store.get().live_pools().await?);
    }
    let pools: Vec<Value> = all
        .iter()
        .map(|p| {
            let last = p.samples.last();
            json!({
                "key": p.key.as_str(),
                // This generation's group (and queue) key: the cloud's names end in it.
                "group": p.group_key().as_str(),
                "cloud": p.spec.cloud.to_string(),
                "region": p.spec.region,
                "market": p.spec.market.to_string(),
                "machine_types": p.spec.machine_types,
                "policy": match p.spec.policy {
                    WorkerPolicy::Auto => "auto".to_string(),
                    WorkerPolicy::Fixed(n) => format!("fixed {n}"),
                },
                "state": p.state.as_str(),
                "target": p.target,
                "actual": last.map(|s| s.actual),
                "queue_visible": last.map(|s| s.visible),
                "queue_in_flight": last.map(|s| s.in_flight),
                "samples": p.samples.iter().map(|s| json!({
                    "at": ms(s.at),
                    "target": s.target,
                    "actual": s.actual,
                    "visible": s.visible,
                    "in_flight": s.in_flight,
                })).collect::<Vec<_>>(),
                "created_at": ms(p.created_at),
                "updated_at": ms(p.updated_at),
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "pools": pools })))
}

fn not_found(id: &JobId) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job '{id}'"))
}

fn asset(body: &'static str, content_type: &'static str) -> Answer {
    let mut r = Response::new(Bytes::from_static(body.as_bytes()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Answer {
    let mut r = Response::new(Bytes::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Answer {
    json_response(status, &json!({ "error": msg }))
}

/// Successful GETs of JSON and assets carry an ETag (of their bytes); a
/// request that already has them gets 304. Every answer is `no-cache`:
/// the browser asks each time, and the ETag makes asking cheap.
fn with_etag(resp: Answer, if_none_match: Option<&str>) -> Answer {
    use sha2::Digest as _;
    let (mut parts, body) = resp.into_parts();
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let cacheable =
        parts.status == StatusCode::OK && parts.headers.get(header::CONTENT_DISPOSITION).is_none();
    if !cacheable {
        return Response::from_parts(parts, body);
    }
    let tag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&body))[..20]);
    if let Ok(v) = HeaderValue::from_str(&tag) {
        parts.headers.insert(header::ETAG, v);
    }
    if if_none_match.is_some_and(|m| m.split(',').any(|t| t.trim() == tag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        return Response::from_parts(parts, Bytes::new());
    }
    Response::from_parts(parts, body)
}

/// `a=1&b=x%20y` as pairs, `+` as space.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url::decode_form(k), url::decode_form(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_paths_decode() {
        assert_eq!(
            query_pairs("state=running&owner=a%20b&pool=&x"),
            vec![
                ("state".into(), "running".into()),
                ("owner".into(), "a b".into()),
                ("pool".into(), "".into()),
                ("x".into(), "".into())
            ]
        );
    }

    #[test]
    fn an_unchanged_answer_is_a_bodiless_304() {
        let r = with_etag(json_response(StatusCode::OK, &json!({"a": 1})), None);
        let tag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = with_etag(json_response(StatusCode::OK, &json!({"a": 1})), Some(&tag));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        let changed = with_etag(json_response(StatusCode::OK, &json!({"a": 2})), Some(&tag));
        assert_eq!(changed.status(), StatusCode::OK);
        let err = with_etag(error(StatusCode::NOT_FOUND, "x"), Some(&tag));
        assert!(err.headers().get(header::ETAG).is_none());
    }
}
