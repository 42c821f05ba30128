//! The webhook through real HTTP: a server on loopback hands each request to
//! `studio_aws::webhook` with the AWS adapters on `moto_server`, and a client
//! sends what a CI system would. Every refusal is checked on the queue:
//! nothing was enqueued.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use studio_aws::webhook::{sign, sign_v2, Keys, PushAuth, Request, Webhook, MAX_BODY};
use studio_core::clock::{Clock, ManualClock, SystemClock};
use studio_core::handlers::Ctx;

const SECRET: &str = "s3cret-for-the-ci-key";
const LAB_SECRET: &str = "another-secret-of-the-lab";
/// The push subscription's audience: the endpoint's URL.
const AUDIENCE: &str = "https://hooks.example/v1/pubsub/preemption";

struct Server {
    url: String,
    ctx: Ctx,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    clock: ManualClock,
    keys: Arc<Keys>,
    submit_queue: String,
}

async fn server() -> Server {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let clock = ManualClock::new(SystemClock.now());
    let ctx = studio_aws::lambda::context(&cfg, &sdk, Arc::new(clock.clone()));
    let keys = Arc::new(
        Keys::from_json(&format!(
            r#"{{"ci": "{SECRET}", "lab": "{LAB_SECRET}", "default": "{SECRET}"}}"#
        ))
        .unwrap(),
    );
    let schema = Arc::new(studio_aws::webhook::schema());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let push = Arc::new(PushAuth {
        audience: AUDIENCE.into(),
        jwks: studio_aws::webhook::GoogleKeys::fixed(
            serde_json::from_str(include_str!("../fixtures/oidc/jwks.json")).unwrap(),
        ),
        email: studio_tests::pubsub_push::PUSH_EMAIL.into(),
        subject: Some(studio_tests::pubsub_push::PUSH_SUBJECT.into()),
        project: Some("P".into()),
    });
    let (sctx, spush, queue, skeys) = (
        ctx.clone(),
        push.clone(),
        cfg.submit_queue.clone(),
        keys.clone(),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (ctx, push, keys, schema, queue) = (
                sctx.clone(),
                spush.clone(),
                skeys.clone(),
                schema.clone(),
                queue.clone(),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ctx, push, keys, schema, queue) = (
                            ctx.clone(),
                            push.clone(),
                            keys.clone(),
                            schema.clone(),
                            queue.clone(),
                        );
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes().to_vec();
                            let request = Request {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str())
                                    .to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_lowercase(),
                                            v.to_str().unwrap_or("").to_string(),
                                        )
                                    })
                                    .collect(),
                                body,
                            };
                            let hook = Webhook {
                                keys: &keys,
                                ctx: &ctx,
                                push: Some(push.as_ref()),
                                submit_queue: &queue,
                                schema: &schema,
                            };
                            let resp = hook.handle(&request).await;
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(resp.status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(resp.body.to_string())))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = studio_tests::queue_url(&sqs, &cfg.submit_queue).await;
    Server {
        url,
        ctx,
        sqs,
        queue_url,
        clock,
        keys,
        submit_queue: cfg.submit_queue.clone(),
    }
}

