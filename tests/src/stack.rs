//! `infra/template.yaml` deployed into `moto_server` through CloudFormation,
//! as `scripts/deploy` would: the functions' code (an empty zip each: moto
//! stores code, it never runs it) in a deployment bucket, a worker image,
//! and the stack created and waited for, every parameter given.

use crate::eventually;
use crate::template::Template;
use aws_sdk_cloudformation::types::{Capability, Parameter};
use std::collections::HashMap;
use std::time::Duration;

/// The functions `scripts/deploy` builds, by their code's file name.
pub const FUNCTIONS: &[&str] = &[
    "submit",
    "scale-on-queue-depth",
    "handle-spot-interruption",
    "cleanup-empty-group",
    "webhook",
];

/// A stack name that is new, lower case and short (it prefixes an S3
/// bucket and every queue).
pub fn new_name(first: char) -> String {
    format!(
        "{first}{}",
        &ulid::Ulid::new().to_string().to_lowercase()[18..]
    )
}

/// The template deployed as `stack` with `extra` parameters beside the
/// ones every deployment needs; the parameters given and the outputs.
///
/// # Panics
/// When moto refuses the stack or fails to create it.
pub async fn create(
    moto: &aws_config::SdkConfig,
    stack: &str,
    extra: &[(&str, &str)],
) -> (Vec<(String, String)>, HashMap<String, String>) {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(moto)
            .force_path_style(true)
            .build(),
    );
    let code_bucket = format!("{stack}-code");
    s3.create_bucket()
        .bucket(&code_bucket)
        .send()
        .await
        .unwrap();
    let empty_zip: Vec<u8> = [b"PK\x05\x06".as_slice(), &[0u8; 18]].concat();
    for f in FUNCTIONS {
        s3.put_object()
            .bucket(&code_bucket)
            .key(format!("v1/{f}.zip"))
            .body(empty_zip.clone().into())
            .send()
            .await
            .unwrap();
    }
    let ami = aws_sdk_ec2::Client::new(moto)
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap()
        .images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let mut params: Vec<(String, String)> = [
        ("CodeBucket", code_bucket.as_str()),
        ("CodeKeyPrefix", "v1/"),
        ("Architecture", "x86_64"),
        ("WorkerAmi", ami.as_str()),
        ("AvailabilityZones", "us-east-1a"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    params.dedup_by(|a, b| a.0 == b.0);
    // Every other parameter at its default, given explicitly: moto 5.2.1
    // keeps only the parameters a CreateStack named, and fails an
    // UpdateStack's UsePreviousValue on any other (KeyError, a 500); AWS
    // keeps them all.
    let template = Template::load();
    for (k, p) in template.doc["Parameters"].as_object().unwrap() {
        if params.iter().any(|(given, _)| given == k) {
            continue;
        }
        let default = match &p["Default"] {
            serde_json::Value::String(v) => v.clone(),
            serde_json::Value::Null => continue,
            v => v.to_string(),
        };
        params.push((k.clone(), default));
    }

    let cfn = aws_sdk_cloudformation::Client::new(moto);
    let mut create = cfn
        .create_stack()
        .stack_name(stack)
        .template_body(Template::text())
        .capabilities(Capability::CapabilityNamedIam);
    for (k, v) in &params {
        create = create.parameters(
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build(),
        );
    }
    create.send().await.expect("CreateStack");
    let outputs = eventually(
        "the stack to be created",
        Duration::from_secs(60),
        async || {
            let s = cfn
                .describe_stacks()
                .stack_name(stack)
                .send()
                .await
                .unwrap();
            let s = s.stacks()[0].clone();
            let status = s.stack_status().unwrap().as_str().to_string();
            assert!(
                !status.contains("FAILED") && !status.contains("ROLLBACK"),
                "{status}: {:?}",
                s.stack_status_reason()
            );
            (status == "CREATE_COMPLETE").then(|| {
                s.outputs()
                    .iter()
                    .map(|o| {
                        (
                            o.output_key().unwrap().to_string(),
                            o.output_value().unwrap().to_string(),
                        )
                    })
                    .collect::<HashMap<String, String>>()
            })
        },
    )
    .await;
    (params, outputs)
}
