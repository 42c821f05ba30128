//! The webhook through real HTTP: a server on loopback hands each request to
//! `studio_aws::webhook` with the AWS adapters on `moto_server`, and a client
//! sends what a CI system would. Every refusal is checked on the queue:
//! nothing was enqueued.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use studio_aws::webhook::{sign, Keys, PushAuth, Request, Webhook, MAX_BODY};
use studio_core::clock::{Clock, ManualClock, SystemClock};
use studio_core::handlers::Ctx;

const SECRET: &str = "s3cret-for-the-ci-key";
/// The push subscription's audience: the endpoint's URL.
const AUDIENCE: &str = "https://hooks.example/v1/pubsub/preemption";

struct Server {
    url: String,
    ctx: Ctx,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    clock: ManualClock,
}

async fn server() -> Server {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let clock = ManualClock::new(SystemClock.now());
    let ctx = studio_aws::lambda::context(&cfg, &sdk, Arc::new(clock.clone()));
    let keys = Arc::new(
        Keys::from_json(&format!(
            r#"{{"ci": "{SECRET}", "lab": "another-secret-of-the-lab", "default": "{SECRET}"}}"#
        ))
        .unwrap(),
    );
    let schema = Arc::new(studio_aws::webhook::schema());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let push = Arc::new(PushAuth {
        audience: AUDIENCE.into(),
        jwks: serde_json::from_str(include_str!("../fixtures/oidc/jwks.json")).unwrap(),
    });
    let (sctx, spush, queue) = (ctx.clone(), push.clone(), cfg.submit_queue.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (ctx, push, keys, schema, queue) = (
                sctx.clone(),
                spush.clone(),
                keys.clone(),
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
                                path: parts.uri.path().to_string(),
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

    /// A request signed with `key`'s `secret` at `ts`.
    async fn signed(
        &self,
        method: &str,
        path: &str,
        key: &str,
        secret: &str,
        ts: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let headers = [
            ("x-studio-key", key.to_string()),
            ("x-studio-timestamp", ts.to_string()),
            ("x-studio-signature", sign(secret.as_bytes(), ts, body)),
        ];
        self.send(method, path, &headers, body).await
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

fn job_body() -> Vec<u8> {
    br#"{"version": 1, "cloud": "ec2", "workspace": {"sha256": "0c1e3b5d7f9a1c3e5b7d9f1a9f2a5c0e4b7d1a3f6e8c0b2d4f6a8c0e1b3d5f7a", "bytes": 512}, "entrypoint": "hello.py", "args": ["--from", "ci"]}"#.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_makes_one_job_and_every_bad_one_is_refused_with_the_reason() {
    let s = server().await;
    let body = job_body();
    let now = s.now();
    let old = (s.clock.now().0 / 1000 - 301).to_string();
    let future = (s.clock.now().0 / 1000 + 301).to_string();

    // Each refusal: the status, a reason, nothing on the queue.
    let mut altered = body.clone();
    altered.extend_from_slice(b" ");
    let cases: Vec<(&str, (u16, serde_json::Value), &str)> = vec![
        ("wrong secret", s.signed("POST", "/v1/jobs", "ci", "not-the-secret-at-all", &now, &body).await, "does not match"),
        ("unknown key", s.signed("POST", "/v1/jobs", "intruder", SECRET, &now, &body).await, "unknown key"),
        ("stale timestamp", s.signed("POST", "/v1/jobs", "ci", SECRET, &old, &body).await, "s old"),
        ("future timestamp", s.signed("POST", "/v1/jobs", "ci", SECRET, &future, &body).await, "in the future"),
        (
            "missing signature",
            s.send("POST", "/v1/jobs", &[("x-studio-key", "ci".into()), ("x-studio-timestamp", now.clone())], &body).await,
            "missing header x-studio-signature",
        ),
        (
            "body altered after signing",
            s.send(
                "POST",
                "/v1/jobs",
                &[
                    ("x-studio-key", "ci".into()),
                    ("x-studio-timestamp", now.clone()),
                    ("x-studio-signature", sign(SECRET.as_bytes(), &now, &body)),
                ],
                &altered,
            )
            .await,
            "does not match",
        ),
        (
            "signature of another body",
            s.send(
                "POST",
                "/v1/jobs",
                &[
                    ("x-studio-key", "ci".into()),
                    ("x-studio-timestamp", now.clone()),
                    ("x-studio-signature", sign(SECRET.as_bytes(), &now, b"{}")),
                ],
                &body,
            )
            .await,
            "does not match",
        ),
        ("oversized body", s.signed("POST", "/v1/jobs", "ci", SECRET, &now, &vec![b' '; MAX_BODY + 1]).await, "at most"),
        ("invalid JSON", s.signed("POST", "/v1/jobs", "ci", SECRET, &now, b"{not json").await, "not JSON"),
        (
            "schema violation",
            s.signed("POST", "/v1/jobs", "ci", SECRET, &now, br#"{"version": 1, "cpu": 8, "resources": {"cpus": "eight"}}"#).await,
            "not a valid SubmitJob",
        ),
        (
            "an owner in the body",
            s.signed("POST", "/v1/jobs", "ci", SECRET, &now, br#"{"version": 1, "owner": "someone-else", "workspace": {"sha256": "ab", "bytes": 1}, "entrypoint": "x.py"}"#).await,
            "owner is the signing key",
        ),
    ];
    let want = [401, 401, 401, 401, 401, 401, 401, 413, 400, 400, 400];
    for ((what, (status, body), reason), want) in cases.iter().zip(want) {
        assert_eq!(*status, want, "{what}: {body}");
        assert!(body.to_string().contains(reason), "{what}: {body}");
    }
    // The schema violation names every field at fault, with its path.
    let reasons = cases[9].1 .1["reasons"].to_string();
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

    // The same request again, signed anew a minute later: the same job.
    s.clock.advance(std::time::Duration::from_secs(60));
    let (status, again) = s
        .signed("POST", "/v1/jobs", "ci", SECRET, &s.now(), &body)
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

    // Its status, signed over an empty body; a key of another name sees it
    // too (GET is read-only), an unsigned GET does not.
    let (status, state) = s
        .signed(
            "GET",
            &format!("/v1/jobs/{id}"),
            "lab",
            "another-secret-of-the-lab",
            &s.now(),
            b"",
        )
        .await;
    assert_eq!(
        (status, state["state"].as_str()),
        (200, Some("queued")),
        "{state}"
    );
    let (status, _) = s.send("GET", &format!("/v1/jobs/{id}"), &[], b"").await;
    assert_eq!(status, 401);
    let (status, missing) = s
        .signed("GET", "/v1/jobs/no-such-job", "ci", SECRET, &s.now(), b"")
        .await;
    assert_eq!(status, 404, "{missing}");
}

use studio_tests::pubsub_push::{envelope, token};

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
    // Refused: another audience, another issuer, expired, no token, tampered.
    let good = token(AUDIENCE, "https://accounts.google.com", 600);
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    for (what, t) in [
        (
            "another audience",
            token(
                "https://elsewhere.example/",
                "https://accounts.google.com",
                600,
            ),
        ),
        (
            "another issuer",
            token(AUDIENCE, "https://evil.example", 600),
        ),
        (
            "expired",
            token(AUDIENCE, "https://accounts.google.com", -600),
        ),
        ("tampered", tampered),
    ] {
        let (status, why) = s.push(t, body.clone()).await;
        assert_eq!(status, 401, "{what}: {why}");
    }
    let (status, _) = s.send("POST", "/v1/pubsub/preemption", &[], &body).await;
    assert_eq!(status, 401);
    let job = s.ctx.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.to_string().as_str(), job.attempt),
        ("running", 1),
        "refusals changed nothing"
    );

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

/// The curl example of `docs/submit-contract.md`, run as written (bash,
/// openssl, curl) against this webhook, with a `job.json` that ends in a
/// newline as editors write it: 202 and one SubmitJob on the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_example_of_the_contract_page_is_accepted() {
    let s = server().await;
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/submit-contract.md"),
    )
    .unwrap();
    let script = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("curl"))
        .expect("the curl example");
    let dir = tempfile::tempdir().unwrap();
    let mut job = String::from_utf8(job_body()).unwrap();
    job.push('\n');
    std::fs::write(dir.path().join("job.json"), job).unwrap();
    // The webhook's clock is the test's manual clock, started at the wall clock.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .env("STUDIO_WEBHOOK_URL", format!("{}/", s.url))
        .env("STUDIO_WEBHOOK_SECRET", SECRET)
        .output()
        .expect("bash, openssl and curl (the example's tools)");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(body["job_id"].is_string(), "{body}");
    assert_eq!(s.drain().await.len(), 1);
}