impl Server {
    fn now(&self) -> String {
        (self.clock.now().0 / 1000).to_string()
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// A request signed (v2) with `key`'s `secret` at `ts`.
    async fn signed(
        &self,
        method: &str,
        path: &str,
        key: &str,
        secret: &str,
        ts: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let sig = sign_v2(secret.as_bytes(), key, method, path, ts, body);
        self.send(method, path, &headers(key, ts, sig), body).await
    }

    /// A Pub/Sub push with `token`.
    async fn push(&self, token: String, body: Vec<u8>) -> (u16, serde_json::Value) {
        self.send(
            "POST",
            "/v1/pubsub/preemption",
            &[("authorization", format!("Bearer {token}"))],
            &body,
        )
        .await
    }

    /// Everything on the submit queue now (taken off it).
    async fn drain(&self) -> Vec<String> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let mut bodies = Vec::new();
        for m in out.messages() {
            bodies.push(m.body().unwrap_or_default().to_string());
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        bodies
    }
}

/// The three headers of a signed request.
fn headers(key: &str, ts: &str, signature: String) -> Vec<(&'static str, String)> {
    vec![
        ("x-studio-key", key.to_string()),
        ("x-studio-timestamp", ts.to_string()),
        ("x-studio-signature", signature),
    ]
}

fn job_body() -> Vec<u8> {
    br#"{"version": 1, "cloud": "ec2", "workspace": {"sha256": "0c1e3b5d7f9a1c3e5b7d9f1a9f2a5c0e4b7d1a3f6e8c0b2d4f6a8c0e1b3d5f7a", "bytes": 512}, "entrypoint": "hello.py", "args": ["--from", "ci"]}"#.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_makes_one_job_and_every_bad_one_is_refused_with_the_reason() {
    let s = server().await;
    let body = job_body();
    let now = s.now();
    let secs = s.clock.now().0 / 1000;
    let (old, future) = ((secs - 301).to_string(), (secs + 301).to_string());
    // v2 headers for `key`, signed as `as_key` (the same unless forged).
    let v2 = |key: &str, as_key: &str, secret: &str, method: &str, path: &str, body: &[u8]| {
        let sig = sign_v2(secret.as_bytes(), as_key, method, path, &now, body);
        headers(key, &now, sig)
    };
    let v1 = |key: &str, secret: &str, body: &[u8]| {
        headers(key, &now, sign(secret.as_bytes(), &now, body))
    };
    let post = |h: Vec<(&'static str, String)>, b: Vec<u8>| {
        let s = &s;
        async move { s.send("POST", "/v1/jobs", &h, &b).await }
    };

    // Each refusal: the status, a reason, nothing on the queue.
    let mut altered = body.clone();
    altered.extend_from_slice(b" ");
    let cases: Vec<(&str, (u16, serde_json::Value), u16, &str)> = vec![
        ("wrong secret", s.signed("POST", "/v1/jobs", "ci", "not-the-secret-at-all", &now, &body).await, 401, "does not match"),
        ("unknown key", s.signed("POST", "/v1/jobs", "intruder", SECRET, &now, &body).await, 401, "unknown key"),
        ("wrong secret, v1", post(v1("ci", "not-the-secret-at-all", &body), body.clone()).await, 401, "does not match"),
        ("unknown key, v1", post(v1("intruder", SECRET, &body), body.clone()).await, 401, "unknown key"),
        ("stale timestamp", s.signed("POST", "/v1/jobs", "ci", SECRET, &old, &body).await, 401, "s old"),
        ("future timestamp", s.signed("POST", "/v1/jobs", "ci", SECRET, &future, &body).await, 401, "in the future"),
        // The far ends of i64: no overflow, no panic, refused.
        ("timestamp i64::MIN", s.signed("POST", "/v1/jobs", "ci", SECRET, &i64::MIN.to_string(), &body).await, 401, "s old"),
        ("timestamp i64::MAX", s.signed("POST", "/v1/jobs", "ci", SECRET, &i64::MAX.to_string(), &body).await, 401, "in the future"),
        ("timestamp past i64", s.signed("POST", "/v1/jobs", "ci", SECRET, "9223372036854775808", &body).await, 401, "not Unix seconds"),
        ("missing signature", post(headers("ci", &now, String::new())[..2].to_vec(), body.clone()).await, 401, "missing header x-studio-signature"),
        ("unknown signature version", post(headers("ci", &now, "v3=00ff".into()), body.clone()).await, 401, "must be v2=<hex>"),
        ("signature not hex", post(headers("ci", &now, "v2=not-hex".into()), body.clone()).await, 401, "not hex"),
        ("body altered after signing", post(v2("ci", "ci", SECRET, "POST", "/v1/jobs", &body), altered.clone()).await, 401, "does not match"),
        ("body altered after signing, v1", post(v1("ci", SECRET, &body), altered).await, 401, "does not match"),
        ("signature of another body", post(v2("ci", "ci", SECRET, "POST", "/v1/jobs", b"{}"), body.clone()).await, 401, "does not match"),
        // "default" has ci's secret: a signature names its key.
        ("signed as another key of the same secret", post(v2("ci", "default", SECRET, "POST", "/v1/jobs", &body), body.clone()).await, 401, "does not match"),
        ("signed for another method", post(v2("ci", "ci", SECRET, "PUT", "/v1/jobs", &body), body.clone()).await, 401, "does not match"),
        (
            "a GET signed for one job, sent for another",
            s.send("GET", "/v1/jobs/job-b", &v2("ci", "ci", SECRET, "GET", "/v1/jobs/job-a", b""), b"").await,
            401,
            "does not match",
        ),
        (
            "a GET signed without the query it is sent with",
            s.send("GET", "/v1/jobs/job-a?x=1", &v2("ci", "ci", SECRET, "GET", "/v1/jobs/job-a", b""), b"").await,
            401,
            "does not match",
        ),
        ("a GET signed with the first version", s.send("GET", "/v1/jobs/job-a", &v1("ci", SECRET, b""), b"").await, 401, "GET /v1/jobs/job-a needs a v2 signature"),
        ("oversized body", s.signed("POST", "/v1/jobs", "ci", SECRET, &now, &vec![b' '; MAX_BODY + 1]).await, 413, "at most"),
        ("invalid JSON", s.signed("POST", "/v1/jobs", "ci", SECRET, &now, b"{not json").await, 400, "not JSON"),
        (
            "schema violation",
            s.signed("POST", "/v1/jobs", "ci", SECRET, &now, br#"{"version": 1, "cpu": 8, "resources": {"cpus": "eight"}}"#).await,
            400,
            "not a valid SubmitJob",
        ),
        (
            "an owner in the body",
            s.signed("POST", "/v1/jobs", "ci", SECRET, &now, br#"{"version": 1, "owner": "someone-else", "workspace": {"sha256": "ab", "bytes": 1}, "entrypoint": "x.py"}"#).await,
            400,
            "owner is the signing key",
        ),
    ];
    for (what, (status, body), want, reason) in &cases {
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.to_string().contains(reason), "{what}: {body}");
    }
    let answer = |what: &str| &cases.iter().find(|c| c.0 == what).unwrap().1;
    // An unknown key answers as a wrong signature does: no name can be probed.
    assert_eq!(answer("unknown key"), answer("wrong secret"));
    assert_eq!(answer("unknown key, v1"), answer("wrong secret, v1"));
    // The schema violation names every field at fault, with its path.
    let reasons = answer("schema violation").1["reasons"].to_string();
    for part in ["cpu", "/resources/cpus", "workspace", "entrypoint"] {
        assert!(reasons.contains(part), "{part} not in {reasons}");
    }
    assert!(
        s.drain().await.is_empty(),
        "a refused request enqueued something"
    );

    // A valid request: 202, the id, one SubmitJob on the queue, owned by the key.
    let (status, accepted) = s
        .signed("POST", "/v1/jobs", "ci", SECRET, &now, &body)
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status_url"], format!("/v1/jobs/{id}"));
    let sent = s.drain().await;
    assert_eq!(sent.len(), 1);
    let spec = studio_core::contract::SubmitJob::from_json(&sent[0]).unwrap();
    assert_eq!(
        (
            spec.owner.as_str(),
            spec.job_id.as_ref().map(|j| j.to_string())
        ),
        ("ci", Some(id.clone()))
    );
    studio_core::handlers::submit(&s.ctx, "m1", &sent[0])
        .await
        .unwrap();

    // The same request again a minute later, signed anew with the first
    // version (sha256=, still taken on POST /v1/jobs): the same job.
    s.clock.advance(std::time::Duration::from_secs(60));
    let later = s.now();
    let (status, again) = s
        .send(
            "POST",
            "/v1/jobs",
            &headers("ci", &later, sign(SECRET.as_bytes(), &later, &body)),
            &body,
        )
        .await;
    assert_eq!((status, again["job_id"].as_str()), (202, Some(id.as_str())));
    for m in s.drain().await {
        studio_core::handlers::submit(&s.ctx, "m2", &m)
            .await
            .unwrap();
    }
    let jid = studio_core::ids::JobId::new(id.clone()).unwrap();
    let job = s.ctx.store.get_job(&jid).await.unwrap().unwrap();
    assert_eq!(
        job.events
            .iter()
            .filter(|e| e.to.to_string() == "queued")
            .count(),
        1,
        "one job"
    );
}

/// Reads: a key reads the jobs of its owner and no other, and another
/// owner's job answers exactly as one that does not exist; a read's
/// signature is good for its own path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reads_only_its_own_jobs_with_a_signature_for_that_path() {
    let s = server().await;
    for (n, id) in ["job-a", "job-b"].iter().enumerate() {
        let mut spec: serde_json::Value = serde_json::from_slice(&job_body()).unwrap();
        spec["job_id"] = (*id).into();
        let body = spec.to_string().into_bytes();
        let (status, accepted) = s
            .signed("POST", "/v1/jobs", "ci", SECRET, &s.now(), &body)
            .await;
        assert_eq!(status, 202, "{accepted}");
        for m in s.drain().await {
            studio_core::handlers::submit(&s.ctx, &format!("m{n}"), &m)
                .await
                .unwrap();
        }
    }
    let now = s.now();
    let get = |key: &'static str, secret: &'static str, path: &'static str| {
        let now = now.clone();
        let s = &s;
        async move { s.signed("GET", path, key, secret, &now, b"").await }
    };

