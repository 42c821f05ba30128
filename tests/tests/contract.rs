//! The published SubmitJob contract (`docs/submit-contract.md`): its JSON
//! Schema is the code's, and every example on the page fits the schema, is
//! read by the parser, and makes a job through the submit handler against
//! `moto_server`; the boto3 example runs as written.

use studio_core::contract::SubmitJob;
use studio_core::handlers::{self, SubmitOutcome};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fenced blocks of `lang` in the contract page, in order.
fn blocks(lang: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/submit-contract.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

fn schema() -> jsonschema::Validator {
    jsonschema::validator_for(&SubmitJob::json_schema()).expect("a valid JSON Schema")
}

/// Set `STUDIO_BLESS=1` to write the schema after changing the types.
#[test]
fn the_published_schema_is_the_codes() {
    let path = root().join("docs/submit-contract.schema.json");
    let generated = serde_json::to_string_pretty(&SubmitJob::json_schema()).unwrap() + "\n";
    if std::env::var("STUDIO_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "docs/submit-contract.schema.json differs from the SubmitJob type: \
         review the change, then run `STUDIO_BLESS=1 scripts/test --test contract`"
    );
}

#[test]
fn the_schema_is_as_strict_as_the_parser() {
    let v = schema();
    let example = &blocks("json")[0];
    let mut typo: serde_json::Value = serde_json::from_str(example).unwrap();
    typo["cpu"] = 8.into();
    let mut no_owner: serde_json::Value = serde_json::from_str(example).unwrap();
    no_owner.as_object_mut().unwrap().remove("owner");
    let mut bad_cloud: serde_json::Value = serde_json::from_str(example).unwrap();
    bad_cloud["cloud"] = "azure".into();
    for (what, body) in [
        ("typo", typo),
        ("no owner", no_owner),
        ("bad cloud", bad_cloud),
    ] {
        assert!(!v.is_valid(&body), "the schema takes the {what}");
        assert!(
            SubmitJob::from_json(&body.to_string()).is_err(),
            "the parser takes the {what}"
        );
    }
}

#[tokio::test]
async fn every_example_fits_the_schema_and_makes_a_job_on_aws() {
    let examples = blocks("json");
    assert!(examples.len() >= 2, "the page lost its examples");
    let v = schema();
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let ctx = studio_aws::lambda::context(
        &cfg,
        &sdk,
        std::sync::Arc::new(studio_core::clock::SystemClock),
    );
    for (i, body) in examples.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "example {i}: {errors:?}");
        let spec = SubmitJob::from_json(body).unwrap_or_else(|e| panic!("example {i}: {e}"));
        let outcome = handlers::submit(&ctx, &format!("msg-{i}-{}", ulid::Ulid::new()), body)
            .await
            .unwrap_or_else(|e| panic!("example {i}: {e}"));
        let SubmitOutcome::Created(id) = outcome else {
            panic!("example {i}: {outcome:?}");
        };
        let job = ctx.store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(job.spec.entrypoint, spec.entrypoint);
        assert_eq!(job.spec.cloud, spec.cloud);
    }
}

/// The boto3 example, run as a user would (the virtualenv `scripts/test`
/// made has boto3), sends `job.json`; the submit function's code takes it.
#[tokio::test]
async fn the_boto3_example_sends_a_job() {
    let python = std::env::var("STUDIO_TEST_PYTHON")
        .expect("STUDIO_TEST_PYTHON: a python with boto3 (scripts/test sets it)");
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let dir = tempfile::tempdir().unwrap();
    let mut job: serde_json::Value = serde_json::from_str(&blocks("json")[0]).unwrap();
    job["job_id"] = format!("boto3-{}", ulid::Ulid::new().to_string().to_lowercase()).into();
    std::fs::write(dir.path().join("job.json"), job.to_string()).unwrap();
    std::fs::write(dir.path().join("send.py"), &blocks("python")[0]).unwrap();
    let out = std::process::Command::new(python)
        .arg("send.py")
        .current_dir(dir.path())
        .env("SUBMIT_QUEUE", &cfg.submit_queue)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = studio_tests::queue_url(&sqs, &cfg.submit_queue).await;
    let event = studio_tests::poll_as_lambda(&sqs, &url).await;
    assert_eq!(event.records.len(), 1);
    assert_eq!(
        event.records[0].message_id.as_deref(),
        Some(String::from_utf8_lossy(&out.stdout).trim())
    );
    let ctx = studio_aws::lambda::context(
        &cfg,
        &sdk,
        std::sync::Arc::new(studio_core::clock::SystemClock),
    );
    let (resp, _) = studio_aws::lambda::submit_batch(&ctx, event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    let id = studio_core::ids::JobId::new(job["job_id"].as_str().unwrap()).unwrap();
    assert!(ctx.store.get_job(&id).await.unwrap().is_some());
}
