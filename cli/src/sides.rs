//! Where jobs live: the local backend (always), and an AWS deployment when
//! its settings are given (environment, or `[aws]` in `$STUDIO_HOME/config.toml`).
//! `status`, `logs` and `cancel` look in both, so they work the same for every cloud.
//! GCE jobs' records are in the same deployment; their workspaces and logs
//! are in the GCS bucket of `[gcp]` (or `STUDIO_GCP_BUCKET`).

use crate::commands::{usage, CliError, Env};
use studio_aws::config::{ClientConfig, CLIENT_KEYS};
use studio_aws::AwsJobs;
use studio_core::ids::JobId;
use studio_core::job::Job;
use studio_core::ports::{ArtifactStore, JobStore};
use studio_gcp::gcs::GcsArtifacts;
use studio_local::LocalBackend;

pub enum Side {
    Local(Box<LocalBackend>),
    Aws(Box<AwsJobs>),
    /// GCE jobs: records and the submit queue on AWS, files in GCS.
    Gcp(Box<AwsJobs>, Box<GcsArtifacts>),
}

impl Side {
    pub fn store(&self) -> &dyn JobStore {
        match self {
            Side::Local(b) => b.store.as_ref(),
            Side::Aws(a) | Side::Gcp(a, _) => &a.store,
        }
    }

    pub fn artifacts(&self) -> &dyn ArtifactStore {
        match self {
            Side::Local(b) => b.artifacts.as_ref(),
            Side::Aws(a) => &a.artifacts,
            Side::Gcp(_, g) => g.as_ref(),
        }
    }
}

/// The GCS bucket of GCE jobs' files: `STUDIO_GCP_BUCKET`, else `bucket`
/// in `[gcp]`; `STUDIO_GCS_ENDPOINT` / `storage_endpoint` for an emulator.
///
/// # Errors
/// An unreadable config file, or no bucket.
pub async fn gcs(home: &std::path::Path, env: &Env) -> Result<GcsArtifacts, CliError> {
    let table = config_table(home)?;
    let gcp = table.get("gcp").and_then(|v| v.as_table());
    let get = |var: &str, key: &str| {
        env.vars
            .get(var)
            .cloned()
            .or_else(|| gcp?.get(key)?.as_str().map(String::from))
            .filter(|v| !v.is_empty())
    };
    let bucket = get("STUDIO_GCP_BUCKET", "bucket").ok_or_else(|| {
        usage(format!(
            "GCE jobs keep their files in a GCS bucket: set STUDIO_GCP_BUCKET (or bucket in [gcp] of {}); see the README, \"GCP\"",
            home.join("config.toml").display()
        ))
    })?;
    let endpoint = get("STUDIO_GCS_ENDPOINT", "storage_endpoint");
    let anonymous = get("STUDIO_GCP_ANONYMOUS", "anonymous").is_some_and(|v| v == "1");
    Ok(GcsArtifacts::for_bucket(&bucket, endpoint.as_deref(), anonymous).await?)
}

fn config_table(home: &std::path::Path) -> Result<toml::Table, CliError> {
    let file = home.join("config.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .parse()
            .map_err(|e| usage(format!("{}: {e}", file.display()))),
        Err(_) => Ok(toml::Table::new()),
    }
}

/// The AWS client settings, environment first, then the config file.
///
/// # Errors
/// An unreadable config file, or settings given only in part.
pub fn aws_settings(home: &std::path::Path, env: &Env) -> Result<Option<ClientConfig>, CliError> {
    let table = config_table(home)?;
    let aws = table
        .get("aws")
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    let lookup = |name: &str| {
        env.vars.get(name).cloned().or_else(|| {
            let key = CLIENT_KEYS.iter().find(|(k, _)| *k == name)?.1;
            aws.get(key).and_then(|v| v.as_str()).map(String::from)
        })
    };
    ClientConfig::from_lookup(lookup).map_err(|e| usage(format!("AWS settings: {e}")))
}

/// The stack `studio init` recorded in `$STUDIO_HOME/config.toml`, if any.
pub fn configured_stack(home: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(home.join("config.toml")).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table.get("aws")?.get("stack")?.as_str().map(String::from)
}

/// The AWS side, if configured.
pub async fn aws(home: &std::path::Path, env: &Env) -> Result<Option<AwsJobs>, CliError> {
    let Some(cfg) = aws_settings(home, env)? else {
        return Ok(None);
    };
    let sdk = studio_aws::sdk_config(&cfg.region).await;
    Ok(Some(AwsJobs::new(&cfg, &sdk)))
}

/// Finds a job wherever it lives.
///
/// # Errors
/// A usage error when no side has it.
pub async fn find(
    home: &std::path::Path,
    env: &Env,
    local: Option<LocalBackend>,
    aws: Option<AwsJobs>,
    id: &JobId,
) -> Result<(Side, Job), CliError> {
    if let Some(b) = local {
        if let Some(j) = b.store.get_job(id).await? {
            return Ok((Side::Local(Box::new(b)), j));
        }
    }
    if let Some(a) = aws {
        if let Some(j) = a.store.get_job(id).await? {
            if studio_core::route::Provider::of(j.spec.cloud) == studio_core::route::Provider::Gcp {
                let g = gcs(home, env).await?;
                return Ok((Side::Gcp(Box::new(a), Box::new(g)), j));
            }
            return Ok((Side::Aws(Box::new(a)), j));
        }
    }
    Err(usage(format!("no job '{id}'")))
}