    // Its owner reads each, a query (signed with it) taken and ignored.
    for path in [
        "/v1/jobs/job-a",
        "/v1/jobs/job-b",
        "/v1/jobs/job-a?verbose=1",
    ] {
        let (status, state) = get("ci", SECRET, path).await;
        assert_eq!(
            (status, state["state"].as_str()),
            (200, Some("queued")),
            "{path}: {state}"
        );
    }
    // The signature of a read of job-a, sent for job-b: refused, though
    // the key may read job-b (a v1 signature would have fitted any path).
    let sig_a = sign_v2(SECRET.as_bytes(), "ci", "GET", "/v1/jobs/job-a", &now, b"");
    let (status, why) = s
        .send("GET", "/v1/jobs/job-b", &headers("ci", &now, sig_a), b"")
        .await;
    assert_eq!(status, 401, "{why}");
    assert!(
        why["error"].as_str().unwrap().contains("does not match"),
        "{why}"
    );
    let (status, _) = s.send("GET", "/v1/jobs/job-a", &[], b"").await;
    assert_eq!(status, 401, "unsigned");

    // Another key: ci's job answers as no job, to the byte; so does it to
    // "default", which has ci's secret but is another owner.
    let none = get("lab", LAB_SECRET, "/v1/jobs/no-such-job").await;
    assert_eq!(none.0, 404, "{}", none.1);
    assert_eq!(get("lab", LAB_SECRET, "/v1/jobs/job-a").await, none);
    assert_eq!(get("default", SECRET, "/v1/jobs/job-b").await, none);
    assert_eq!(get("ci", SECRET, "/v1/jobs/no-such-job").await, none);
}

