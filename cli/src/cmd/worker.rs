//! `studio worker` (hidden): a worker for one pool, started by a fleet
//! (a local process, an EC2 or GCE machine's bootstrap); the loop itself
//! is `studio_core::worker`.

use crate::backend::open;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
#[cfg(feature = "gcp")]
use studio_core::clock::SystemClock;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::notice::{Ec2Metadata, GceMetadata, NoNotice};
use studio_core::worker::{run_worker, Cadence, WorkerConfig, WorkerExit};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub pool: String,
    #[arg(long)]
    pub instance_id: String,
    /// Leave after this long without work.
    #[arg(long, default_value = "5m")]
    pub idle_timeout: String,
    /// The heartbeat bound: a received item's lease until its claim, and
    /// (locally) how long a running attempt may go without a heartbeat on
    /// its record; the worker writes one every quarter of it.
    #[arg(long, env = "STUDIO_LEASE", default_value = "30s")]
    pub lease: String,
    /// The interpreter of jobs that ask for no Python and have no
    /// dependency files (a job's own choice is its `python` field).
    #[arg(long, env = "STUDIO_WORKER_PYTHON", default_value = "python3")]
    pub python: String,
    /// Where interruption notices come from: none, ec2 (IMDSv2) or gce.
    #[arg(long, env = "STUDIO_METADATA", default_value = "none")]
    pub metadata: String,
    /// The metadata service's address (default: the cloud's own).
    #[arg(long, env = "STUDIO_METADATA_URL")]
    pub metadata_url: Option<String>,
    /// Upload the checkpoint directory at most this often.
    #[arg(long, env = "STUDIO_CHECKPOINT_EVERY", default_value = "30s")]
    pub checkpoint_every: String,
    /// Run every attempt as a uid of its own from this range (cloud
    /// machines: the worker stays root, the block on the metadata service
    /// covers the range).
    #[arg(long, env = "STUDIO_JOB_UIDS", value_name = "FIRST-LAST")]
    pub job_uids: Option<String>,
    /// The metadata endpoints that must not answer a job's user, checked
    /// before each script starts (host:port, comma-separated; default with
    /// --job-uids: the cloud's own, from --metadata).
    #[arg(long, env = "STUDIO_METADATA_ENDPOINTS", value_name = "ADDRS")]
    pub metadata_endpoints: Option<String>,
    /// Where jobs' Python environments are kept, a directory per owner
    /// (default: envs/ in the home).
    #[arg(long, alias = "venv-root", value_name = "DIR")]
    pub env_root: Option<PathBuf>,
    /// uv, which builds jobs' environments (default: on PATH, else beside
    /// this binary).
    #[arg(long, env = "STUDIO_UV", value_name = "PATH")]
    pub uv: Option<PathBuf>,
    /// Where the worker's queue, store and artifacts are: local, aws or gce.
    #[arg(long, env = "STUDIO_BACKEND", default_value = "local")]
    pub backend: String,
}

/// The metadata endpoints checked before each script: as given, else the
/// cloud's own (EC2: IPv4 and IPv6; GCE: its one address, which is what
/// `metadata.google.internal` names).
fn metadata_endpoints(a: &WorkerArgs) -> Result<Vec<std::net::SocketAddr>, CliError> {
    let given = match &a.metadata_endpoints {
        Some(list) => list.clone(),
        None => match a.metadata.as_str() {
            "ec2" => "169.254.169.254:80,[fd00:ec2::254]:80".to_string(),
            "gce" => "169.254.169.254:80".to_string(),
            _ => String::new(),
        },
    };
    given
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| usage(format!("--metadata-endpoints: '{s}' is not ADDRESS:PORT")))
        })
        .collect()
}

