//! Where jobs live: the local backend (always), and an AWS deployment when
//! its settings are given (environment, or `[aws]` in `$STUDIO_HOME/config.toml`).
//! `status`, `logs` and `cancel` look in both, so they work the same for every cloud.
//! GCE jobs' records are in the same deployment; their workspaces and logs
//! are in the GCS bucket of `[gcp]` (or `STUDIO_GCP_BUCKET`).
//!
//! Also the local backend's driver: started when anything needs one,
//! replaced when it died.

use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use anyhow::Context as _;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use studio_aws::config::{ClientConfig, CLIENT_KEYS};
use studio_aws::AwsJobs;
use studio_core::clock::{Clock, SystemClock};
use studio_core::contract::SubmitJob;
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::Job;
use studio_core::pool::PoolSpec;
use studio_core::ports::{ArtifactStore, Created, JobStore, WorkQueue};
use studio_core::resources::Cloud;
use studio_gcp::gcs::GcsArtifacts;
use studio_local::LocalBackend;

/// How often a waiting `run` makes sure a driver is there.
pub(crate) const DRIVER_CHECK_EVERY: Duration = Duration::from_secs(2);
pub(crate) async fn open(g: &Globals) -> Result<LocalBackend, CliError> {
    let exe = g.exe.clone();
    let home = g.home.clone();
    let launcher: studio_local::fleet::Launcher =
        Arc::new(move |pool: &PoolKey, id: &InstanceId| {
            let mut c = std::process::Command::new(&exe);
            c.arg("--home")
                .arg(&home)
                .arg("worker")
                .arg("--pool")
                .arg(pool.as_str())
                .arg("--instance-id")
                .arg(id.as_str())
                // On one disk a frequent checkpoint costs little, and a killed
                // worker loses at most a second of progress.
                .arg("--checkpoint-every")
                .arg("1s");
            c
        });
    LocalBackend::open_system(&g.home, g.settings.clone(), launcher)
        .await
        .with_context(|| format!("opening the local backend in {}", g.home.display()))
        .map_err(CliError::Other)
}

/// Where jobs of `cloud` go.
pub(crate) async fn side_for(g: &Globals, env: &Env, cloud: Cloud) -> Result<Side, CliError> {
    Ok(match cloud {
        Cloud::Local => Side::Local(Box::new(open(g).await?)),
        Cloud::Ec2 | Cloud::Ec2spot | Cloud::Gcloud | Cloud::Gcspot => {
            match aws(&g.home, env).await? {
                // One control plane: GCE jobs go through the same submit
                // queue; only their files go to GCS.
                Some(aws) if matches!(cloud, Cloud::Gcloud | Cloud::Gcspot) => {
                    Side::Gcp(Box::new(aws), Box::new(gcs(&g.home, env).await?))
                }
                Some(aws) => Side::Aws(Box::new(aws)),
                None => {
                    return Err(usage(format!(
                    "cloud '{}' needs the AWS settings: set {} (or [aws] in {}); see docs/aws.md",
                    cloud,
                    studio_aws::config::CLIENT_KEYS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", "),
                    g.home.join("config.toml").display()
                )))
                }
            }
        }
    })
}

/// Sends `spec` (its workspace stored) as a job and returns its id: the same
/// id twice is one job, a different request under a used id is refused.
/// Locally the job record is written before the id is returned, so
/// `studio cancel $id` works at once, and a driver runs.
pub(crate) async fn send(
    g: &Globals,
    env: &Env,
    side: &Side,
    spec: &mut SubmitJob,
) -> Result<JobId, CliError> {
    let id = spec.job_id.clone().unwrap_or_else(JobId::generate);
    spec.job_id = Some(id.clone());
    if let Some(existing) = side.store().get_job(&id).await? {
        if existing.spec != *spec {
            return Err(usage(format!(
                "job id '{id}' was already used for a different request"
            )));
        }
        eprintln!("studio: job {id} already exists ({})", existing.state);
    } else {
        match side {
            Side::Local(be) => {
                // The job itself, not only its message, before the id is
                // printed: `studio cancel $id` works at once.
                let plan = be.ctx.planner.plan(spec).map_err(usage)?;
                let pool = PoolSpec::for_job(spec, &plan).key();
                let by = format!("cli:{}", env.user);
                let job = Job::new(id.clone(), spec.clone(), plan, pool, SystemClock.now(), &by);
                if let Created::Existing(existing) = be.submit(&job, &spec.to_json())? {
                    if existing.spec != *spec {
                        return Err(usage(format!(
                            "job id '{id}' was already used for a different request"
                        )));
                    }
                }
            }
            Side::Aws(aws) | Side::Gcp(aws, _) => {
                aws.queue.send(&aws.submit_queue, &[spec.to_json()]).await?
            }
        }
    }
    if let Side::Local(be) = side {
        ensure_driver(g, be).await?;
    }
    Ok(id)
}