use studio_tests::pubsub_push::{claims, envelope, signed, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_preemption_push_requeues_the_job_once_and_bad_tokens_are_refused() {
    use studio_core::handlers::{claim_work, Claim};
    let s = server().await;
    // A job running on a machine.
    let mut spec = studio_tests::JobBuilder::new("preempted-1").spec();
    spec.cloud = studio_core::resources::Cloud::Ec2;
    studio_core::handlers::submit(&s.ctx, "m-p", &spec.to_json())
        .await
        .unwrap();
    let id = studio_core::ids::JobId::new("preempted-1").unwrap();
    let pool = s.ctx.store.get_job(&id).await.unwrap().unwrap().pool;
    let gk = s
        .ctx
        .store
        .get_pool(&pool)
        .await
        .unwrap()
        .unwrap()
        .group_key();
    let instance = s.ctx.fleet.instances(&gk).await.unwrap().remove(0).id;
    let item = s
        .ctx
        .queue
        .receive(
            &s.ctx.settings.work_queue(&gk),
            1,
            std::time::Duration::from_secs(30),
            std::time::Duration::ZERO,
        )
        .await
        .unwrap()
        .remove(0);
    assert!(matches!(
        claim_work(&s.ctx, &instance, &item).await.unwrap(),
        Claim::Run(_)
    ));

    let body = envelope("msg-1", instance.as_str());
    // Refused: another audience, another issuer, expired, tampered; and
    // tokens Google would sign for anyone who asks, for this audience, but
    // not from the push subscription's account.
    let google = "https://accounts.google.com";
    let good = token(AUDIENCE, google, 600);
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let forged = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut c = claims(AUDIENCE, google, 600);
        f(c.as_object_mut().unwrap());
        signed(&c)
    };
    for (what, t, reason) in [
        (
            "another audience",
            token("https://elsewhere.example/", google, 600),
            "not valid for this endpoint",
        ),
        (
            "another issuer",
            token(AUDIENCE, "https://evil.example", 600),
            "not valid for this endpoint",
        ),
        (
            "expired",
            token(AUDIENCE, google, -600),
            "not valid for this endpoint",
        ),
        ("tampered", tampered, "not valid for this endpoint"),
        (
            "another sender",
            forged(&|c| {
                c.insert(
                    "email".into(),
                    "attacker@evil-project.iam.gserviceaccount.com".into(),
                );
            }),
            "not the push subscription's service account",
        ),
        (
            "no sender",
            forged(&|c| drop(c.remove("email"))),
            "names no sender",
        ),
        (
            "email not verified",
            forged(&|c| drop(c.insert("email_verified".into(), false.into()))),
            "not verified",
        ),
        (
            "email_verified missing",
            forged(&|c| drop(c.remove("email_verified"))),
            "not verified",
        ),
        (
            "email_verified a string",
            forged(&|c| drop(c.insert("email_verified".into(), "true".into()))),
            "not verified",
        ),
        (
            "another subject",
            forged(&|c| drop(c.insert("sub".into(), "999".into()))),
            "subject (sub)",
        ),
    ] {
        let (status, why) = s.push(t, body.clone()).await;
        assert_eq!(status, 401, "{what}: {why}");
        assert!(
            why["error"].as_str().unwrap().contains(reason),
            "{what}: {why}"
        );
    }
    // A deployment that names no push service account refuses even the
    // genuine token (fail closed), saying so.
    let unconfigured = PushAuth {
        audience: AUDIENCE.into(),
        jwks: studio_aws::webhook::GoogleKeys::fixed(
            serde_json::from_str(studio_tests::pubsub_push::JWKS).unwrap(),
        ),
        email: String::new(),
        subject: None,
        project: None,
    };
    let schema = studio_aws::webhook::schema();
    let hook = Webhook {
        keys: &s.keys,
        ctx: &s.ctx,
        push: Some(&unconfigured),
        submit_queue: &s.submit_queue,
        schema: &schema,
    };
    let resp = hook
        .handle(&Request {
            method: "POST".into(),
            path: "/v1/pubsub/preemption".into(),
            headers: [("authorization".to_string(), format!("Bearer {good}"))].into(),
            body: body.clone(),
        })
        .await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert!(
        resp.body.to_string().contains("STUDIO_PUBSUB_PUSH_EMAIL"),
        "{}",
        resp.body
    );
    let (status, _) = s.send("POST", "/v1/pubsub/preemption", &[], &body).await;
    assert_eq!(status, 401);
    let job = s.ctx.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.to_string().as_str(), job.attempt),
        ("running", 1),
        "refusals changed nothing"
    );

    // A genuine token on an entry that is not Compute's own, of this
    // project, naming the VM's id (anyone who may publish to the sink's
    // topic gets a genuine token for what they publish): refused.
    use studio_tests::pubsub_push::with_entry;
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 3] = [
        (
            "another project",
            Box::new(|e| e["resource"]["labels"]["project_id"] = "evil".into()),
            "not this deployment's",
        ),
        (
            "a user's log",
            Box::new(|e| e["logName"] = "projects/P/logs/forged".into()),
            "system-event audit entry",
        ),
        (
            "no VM id",
            Box::new(|e| {
                e["resource"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("instance_id");
            }),
            "names no VM id",
        ),
    ];
    for (what, f, reason) in cases {
        let (status, why) = s.push(good.clone(), with_entry(&body, f)).await;
        assert_eq!(status, 400, "{what}: {why}");
        assert!(
            why["error"].as_str().unwrap().contains(reason),
            "{what}: {why}"
        );
    }

    // A genuine push: the job runs again elsewhere; the same message again
    // changes nothing.
    let (status, outcome) = s.push(good.clone(), body.clone()).await;
    assert_eq!(status, 200, "{outcome}");
    let (status, _) = s.push(good, body).await;
    assert_eq!(status, 200);
    let job = s.ctx.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.to_string().as_str(), job.attempt),
        ("queued", 2),
        "{:?}",
        job.events
    );
    let requeues = job
        .events
        .iter()
        .filter(|e| e.to.to_string() == "interrupted")
        .count();
    assert_eq!(requeues, 1, "one requeue");
}