pub(crate) async fn worker(g: &Globals, env: &Env, a: WorkerArgs) -> Result<ExitCode, CliError> {
    if let Some(fd) = env.lock_fd {
        // Keep our liveness lock out of the scripts we start.
        // SAFETY: fcntl on an fd we inherited for this purpose.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    let dur = |name: &str, v: &str| {
        humantime::parse_duration(v).map_err(|e| usage(format!("--{name} '{v}': {e}")))
    };
    #[cfg(feature = "gcp")]
    let cfg_meta_url = a.metadata_url.clone();
    let metadata = metadata_endpoints(&a)?;
    // On a cloud machine each call is a request (SQS, DynamoDB, S3);
    // locally a SQLite read or a file write.
    let cadence = if a.backend != "local" {
        Cadence::CLOUD
    } else {
        Cadence::local(dur("lease", &a.lease)?)
    };
    let cfg = WorkerConfig {
        pool: PoolKey::new(a.pool).map_err(usage)?,
        instance: InstanceId::new(a.instance_id).map_err(usage)?,
        lease: dur("lease", &a.lease)?,
        poll_wait: cadence.poll_wait,
        heartbeat: cadence.heartbeat,
        seen_every: cadence.seen_every,
        beat_every: cadence.beat_every,
        idle_timeout: dur("idle-timeout", &a.idle_timeout)?,
        term_grace: Duration::from_secs(10),
        work_root: g.home.join("jobs"),
        python: a.python,
        notice: match a.metadata.as_str() {
            "none" => Arc::new(NoNotice),
            "ec2" => Arc::new(Ec2Metadata {
                base: a
                    .metadata_url
                    .unwrap_or_else(|| "http://169.254.169.254".into()),
            }),
            "gce" => Arc::new(GceMetadata {
                base: a
                    .metadata_url
                    .unwrap_or_else(|| "http://metadata.google.internal".into()),
            }),
            other => return Err(usage(format!("--metadata '{other}': use none, ec2 or gce"))),
        },
        notice_every: cadence.notice_every,
        checkpoint_every: dur("checkpoint-every", &a.checkpoint_every)?,
        log_every: cadence.log_every,
        progress_every: cadence.progress_every,
        env_root: a.env_root.unwrap_or_else(|| g.home.join("envs")),
        uv: a.uv,
        uv_env: env.uv_vars.clone().into_iter().collect(),
        job_users: a
            .job_uids
            .as_deref()
            .map(|r| {
                studio_core::worker::JobUsers::parse(r)
                    .map_err(|e| usage(format!("--job-uids {e}")))
            })
            .transpose()?,
        metadata,
        inputs: None,
        local_limits: a.backend == "local",
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Registered here, before anything else: on this single-threaded
    // runtime a spawned task first runs at the main task's first wait, and
    // a SIGTERM before then would kill the worker without a hand-back.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = tx.send(true);
    });
    let exit = match a.backend.as_str() {
        "local" => {
            let be = open(g).await?;
            // Inputs with the user's own AWS credentials (the default
            // chain, loaded when a job first names an input).
            let mut cfg = cfg;
            cfg.inputs = Some(Arc::new(studio_aws::s3::S3Inputs::from_default_chain()));
            run_worker(&be.ctx, be.artifacts.as_ref(), &cfg, rx).await?
        }
        #[cfg(feature = "ec2")]
        "aws" => {
            let aws = studio_aws::config::AwsConfig::from_lookup(|k| env.vars.get(k).cloned())
                .map_err(usage)?;
            // The platform's roots (the image's bundle), unlike the functions.
            let sdk = studio_aws::sdk_config(&aws.region).await;
            let ctx = studio_aws::lambda::context(&aws, &sdk, Arc::new(SystemClock));
            let artifacts = studio_aws::s3::S3Artifacts::from_sdk(&sdk, &aws.bucket);
            let mut cfg = cfg;
            cfg.inputs = Some(Arc::new(studio_aws::s3::S3Inputs::new(
                studio_aws::s3::client(&sdk),
            )));
            run_worker(&ctx, &artifacts, &cfg, rx).await?
        }
        #[cfg(not(feature = "ec2"))]
        "aws" => return Err(usage(crate::error::without_ec2("the EC2 worker"))),
        #[cfg(feature = "gcp")]
        "gce" => {
            let lookup = |k: &str| env.vars.get(k).cloned();
            let aws = studio_aws::config::AwsConfig::from_lookup(lookup).map_err(usage)?;
            let gcp = studio_gcp::GcpConfig::from_lookup(lookup, &aws.prefix)
                .map_err(usage)?
                .ok_or_else(|| usage("--backend gce: STUDIO_GCP_PROJECT is not set"))?;
            let role = lookup("AWS_ROLE_ARN")
                .ok_or_else(|| usage("--backend gce: AWS_ROLE_ARN (the GCE worker role) is not set"))?;
            let metadata = cfg_metadata_base(&cfg_meta_url);
            // AWS credentials from this machine's Google identity: no key.
            let identity = studio_aws::gce_identity::GceWebIdentity::new(
                &aws.region,
                metadata,
                lookup("STUDIO_GCP_AUDIENCE").unwrap_or_else(|| role.clone()),
                role,
                cfg.instance.to_string(),
            )
            .await;
            let sdk = studio_aws::gce_identity::sdk_config(&aws.region, identity).await;
            let ctx = studio_gcp::with_gcp(
                studio_aws::lambda::context(&aws, &sdk, Arc::new(SystemClock)),
                &gcp,
            )
            .await?;
            let artifacts = studio_gcp::gcs::GcsArtifacts::new(&gcp).await?;
            let mut cfg = cfg;
            cfg.inputs = Some(Arc::new(studio_aws::s3::S3Inputs::new(
                studio_aws::s3::client(&sdk),
            )));
            run_worker(&ctx, &artifacts, &cfg, rx).await?
        }
        #[cfg(not(feature = "gcp"))]
        "gce" => {
            return Err(usage(
                "the GCE worker needs the Compute and Pub/Sub clients, which this studio is built without: cargo install --path cli --features gcp",
            ))
        }
        other => return Err(usage(format!("--backend '{other}': use local, aws or gce"))),
    };
    tracing::info!(?exit, "worker leaving");
    Ok(match exit {
        WorkerExit::Idle | WorkerExit::Shutdown | WorkerExit::PoolGone | WorkerExit::Preempted => {
            ExitCode::SUCCESS
        }
    })
}

/// The GCE metadata server (a stand-in's in tests).
#[cfg(feature = "gcp")]
fn cfg_metadata_base(url: &Option<String>) -> String {
    url.clone()
        .unwrap_or_else(|| "http://metadata.google.internal".into())
}
