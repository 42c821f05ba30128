//! `studio gcp setup`: a Google Cloud project made ready for the deployment's
//! `gcloud`/`gcspot` pools, and the stack told about it, in one idempotent
//! command (the steps: [`studio_gcp::setup`]).
//!
//! Why a CLI command and not a `scripts/deploy` stage: it needs the stack
//! (its account, its roles, its worker binary) and the project at once,
//! is run again after each deploy (a new worker binary) and by someone
//! who may never build the functions; the CLI already holds both clouds'
//! credentials and the stack's name.

use crate::backend;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use clap::{Args, Subcommand};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use studio_aws::stack::{Check, Stack};
use studio_gcp::setup::{self, api::Admin, api::Endpoints, Setup};

#[derive(Debug, Subcommand)]
pub enum GcpCommand {
    /// Make a Google Cloud project ready for this deployment's gcloud/gcspot
    /// pools (APIs, bucket, service accounts and grants, workload identity
    /// federation, the preemption push, the worker binary) and give the
    /// stack its GCP parameters. Idempotent: run it again after a deploy.
    Setup(SetupArgs),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The Google Cloud project (its id).
    #[arg(long, value_name = "ID")]
    pub project: String,
    /// The region the pools run in, e.g. us-central1.
    #[arg(long, value_name = "REGION")]
    pub region: String,
    /// The zones the groups spread over (default: the stack's, else every
    /// zone of the region).
    #[arg(long, value_name = "ZONE,...", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// The deployed stack (default: the one `studio init` recorded).
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// The webhook's URL (`scripts/deploy` prints it): preempted VMs are
    /// pushed to it (default: the stack's; without one, the push is left
    /// out and said).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// The bucket of GCE jobs' files (default: the stack's, else
    /// STACK-PROJECT).
    #[arg(long, value_name = "NAME")]
    pub bucket: Option<String>,
    /// The worker image, any Debian or Ubuntu image with python3 and curl
    /// (default: the stack's, else Debian 12's family).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Days jobs' logs, workspaces and checkpoints are kept in the bucket
    /// (default: 30 for a new bucket; an existing rule is kept).
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u32>,
    /// List the changes it would make, and make none.
    #[arg(long)]
    pub dry_run: bool,
}

/// The worker image when nobody says.
const DEBIAN: &str = "projects/debian-cloud/global/images/family/debian-12";

/// The stack's function roles, by logical id: the identities the workload
/// identity provider admits.
const FUNCTION_ROLES: &[&str] = &[
    "SubmitRole",
    "WebhookRole",
    "ScaleRole",
    "InterruptionRole",
    "CleanupRole",
];

pub(crate) async fn gcp(g: &Globals, env: &Env, c: GcpCommand) -> Result<ExitCode, CliError> {
    match c {
        GcpCommand::Setup(a) => gcp_setup(g, env, a).await,
    }
}