/// The curl examples of `docs/submit-contract.md`, run as written (bash,
/// openssl, curl) against this webhook: the POST, with a `job.json` that
/// ends in a newline as editors write it (202 and one SubmitJob on the
/// queue), then the status GET of the job it made (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_examples_of_the_contract_page_are_accepted() {
    let s = server().await;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/submit-contract.md"),
    )
    .unwrap();
    let scripts: Vec<&str> = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| b.contains("curl"))
        .collect();
    assert_eq!(scripts.len(), 2, "the POST and the GET examples");
    let dir = tempfile::tempdir().unwrap();
    let mut job = String::from_utf8(job_body()).unwrap();
    job.push('\n');
    std::fs::write(dir.path().join("job.json"), job).unwrap();
    // The webhook's clock is the test's manual clock, started at the wall clock.
    let run = |script: &str, job_id: &str| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .env("STUDIO_WEBHOOK_URL", format!("{}/", s.url))
            .env("STUDIO_WEBHOOK_SECRET", SECRET)
            .env("JOB_ID", job_id)
            .output()
            .expect("bash, openssl and curl (the example's tools)");
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{answer}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()
    };
    let accepted = run(scripts[0], "");
    let id = accepted["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{accepted}"));
    let sent = s.drain().await;
    assert_eq!(sent.len(), 1);
    studio_core::handlers::submit(&s.ctx, "m-curl", &sent[0])
        .await
        .unwrap();
    let state = run(scripts[1], id);
    assert_eq!(
        (state["job_id"].as_str(), state["state"].as_str()),
        (Some(id), Some("queued")),
        "{state}"
    );
}

