//! `studio gcp setup` against stand-ins, run as a user runs it: a stack of
//! `infra/template.yaml` deployed into moto (with a worker binary and uv in
//! its bucket, as `scripts/deploy` leaves them), an empty Google project in
//! `tests/standins/gcp_admin.py` (Service Usage, Resource Manager, IAM,
//! workload identity pools, Logging; Pub/Sub and Cloud Storage forwarded
//! to Google's Pub/Sub emulator and fake-gcs-server), every call recorded.
//!
//! A dry run changes nothing; the first run makes every resource and gives
//! the stack its parameters, through the stand-in's strictness (APIs
//! disabled until enabled and then still propagating, long-running
//! operations, new service accounts invisible to the first policy write,
//! etags); the second run makes no change at all.

use sha2::Digest as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use studio_tests::gcp::{gcs_endpoint, have_pubsub, http_json, pubsub_endpoint, AdminStandIn};
use studio_tests::moto_endpoint;

const STUDIO: &str = env!("CARGO_BIN_EXE_studio");
const PROJECT: &str = "studio-setup-test";
const NUMBER: &str = "734218905123";
const WEBHOOK: &str = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws/";

fn studio(home: &Path, admin: &str, args: &[&str]) -> Output {
    Command::new(STUDIO)
        .args(args)
        .env("STUDIO_HOME", home)
        .env("AWS_REGION", "us-east-1")
        .env("STUDIO_GCP_API_ENDPOINT", admin)
        .env("STUDIO_GCP_ANONYMOUS", "1")
        .env_remove("STUDIO_GCP_BUCKET")
        .env_remove("STUDIO_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{:?}\n{o}\n{e}", out.status);
    o.into_owned()
}

/// A call that changes something (not a GET, not a policy read).
fn mutation(c: &serde_json::Value) -> bool {
    let path = c["path"].as_str().unwrap_or_default();
    c["method"] != "GET" && !path.ends_with(":getIamPolicy")
}

