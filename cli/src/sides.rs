//! Where jobs live: the local backend (always), and an AWS deployment when
//! its settings are given (environment, or `[aws]` in `$STUDIO_HOME/config.toml`).
//! `status`, `logs` and `cancel` look in both, so they work the same for every cloud.

use crate::commands::{usage, CliError, Env};
use studio_aws::config::{ClientConfig, CLIENT_KEYS};
use studio_aws::AwsJobs;
use studio_core::ids::JobId;
use studio_core::job::Job;
use studio_core::ports::{ArtifactStore, JobStore};
use studio_local::LocalBackend;

pub enum Side {
    Local(Box<LocalBackend>),
    Aws(Box<AwsJobs>),
}

impl Side {
    pub fn store(&self) -> &dyn JobStore {
        match self {
            Side::Local(b) => b.store.as_ref(),
            Side::Aws(a) => &a.store,
        }
    }

    pub fn artifacts(&self) -> &dyn ArtifactStore {
        match self {
            Side::Local(b) => b.artifacts.as_ref(),
            Side::Aws(a) => &a.artifacts,
        }
    }
}

/// The AWS client settings, environment first, then the config file.
///
/// # Errors
/// An unreadable config file, or settings given only in part.
pub fn aws_settings(home: &std::path::Path, env: &Env) -> Result<Option<ClientConfig>, CliError> {
    let file = home.join("config.toml");
    let table: toml::Table = match std::fs::read_to_string(&file) {
        Ok(text) => text
            .parse()
            .map_err(|e| usage(format!("{}: {e}", file.display())))?,
        Err(_) => toml::Table::new(),
    };
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
            return Ok((Side::Aws(Box::new(a)), j));
        }
    }
    Err(usage(format!("no job '{id}'")))
}