/// Google's certificates URL, served on loopback: the JWKS the test sets
/// (`Cache-Control: max-age=3600`, as Google sends), or 503; it counts GETs.
struct Certs {
    url: String,
    body: Arc<std::sync::Mutex<Option<&'static str>>>,
    gets: Arc<std::sync::atomic::AtomicUsize>,
}

async fn certs(first: &'static str) -> Certs {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/v3/certs", listener.local_addr().unwrap());
    let body = Arc::new(std::sync::Mutex::new(Some(first)));
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (b, g) = (body.clone(), gets.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            g.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let resp = match *b.lock().unwrap() {
                Some(jwks) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600, must-revalidate, no-transform\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            };
            let _ = stream.write_all(resp.as_bytes()).await;
        }
    });
    Certs { url, body, gets }
}

/// Google rotates its signing keys: a push token signed by a key the
/// webhook's cache does not hold yet fetches the keys again (not only at
/// cold start, as a copied JWKS was), and is accepted; keys are otherwise
/// kept for their max-age; an unknown key in a forged token fetches at
/// most once per bound; Google's endpoint down keeps the keys there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn googles_keys_are_cached_and_fetched_again_when_google_rotates_them() {
    use std::sync::atomic::Ordering::SeqCst;
    use studio_aws::webhook::GoogleKeys;
    use studio_tests::pubsub_push::{claims, envelope, signed_by_the_new_key, JWKS, JWKS_ROTATED};
    let google = certs(JWKS).await;
    let s = server().await;
    let auth = PushAuth {
        audience: AUDIENCE.into(),
        jwks: GoogleKeys::fetched(&google.url, std::time::Duration::ZERO),
        email: studio_tests::pubsub_push::PUSH_EMAIL.into(),
        subject: Some(studio_tests::pubsub_push::PUSH_SUBJECT.into()),
        project: Some("P".into()),
    };
    let schema = studio_aws::webhook::schema();
    let hook = Webhook {
        keys: &s.keys,
        ctx: &s.ctx,
        push: Some(&auth),
        submit_queue: &s.submit_queue,
        schema: &schema,
    };
    let push = async |token: String| {
        hook.handle(&Request {
            method: "POST".into(),
            path: "/v1/pubsub/preemption".into(),
            headers: [("authorization".to_string(), format!("Bearer {token}"))].into(),
            body: envelope("rotation-1", "i-nothing-runs-here"),
        })
        .await
    };
    let old = studio_tests::pubsub_push::token(AUDIENCE, "https://accounts.google.com", 600);
    let new = signed_by_the_new_key(&claims(AUDIENCE, "https://accounts.google.com", 600));

    // Fetched on first need, then kept.
    for _ in 0..3 {
        let r = push(old.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(google.gets.load(SeqCst), 1, "kept for its max-age");
    // A key Google has not published: fetched again, still unknown, refused.
    let r = push(new.clone()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body
            .to_string()
            .contains("not among Google's signing keys"),
        "{}",
        r.body
    );
    assert_eq!(google.gets.load(SeqCst), 2);
    // Google rotates it in: the next token signed by it is accepted.
    *google.body.lock().unwrap() = Some(JWKS_ROTATED);
    let r = push(new.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(google.gets.load(SeqCst), 3);

    // Unknown keys fetch at most once per bound, and Google down keeps the
    // keys there are.
    let bounded = GoogleKeys::fetched(&google.url, std::time::Duration::from_secs(3600));
    bounded.find("studio-test-1").await.unwrap();
    let before = google.gets.load(SeqCst);
    for _ in 0..5 {
        let e = bounded.find("forged-kid").await.unwrap_err();
        assert!(e.contains("not among"), "{e}");
    }
    assert_eq!(
        google.gets.load(SeqCst),
        before,
        "no fetch per forged token"
    );
    *google.body.lock().unwrap() = None;
    let down = GoogleKeys::fetched(&google.url, std::time::Duration::ZERO);
    let e = down.find("studio-test-1").await.unwrap_err();
    assert!(
        e.contains("could not be fetched") && e.contains("503"),
        "{e}"
    );
    // A failing endpoint is not asked per request either.
    let down_bounded = GoogleKeys::fetched(&google.url, std::time::Duration::from_secs(3600));
    let before = google.gets.load(SeqCst);
    for _ in 0..3 {
        assert!(down_bounded.find("studio-test-1").await.is_err());
    }
    assert_eq!(google.gets.load(SeqCst), before + 1, "one try per bound");
    bounded.find("studio-test-2").await.unwrap();
}