async fn gcp_setup(g: &Globals, env: &Env, a: SetupArgs) -> Result<ExitCode, CliError> {
    if a.retention_days == Some(0) {
        return Err(usage("--retention-days must be at least 1"));
    }
    if let Some(u) = &a.webhook_url {
        if !u.starts_with("https://") || u.contains(char::is_whitespace) {
            return Err(usage(format!(
                "--webhook-url {u}: expected the webhook's https:// URL, as scripts/deploy prints it"
            )));
        }
    }
    let cfg = backend::aws_settings(&g.home, env)?.ok_or_else(|| {
        usage("no AWS deployment configured: run `studio init --stack NAME` first (GCE pools are run by the stack's functions)")
    })?;
    let stack_name = a
        .stack
        .clone()
        .or_else(|| backend::configured_stack(&g.home))
        .ok_or_else(|| {
            usage("which stack? pass --stack NAME (or run `studio init --stack NAME`)")
        })?;
    let sdk = studio_aws::sdk_config(&cfg.region).await;
    let stack = Stack::describe(&sdk, &stack_name)
        .await
        .map_err(|e| usage(format!("stack {stack_name}: {e}")))?;
    if !stack.usable() {
        return Err(usage(format!(
            "stack {} is {}: wait until it is complete",
            stack.name, stack.status
        )));
    }
    // Run again (after a deploy), a flag not given keeps what the stack has
    // for the same project, not the first run's defaults.
    let same_project = stack.parameters.get("GcpProject") == Some(&a.project);
    let kept = |k: &str| {
        same_project
            .then(|| stack.parameters.get(k).cloned())
            .flatten()
            .filter(|v| !v.is_empty())
    };
    let zones = match a.zones.is_empty() {
        false => a.zones.clone(),
        true => kept("GcpZone")
            .filter(|z| {
                z.split(',')
                    .all(|z| studio_gcp::config::region_of(z) == a.region)
            })
            .map(|z| z.split(',').map(String::from).collect())
            .unwrap_or_default(),
    };
    let image = a
        .image
        .clone()
        .or_else(|| kept("GcpImage"))
        .unwrap_or_else(|| DEBIAN.into());
    let s = setup_for(
        &sdk,
        &stack,
        SetupFor {
            project: a.project.clone(),
            region: a.region.clone(),
            zones,
            bucket: a.bucket.clone().or_else(|| kept("GcpBucket")),
            retention_days: a.retention_days,
            webhook_url: a.webhook_url.clone().or_else(|| {
                kept("GcpPushAudience")
                    .and_then(|u| u.strip_suffix("v1/pubsub/preemption").map(String::from))
            }),
        },
    )
    .await?;
    let mut api = admin(env, a.dry_run)?;
    api.quota_project = Some(s.project.clone());
    println!(
        "studio gcp setup: project {}, region {}, stack {} (account {}){}",
        s.project,
        s.region,
        stack.name,
        s.aws_account,
        if a.dry_run { ", dry run" } else { "" }
    );
    let Converged {
        done,
        params,
        differing,
        mut left,
    } = converge(&api, &sdk, &stack, &s, &image).await?;
    let mut changes = api.changes();
    if !differing.is_empty() {
        changes.push(format!(
            "set stack {} parameters {}",
            stack.name,
            differing.join(", ")
        ));
        if !a.dry_run {
            stack
                .update_parameters(&sdk, &params, Duration::from_secs(1800))
                .await
                .map_err(|e| CliError::Other(anyhow::anyhow!(format!("gcp setup: {e}"))))?;
        }
    }
    if !a.dry_run {
        backend::write_config(&g.home, "gcp", &[("bucket", s.bucket.as_str())])?;
    }

    let verb = if a.dry_run { "would" } else { "did" };
    for c in &changes {
        println!("  {verb}: {c}");
    }
    if changes.is_empty() {
        println!("no change: the project and the stack are as they should be");
    } else if a.dry_run {
        println!("dry run: {} changes listed, none made", changes.len());
    } else {
        println!("{} changes made", changes.len());
    }
    println!(
        "zones {}; workers run as {}; functions reach Google as {} (pool {}, provider {})",
        done.zones.join(","),
        done.worker.email,
        done.control.email,
        done.pool,
        done.provider
    );
    left.push(format!(
        "GPU jobs need GPU quota in {} (a new project has none): https://console.cloud.google.com/iam-admin/quotas?project={}",
        s.region, s.project
    ));
    println!("left to you:");
    for l in &left {
        println!("  - {l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a setup is asked beside what the stack says.
struct SetupFor {
    project: String,
    region: String,
    zones: Vec<String>,
    bucket: Option<String>,
    retention_days: Option<u32>,
    webhook_url: Option<String>,
}

/// The [`Setup`] of `stack` (its account, its function roles, its name).
async fn setup_for(
    sdk: &aws_config::SdkConfig,
    stack: &Stack,
    f: SetupFor,
) -> Result<Setup, CliError> {
    let account = stack
        .account
        .clone()
        .ok_or_else(|| usage(format!("stack {}: no account in its id", stack.name)))?;
    let resources = Stack::resources(sdk, &stack.name)
        .await
        .map_err(|e| usage(format!("stack {}: {e}", stack.name)))?;
    let roles = FUNCTION_ROLES
        .iter()
        .map(|r| {
            resources.get(*r).cloned().ok_or_else(|| {
                usage(format!(
                    "stack {} has no {r}: is it a Studio stack (infra/template.yaml)?",
                    stack.name
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prefix = stack.name.to_ascii_lowercase();
    Ok(Setup {
        bucket: f
            .bucket
            .unwrap_or_else(|| default_bucket(&prefix, &f.project)),
        project: f.project,
        region: f.region,
        zones: f.zones,
        prefix,
        retention_days: f.retention_days,
        aws_account: account,
        aws_roles: roles,
        webhook_url: f.webhook_url,
    })
}

/// What a (dry or real) run found and did, before the stack's update.
struct Converged {
    done: setup::Done,
    /// The stack's GCP parameters as they should be.
    params: BTreeMap<String, String>,
    /// Those that differ from the stack's.
    differing: Vec<String>,
    /// What it cannot do.
    left: Vec<String>,
}

/// The project set up (dry: checked) and the binaries copied; the stack's
/// parameters worked out.
async fn converge(
    api: &Admin,
    sdk: &aws_config::SdkConfig,
    stack: &Stack,
    s: &Setup,
    image: &str,
) -> Result<Converged, CliError> {
    let done = setup::apply(api, s)
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!(format!("gcp setup: {e}"))))?;

    // The deployment's worker binary and uv, copied into the bucket the
    // GCE machines read them from.
    let mut left = Vec::new();
    let artifacts = stack
        .outputs
        .get("ArtifactBucket")
        .cloned()
        .unwrap_or_default();
    for (param, kind) in [("BinarySha256X86", "studio"), ("UvSha256X86", "uv")] {
        let sha = stack.parameters.get(param).cloned().unwrap_or_default();
        if sha.is_empty() {
            left.push(format!(
                "the stack has no x86_64 {kind} release ({param} is empty): deploy with scripts/deploy, then run this again"
            ));
            continue;
        }
        copy_release(api, sdk, &artifacts, &s.bucket, kind, &sha).await?;
    }

    let mut params = BTreeMap::new();
    let id = |x: &Option<String>| x.clone().unwrap_or_else(|| "(new)".into());
    params.insert("GcpProject", s.project.clone());
    params.insert("GcpZone", done.zones.join(","));
    params.insert("GcpBucket", s.bucket.clone());
    params.insert("GcpWorkerServiceAccount", done.worker.email.clone());
    params.insert("GcpWorkerServiceAccountId", id(&done.worker.unique_id));
    params.insert("GcpImage", image.to_string());
    params.insert("GcpCredentialConfig", done.credential_config.to_string());
    match &done.push_audience {
        Some(aud) => {
            params.insert("GcpPushAudience", aud.clone());
            params.insert("GcpPushServiceAccount", done.pusher.email.clone());
            params.insert("GcpPushServiceAccountId", id(&done.pusher.unique_id));
        }
        None => left.push(format!(
            "preempted VMs are not pushed to the webhook: run this again with --webhook-url (scripts/deploy prints it; or `aws lambda get-function-url-config --function-name {}-webhook`)",
            stack.name
        )),
    }
    let params: BTreeMap<String, String> = params
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let differing = stack
        .differing(&params)
        .iter()
        .map(|(k, _, _)| k.to_string())
        .collect();
    Ok(Converged {
        done,
        params,
        differing,
        left,
    })
}

/// `STACK-PROJECT`, within a bucket name's 63 characters.
fn default_bucket(prefix: &str, project: &str) -> String {
    let name = format!("{prefix}-{project}");
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The setup's client: Google's endpoints and Application Default
/// Credentials, or a stand-in (`STUDIO_GCP_API_ENDPOINT`, with
/// `STUDIO_GCP_ANONYMOUS=1`).
fn admin(env: &Env, dry_run: bool) -> Result<Admin, CliError> {
    let anonymous = env
        .vars
        .get("STUDIO_GCP_ANONYMOUS")
        .is_some_and(|v| v == "1");
    let credentials = if anonymous {
        studio_gcp::anonymous()
    } else {
        studio_gcp::setup::api::default_credentials().map_err(|e| {
            usage(format!(
                "no Google credentials ({e}): run `gcloud auth application-default login`"
            ))
        })?
    };
    let endpoints = match env.vars.get("STUDIO_GCP_API_ENDPOINT") {
        Some(base) => Endpoints::all_at(base),
        None => Endpoints::google(),
    };
    let mut api = Admin::new(endpoints, credentials, dry_run);
    if env.vars.contains_key("STUDIO_GCP_API_ENDPOINT") {
        api.first_backoff = Duration::from_millis(50);
    }
    Ok(api)
}

/// `releases/KIND-SHA` copied from the stack's S3 bucket into the GCS
/// bucket, its checksum checked, unless it is there already.
async fn copy_release(
    api: &Admin,
    sdk: &aws_config::SdkConfig,
    from: &str,
    to: &str,
    kind: &str,
    sha: &str,
) -> Result<(), CliError> {
    let name = format!("releases/{kind}-{sha}");
    let exists = setup::object_exists(api, to, &name).await.unwrap_or(false);
    if exists {
        return Ok(());
    }
    let bytes = if api.dry_run {
        Vec::new()
    } else {
        let got = studio_aws::s3::client(sdk)
            .get_object()
            .bucket(from)
            .key(&name)
            .send()
            .await
            .map_err(|e| {
                CliError::Other(anyhow::anyhow!(format!(
                    "gcp setup: s3://{from}/{name}: {} (deploy with scripts/deploy, which publishes it)",
                    studio_aws::AwsError::sdk("GetObject", e)
                )))
            })?;
        let bytes = got
            .body
            .collect()
            .await
            .map_err(|e| {
                CliError::Other(anyhow::anyhow!(format!(
                    "gcp setup: s3://{from}/{name}: {e}"
                )))
            })?
            .to_vec();
        let got_sha = hex::encode(sha2::Sha256::digest(&bytes));
        if got_sha != sha {
            return Err(CliError::Other(anyhow::anyhow!(format!(
                "gcp setup: s3://{from}/{name} has SHA-256 {got_sha}, not {sha}: not copied"
            ))));
        }
        bytes
    };
    setup::upload(api, to, &name, bytes)
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!(format!("gcp setup: {e}"))))
}

/// `studio doctor`'s GCP lines for a stack with GCE pools: the set-up
/// checked by a dry run of it (what it would change is what is wrong), the
/// worker image, and the region's CPU and GPU quota.
pub(crate) async fn doctor_checks(
    env: &Env,
    sdk: &aws_config::SdkConfig,
    stack_name: &str,
) -> Vec<Check> {
    let line = |what: &'static str, result: Result<String, String>| Check {
        what,
        result,
        skipped: false,
        warning: false,
    };
    let Ok(stack) = Stack::describe(sdk, stack_name).await else {
        return vec![];
    };
    let param = |k: &str| stack.parameters.get(k).cloned().unwrap_or_default();
    let project = param("GcpProject");
    if project.is_empty() {
        return vec![Check {
            skipped: true,
            ..line(
                "gcp",
                Ok("no GCE pools (GcpProject is empty): `studio gcp setup` adds them (docs/gcp.md)"
                    .into()),
            )
        }];
    }
    let zones: Vec<String> = param("GcpZone").split(',').map(String::from).collect();
    let region = studio_gcp::config::region_of(&zones[0]).to_string();
    let webhook = param("GcpPushAudience")
        .strip_suffix("v1/pubsub/preemption")
        .map(String::from);
    let run_again = format!(
        "studio gcp setup --project {project} --region {region}{}",
        webhook
            .as_ref()
            .map(|w| format!(" --webhook-url {w}"))
            .unwrap_or_default()
    );
    let mut out = Vec::new();
    let api = match admin(env, true) {
        Ok(mut api) => {
            api.quota_project = Some(project.clone());
            api
        }
        Err(e) => return vec![line("gcp setup", Err(e.to_string()))],
    };
    let for_setup = SetupFor {
        project: project.clone(),
        region: region.clone(),
        zones,
        bucket: Some(param("GcpBucket")),
        retention_days: None,
        webhook_url: webhook,
    };
    let checked = match setup_for(sdk, &stack, for_setup).await {
        Ok(s) => converge(&api, sdk, &stack, &s, &param("GcpImage"))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    out.push(line(
        "gcp setup",
        match checked {
            Err(e) => Err(e),
            Ok(c) => {
                let mut pending = api.changes();
                if !c.differing.is_empty() {
                    pending.push(format!("stack parameters {}", c.differing.join(", ")));
                }
                if pending.is_empty() {
                    Ok(format!(
                        "project {project} ({} zones of {region}) as `studio gcp setup` leaves it",
                        c.done.zones.len()
                    ))
                } else {
                    Err(format!(
                        "{} missing: {}; run `{run_again}`",
                        pending.len(),
                        pending.join("; ").replace('\n', " ")
                    ))
                }
            }
        },
    ));
    let image = param("GcpImage");
    out.push(line(
        "gcp image",
        match api
            .get(&format!("{}/compute/v1/{image}", api.endpoints.compute))
            .await
        {
            Ok(Some(i)) => Ok(format!(
                "{image}: {} ({})",
                i["name"].as_str().unwrap_or("?"),
                i["architecture"].as_str().unwrap_or("architecture not said")
            )),
            Ok(None) => Err(format!(
                "{image} does not exist or is not readable: give another with `studio gcp setup --image`"
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    out.push(quota(&api, &project, &region).await);
    out
}

/// The region's CPU quota (a spot VM counts against CPUS unless the project
/// has a PREEMPTIBLE_CPUS quota) and whether any GPU quota exists.
async fn quota(api: &Admin, project: &str, region: &str) -> Check {
    let url = format!(
        "{}/compute/v1/projects/{project}/regions/{region}",
        api.endpoints.compute
    );
    let (result, warning) = match api.get(&url).await {
        Ok(Some(r)) => {
            let quotas = r["quotas"].as_array().cloned().unwrap_or_default();
            let metric = |m: &str| {
                quotas.iter().find(|q| q["metric"] == m).map(|q| {
                    (
                        q["limit"].as_f64().unwrap_or(0.0),
                        q["usage"].as_f64().unwrap_or(0.0),
                    )
                })
            };
            let gpus: f64 = quotas
                .iter()
                .filter(|q| q["metric"].as_str().is_some_and(|m| m.ends_with("_GPUS")))
                .map(|q| q["limit"].as_f64().unwrap_or(0.0))
                .sum();
            match metric("CPUS") {
                Some((limit, used)) if limit - used < 1.0 => (
                    Err(format!(
                        "CPUS in {region}: {used} of {limit} used, none left: ask for more at https://console.cloud.google.com/iam-admin/quotas?project={project}"
                    )),
                    false,
                ),
                Some((limit, used)) if gpus == 0.0 => (
                    Err(format!(
                        "CPUS in {region}: {used} of {limit} used; no GPU quota, so GPU jobs will wait: ask at https://console.cloud.google.com/iam-admin/quotas?project={project}"
                    )),
                    true,
                ),
                Some((limit, used)) => (
                    Ok(format!("CPUS in {region}: {used} of {limit} used; GPUs: {gpus}")),
                    false,
                ),
                None => (Err(format!("{region} reports no CPUS quota")), true),
            }
        }
        Ok(None) => (Err(format!("region {region} does not exist")), false),
        Err(e) => (Err(e.to_string()), false),
    };
    Check {
        what: "gcp quota",
        result,
        skipped: false,
        warning,
    }
}