/// The stack's parameters, as `studio gcp setup` reads them.
async fn parameters(moto: &aws_config::SdkConfig, stack: &str) -> serde_json::Value {
    let s = studio_aws::stack::Stack::describe(moto, stack)
        .await
        .unwrap();
    serde_json::to_value(s.parameters).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_makes_an_empty_project_ready_and_a_second_run_changes_nothing() {
    if !have_pubsub("setup_makes_an_empty_project_ready") {
        return;
    }
    // GIVEN a deployed stack whose bucket holds its x86_64 worker and uv.
    let moto = studio_aws::emulator_config("us-east-1", &moto_endpoint());
    let stack = studio_tests::stack::new_name('g');
    let (worker, uv) = (
        format!("studio worker of {stack}").into_bytes(),
        b"uv of the deployment".to_vec(),
    );
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let (worker_sha, uv_sha) = (sha(&worker), sha(&uv));
    let (_, outputs) = studio_tests::stack::create(
        &moto,
        &stack,
        &[("BinarySha256X86", &worker_sha), ("UvSha256X86", &uv_sha)],
    )
    .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto)
            .force_path_style(true)
            .build(),
    );
    for (kind, sum, bytes) in [("studio", &worker_sha, &worker), ("uv", &uv_sha, &uv)] {
        s3.put_object()
            .bucket(&outputs["ArtifactBucket"])
            .key(format!("releases/{kind}-{sum}"))
            .body(bytes.clone().into())
            .send()
            .await
            .unwrap();
    }
    let cfn = aws_sdk_cloudformation::Client::new(&moto);
    let home = tempfile::tempdir().unwrap();
    let google = AdminStandIn::start(PROJECT, NUMBER);
    ok(&studio(
        home.path(),
        &google.url,
        &["init", "--stack", &stack],
    ));
    let setup = [
        "gcp",
        "setup",
        "--project",
        PROJECT,
        "--region",
        "us-central1",
        "--webhook-url",
        WEBHOOK,
    ];

    // A dry run lists the changes and makes none.
    let dry: Vec<&str> = setup.iter().copied().chain(["--dry-run"]).collect();
    let said = ok(&studio(home.path(), &google.url, &dry));
    for expected in [
        "would: enable cloudresourcemanager.googleapis.com, compute.googleapis.com",
        &format!("would: create service account {stack}-worker@{PROJECT}.iam.gserviceaccount.com"),
        &format!("would: create workload identity pool {stack}-aws"),
        &format!("would: upload gs://{stack}-{PROJECT}/releases/studio-{worker_sha}"),
        "would: make Pub/Sub's service agent",
        &format!("would: grant on topic {stack}-preemptions:\n        roles/pubsub.publisher to (the new sink's writer identity)"),
        "would: set stack",
        "none made",
    ] {
        assert!(said.contains(expected), "no '{expected}' in:\n{said}");
    }
    let calls = google.calls().await;
    assert!(
        calls.iter().all(|c| !mutation(c)),
        "a dry run changed something: {:?}",
        calls.iter().filter(|c| mutation(c)).collect::<Vec<_>>()
    );
    assert_eq!(parameters(&moto, &stack).await["GcpProject"], "");

    // WHEN it runs.
    let said = ok(&studio(home.path(), &google.url, &setup));
    assert!(said.contains("changes made"), "{said}");
    eprintln!("FIRST RUN\n{said}");

    // It waited out IAM's lag: a policy write naming a new account was
    // refused once ("does not exist") and made again.
    let first = google.calls().await;
    let writes: Vec<&str> = first
        .iter()
        .filter_map(|c| c["path"].as_str().filter(|p| p.ends_with(":setIamPolicy")))
        .collect();
    assert!(
        writes
            .iter()
            .any(|w| writes.iter().filter(|x| *x == w).count() > 1),
        "no policy write was retried: {writes:?}"
    );

    // THEN the project holds what the pools need.
    let state = google.state().await;
    let enabled: Vec<&str> = state["enabled"][PROJECT]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for s in studio_gcp::setup::SERVICES {
        assert!(enabled.contains(s), "{s} not enabled: {enabled:?}");
    }
    let email = |role: &str| format!("{stack}-{role}@{PROJECT}.iam.gserviceaccount.com");
    for role in ["worker", "control", "pusher"] {
        assert!(
            state["accounts"][email(role)].is_object(),
            "no {role} account"
        );
    }
    let bindings = |key: &str| {
        state["policies"][key]["bindings"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let members_of = |key: &str, role: &str| -> Vec<String> {
        bindings(key)
            .iter()
            .filter(|b| b["role"] == role)
            .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    let project = format!("project/{PROJECT}");
    let conditional = bindings(&project)
        .into_iter()
        .find(|b| b["role"] == "roles/compute.instanceAdmin.v1" && b["condition"].is_object())
        .expect("the workers' Compute grant has a condition");
    assert_eq!(
        conditional["members"],
        serde_json::json!([format!("serviceAccount:{}", email("worker"))])
    );
    assert!(conditional["condition"]["expression"]
        .as_str()
        .unwrap()
        .contains(&format!("startsWith(\"{stack}-\")")));
    assert!(
        members_of(&project, "roles/pubsub.subscriber").contains(&format!(
            "serviceAccount:service-{NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
        ))
    );
    assert!(members_of(
        &format!("bucket/{stack}-{PROJECT}"),
        "roles/storage.objectAdmin"
    )
    .contains(&format!("serviceAccount:{}", email("worker"))));

    // The provider admits the stack's five function roles, of its account.
    let resources = cfn
        .describe_stack_resources()
        .stack_name(&stack)
        .send()
        .await
        .unwrap();
    let roles: Vec<String> = resources
        .stack_resources()
        .iter()
        .filter(|r| {
            [
                "SubmitRole",
                "WebhookRole",
                "ScaleRole",
                "InterruptionRole",
                "CleanupRole",
            ]
            .contains(&r.logical_resource_id().unwrap())
        })
        .map(|r| r.physical_resource_id().unwrap().to_string())
        .collect();
    assert_eq!(roles.len(), 5);
    let provider = &state["providers"][format!("{PROJECT}/{stack}-aws/aws-123456789012")];
    assert_eq!(provider["aws"]["accountId"], "123456789012");
    let condition = provider["attributeCondition"].as_str().unwrap();
    // The subject is the role, as short as the role's ARN (Google: at most
    // 127 bytes; a Lambda session's ARN with the function's name is longer).
    assert_eq!(
        provider["attributeMapping"]["google.subject"],
        provider["attributeMapping"]["attribute.aws_role"]
    );
    let users = members_of(
        &format!("sa/{}", email("control")),
        "roles/iam.workloadIdentityUser",
    );
    assert_eq!(users.len(), 5, "{users:?}");
    for r in &roles {
        let arn = format!("arn:aws:sts::123456789012:assumed-role/{r}");
        assert!(
            condition.contains(&format!("'{arn}'")),
            "{r} not in {condition}"
        );
        assert!(
            users
                .iter()
                .any(|u| u.ends_with(&format!("/attribute.aws_role/{arn}"))),
            "{r}"
        );
    }

    // The preemption path: sink → topic (its writer may publish) → push.
    let sink = &state["sinks"][format!("{PROJECT}/{stack}-preemptions")];
    assert_eq!(sink["filter"], studio_gcp::setup::PREEMPTION_FILTER);
    let topic_key = format!("topic/{PROJECT}/{stack}-preemptions");
    assert!(members_of(&topic_key, "roles/pubsub.publisher")
        .contains(&sink["writerIdentity"].as_str().unwrap().to_string()));
    let sub = http_json(
        "GET",
        &format!(
            "{}/v1/projects/{PROJECT}/subscriptions/{stack}-preemptions-push",
            pubsub_endpoint()
        ),
        None,
    )
    .await;
    let audience = format!("{WEBHOOK}v1/pubsub/preemption");
    assert_eq!(
        sub["pushConfig"]["pushEndpoint"],
        audience.as_str(),
        "{sub}"
    );
    assert_eq!(
        sub["pushConfig"]["oidcToken"]["serviceAccountEmail"],
        email("pusher")
    );
    assert_eq!(sub["ackDeadlineSeconds"], 60);

    // The bucket: its lifecycle, and the deployment's binaries as they were.
    let bucket = format!("{stack}-{PROJECT}");
    let b = http_json(
        "GET",
        &format!("{}/storage/v1/b/{bucket}", google.url),
        None,
    )
    .await;
    assert_eq!(b["lifecycle"]["rule"][0]["condition"]["age"], 30, "{b}");
    for (kind, sum, bytes) in [("studio", &worker_sha, &worker), ("uv", &uv_sha, &uv)] {
        let url = format!(
            "{}/storage/v1/b/{bucket}/o/releases%2F{kind}-{sum}?alt=media",
            gcs_endpoint()
        );
        let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], &bytes[..], "{kind}");
    }

    // The stack's parameters: the federation config the functions accept.
    let p = parameters(&moto, &stack).await;
    assert_eq!(p["GcpProject"], PROJECT);
    assert_eq!(
        p["GcpZone"],
        "us-central1-a,us-central1-b,us-central1-c,us-central1-f"
    );
    assert_eq!(p["GcpWorkerServiceAccount"], email("worker"));
    assert_eq!(
        p["GcpWorkerServiceAccountId"],
        state["accounts"][email("worker")]["uniqueId"]
    );
    assert_eq!(p["GcpPushAudience"], audience.as_str());
    let config =
        studio_gcp::config::lambda_credential_config(p["GcpCredentialConfig"].as_str().unwrap())
            .expect("the functions accept the config");
    assert_eq!(
        config["audience"],
        format!("//iam.googleapis.com/projects/{NUMBER}/locations/global/workloadIdentityPools/{stack}-aws/providers/aws-123456789012")
    );
    let toml = std::fs::read_to_string(home.path().join("config.toml")).unwrap();
    assert!(toml.contains(&format!("bucket = \"{bucket}\"")), "{toml}");

    // `studio doctor` finds the project as the set-up left it.
    let report = ok(&studio(home.path(), &google.url, &["doctor"]));
    for line in [
        "ok    gcp setup",
        "ok    gcp image        projects/debian-cloud/global/images/family/debian-12: debian-12",
        "warn  gcp quota        CPUS in us-central1: 0 of 24 used; no GPU quota",
    ] {
        assert!(report.contains(line), "no '{line}' in:\n{report}");
    }

    // AND a second run changes nothing, in Google or in the stack, though
    // it is run as after a deploy, without the flags the stack now holds.
    let rerun = &setup[..6];
    let before = google.calls().await.len();
    let said = ok(&studio(home.path(), &google.url, rerun));
    assert!(said.contains("no change"), "{said}");
    eprintln!("SECOND RUN\n{said}");
    let again: Vec<serde_json::Value> = google.calls().await.split_off(before);
    assert!(!again.is_empty());
    assert!(
        again.iter().all(|c| !mutation(c)),
        "the second run changed: {:?}",
        again.iter().filter(|c| mutation(c)).collect::<Vec<_>>()
    );
    assert_eq!(parameters(&moto, &stack).await, p);

    // A piece gone (the push subscription deleted by hand): doctor names
    // it and fails; the set-up makes it again, and only it.
    let sub_url = format!(
        "{}/v1/projects/{PROJECT}/subscriptions/{stack}-preemptions-push",
        pubsub_endpoint()
    );
    http_json("DELETE", &sub_url, None).await;
    let report = studio(home.path(), &google.url, &["doctor"]);
    let said = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAIL  gcp setup        1 missing: create push subscription"),
        "{said}"
    );
    assert!(said.contains(&format!("--webhook-url {WEBHOOK}")), "{said}");
    let said = ok(&studio(home.path(), &google.url, rerun));
    assert!(said.contains("did: create push subscription"), "{said}");
    assert!(said.contains("1 changes made"), "{said}");
    cfn.delete_stack().stack_name(&stack).send().await.unwrap();
}