/// The local backend, if this home has one (commands that only read never
/// create it). Any command that opens it also makes sure a driver looks
/// after it, so a driver that died (or a follower killed by a signal) never
/// leaves jobs stuck until some later `run`.
pub(crate) async fn local_if_exists(g: &Globals) -> Result<Option<LocalBackend>, CliError> {
    if !g.home.join("studio.sqlite3").exists() {
        return Ok(None);
    }
    let be = open(g).await?;
    ensure_driver(g, &be).await?;
    Ok(Some(be))
}

/// A driver that died (killed, OOM) is replaced, by a command that stays
/// (a waiting `run`, `studio ui`); a look at the lock while one lives.
pub(crate) async fn replace_dead_driver(g: &Globals, be: &LocalBackend) -> Result<(), CliError> {
    if !studio_local::lock::is_held(&be.driver_lock_path()) {
        ensure_driver(g, be).await?;
    }
    Ok(())
}

/// Starts a background driver for this home if anything needs one. The
/// driver takes the home's driver lock for its whole life or leaves at once,
/// so any number of commands may do this at the same time and one driver
/// results. It starts in its own session with no descriptor of ours beyond
/// stdin/stdout/stderr (`/dev/null` and `driver.log`): a pipe this command
/// was given is never held open after it exits.
pub(crate) async fn ensure_driver(g: &Globals, be: &LocalBackend) -> Result<(), CliError> {
    if !studio_local::driver::needs_driver(be).await? {
        return Ok(());
    }
    let log = studio_local::files::append(&g.home.join("driver.log"))?;
    let log2 = log.try_clone()?;
    let mut cmd = std::process::Command::new(&g.exe);
    cmd.arg("--home")
        .arg(&g.home)
        .arg("--pool-grace")
        .arg(&g.pool_grace)
        .arg("--max-attempts")
        .arg(g.max_attempts.to_string());
    if let Some(n) = g.max_workers {
        cmd.arg("--max-workers").arg(n.to_string());
    }
    cmd.arg("driver")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            studio_local::process::close_inherited_fds(None);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background driver")?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// A job wherever it lives (this home, or the configured AWS deployment),
/// with the side that holds its records and files.
pub(crate) async fn find_job(g: &Globals, env: &Env, id: &JobId) -> Result<(Side, Job), CliError> {
    find(
        &g.home,
        env,
        local_if_exists(g).await?,
        aws(&g.home, env).await?,
        id,
    )
    .await
}

/// Every job of this home and of the configured AWS deployment.
pub(crate) async fn all_jobs(
    local: Option<&LocalBackend>,
    aws: Option<&studio_aws::AwsJobs>,
) -> Result<Vec<Job>, CliError> {
    let mut jobs = Vec::new();
    if let Some(be) = local {
        jobs.extend(be.store.list_jobs(None, &[]).await?);
    }
    if let Some(aws) = aws {
        jobs.extend(aws.store.list_jobs(None, &[]).await?);
    }
    Ok(jobs)
}

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
            "GCE jobs keep their files in a GCS bucket: set STUDIO_GCP_BUCKET (or bucket in [gcp] of {}); see docs/gcp.md",
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

/// Sets `keys` of section `[section]` of `$STUDIO_HOME/config.toml`, the
/// section's other keys and the file's other sections kept; written whole
/// to a private temporary file and renamed, so a reader never sees half.
///
/// # Errors
/// The file is not TOML, or cannot be written.
pub fn write_config(
    home: &std::path::Path,
    section: &str,
    keys: &[(&str, &str)],
) -> Result<(), CliError> {
    write_config_table(home, |table| {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let t = entry.as_table_mut().expect("a table");
        for (k, v) in keys {
            t.insert((*k).into(), toml::Value::String((*v).to_string()));
        }
    })
}

/// `$STUDIO_HOME/config.toml` changed by `edit`, written atomically (mode 0600).
///
/// # Errors
/// The file is not TOML, or cannot be written.
pub fn write_config_table(
    home: &std::path::Path,
    edit: impl FnOnce(&mut toml::Table),
) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut table = config_table(home)?;
    edit(&mut table);
    std::fs::create_dir_all(home)?;
    let file = home.join("config.toml");
    let tmp = file.with_extension("toml.tmp");
    {
        // Names only, never credentials; still private like the rest of the home.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            toml::to_string(&table)
                .map_err(|e| usage(format!("writing {}: {e}", file.display())))?
                .as_bytes(),
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    Ok(())
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
