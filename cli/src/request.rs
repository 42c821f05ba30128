//! The request flags (`--cpus`, `--ram`, `--bid`, ...) shared by `run`,
//! `plan` and `submit`, turned into a `SubmitJob` and its packed workspace.

use crate::context::Env;
use crate::context::Globals;
use crate::error::{usage, CliError};
use crate::outputs::PULL_DIR;
use clap::Args;
use std::path::{Path, PathBuf};
use studio_core::catalog::{Arch, Catalog, SpotPrices};
use studio_core::contract::SubmitJob;
use studio_core::plan::CatalogPlanner;
use studio_core::resources::{Bid, Cloud, Machine, ResourceRequest, WorkerPolicy};

/// What the job asks for: shared by `run` and `plan`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// Where to run: local, ec2, ec2spot, gcloud, gcspot (plan: also all).
    #[arg(long, default_value = "local")]
    pub cloud: String,
    /// vCPUs per worker (default: 1; on local, the whole machine).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// GPUs per worker.
    #[arg(long, default_value = "0", value_name = "N")]
    pub gpus: String,
    /// RAM per worker, e.g. 16g (binary units; rounded up to 256 MiB).
    #[arg(long, value_name = "SIZE")]
    pub ram: Option<String>,
    /// Root disk per worker, e.g. 100g.
    #[arg(long, value_name = "SIZE")]
    pub hdd: Option<String>,
    /// Keep exactly N workers (default: start with one, add while work waits).
    #[arg(long, value_name = "N")]
    pub num_workers: Option<String>,
    /// Spot bid: USD per hour (0.35) or share of on-demand (60%).
    #[arg(long, value_name = "PRICE")]
    pub bid: Option<String>,
    /// CPU architecture: x86_64 (default) or arm64.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Pin a GPU model: T4, A10G, L4, L40S, A100, H100 (EC2); T4, P4, V100, P100 (GCE).
    #[arg(long, value_name = "MODEL")]
    pub gpu_type: Option<String>,
    /// Region (default: the catalogue's, us-east-1; us-central1 on GCE).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

/// Largest workspace the CLI uploads.
const WORKSPACE_LIMIT: u64 = 256 << 20;

fn parse_count(flag: &str, v: &str, min: u32) -> Result<u32, CliError> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= min as i64 && n <= u32::MAX as i64 => Ok(n as u32),
        Ok(_) => Err(usage(format!("--{flag} must be at least {min}, got {v}"))),
        Err(_) => Err(usage(format!("--{flag} '{v}' is not a whole number"))),
    }
}

/// The request flags as a `SubmitJob` (workspace and entrypoint still empty).
pub(crate) fn parse_request(r: &RequestArgs, owner: &str) -> Result<SubmitJob, CliError> {
    let cloud: Cloud = r.cloud.parse().map_err(usage)?;
    // A local job without --cpus may use the machine (it is held to what
    // it asks for: `studio_core::worker` pins it).
    let cpus = match (&r.cpus, cloud) {
        (Some(v), _) => parse_count("cpus", v, 1)?,
        (None, Cloud::Local) => Machine::this().cpus,
        (None, _) => 1,
    };
    let gpus = parse_count("gpus", &r.gpus, 0)?;
    let resources =
        ResourceRequest::parse(cpus, gpus, r.ram.as_deref(), r.hdd.as_deref()).map_err(usage)?;
    let num_workers = r
        .num_workers
        .as_deref()
        .map(|n| parse_count("num-workers", n, 1))
        .transpose()?;
    WorkerPolicy::from_flag(num_workers).map_err(usage)?;
    let bid = r
        .bid
        .as_deref()
        .map(str::parse::<Bid>)
        .transpose()
        .map_err(usage)?;
    let arch = r
        .arch
        .as_deref()
        .map(str::parse::<Arch>)
        .transpose()
        .map_err(|e| usage(format!("--arch: {e}")))?;
    Ok(SubmitJob {
        bid,
        region: r.region.clone(),
        arch,
        gpu_type: r.gpu_type.clone(),
        num_workers,
        ..SubmitJob::new(cloud, resources, owner)
    })
}

/// `--input s3://bucket/prefix[:path]`: the last `:` after the scheme
/// starts the path; without one, the path is the prefix's last part (or
/// the bucket's name).
pub(crate) fn parse_input(v: &str) -> Result<studio_core::contract::Input, CliError> {
    let bad = |why: &str| {
        usage(format!(
            "--input '{v}': {why} (e.g. --input s3://my-bucket/datasets/imagenet:data/)"
        ))
    };
    let Some(rest) = v.strip_prefix("s3://") else {
        return Err(bad("only s3:// URLs are supported"));
    };
    let (url, path) = match rest.rsplit_once(':') {
        Some((u, p)) => (format!("s3://{u}"), p.trim_end_matches('/').to_string()),
        None => {
            let last = rest
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(rest)
                .to_string();
            (format!("s3://{rest}"), last)
        }
    };
    if studio_core::contract::parse_s3_url(&url).is_none() {
        return Err(bad("not s3://BUCKET/PREFIX with a valid bucket name"));
    }
    Ok(studio_core::contract::Input { url, path })
}

/// `--max-cost 2.50` (USD) in cents: at least one cent, at most two decimals.
pub(crate) fn parse_usd_cents(v: &str) -> Result<u64, CliError> {
    let bad = || {
        usage(format!(
            "--max-cost '{v}' must be an amount of USD of at least 0.01, e.g. 2.50"
        ))
    };
    let t = v.trim().trim_start_matches('$');
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || whole.len() > 9
    {
        return Err(bad());
    }
    let cents =
        whole.parse::<u64>().unwrap_or(0) * 100 + format!("{frac:0<2}").parse::<u64>().unwrap_or(0);
    if cents == 0 {
        return Err(bad());
    }
    Ok(cents)
}

/// The catalogue planner. A catalogue refreshed into `$STUDIO_HOME/catalog/`
/// for the region wins over the one shipped in the binary.
pub(crate) fn planner(
    home: &Path,
    region: Option<&str>,
    prices: Option<&SpotPrices>,
) -> Result<CatalogPlanner, CliError> {
    let mut p = CatalogPlanner::shipped();
    let region = region.unwrap_or(&p.ec2.region);
    let file = home.join("catalog").join(format!("ec2-{region}.json"));
    if file.exists() {
        let text = std::fs::read_to_string(&file)?;
        let cat =
            Catalog::from_json(&text).map_err(|e| usage(format!("{}: {e}", file.display())))?;
        p.ec2 = std::sync::Arc::new(cat);
    }
    if let Some(prices) = prices {
        p.ec2 = std::sync::Arc::new(p.ec2.with_spot_prices(prices));
    }
    Ok(p)
}

/// The spot prices the AWS deployment keeps (its scale function reads the
/// market hourly), for planning an `ec2spot` request as submit will; `None`
/// without a deployment, for another cloud, or when they cannot be read
/// (said on stderr: the plan then ranks by on-demand price).
pub(crate) async fn deployment_prices(home: &Path, env: &Env, cloud: Cloud) -> Option<SpotPrices> {
    if cloud != Cloud::Ec2spot {
        return None;
    }
    let cfg = crate::backend::aws_settings(home, env).ok()??;
    let sdk = studio_aws::sdk_config(&cfg.region).await;
    let s3 = studio_aws::s3::client(&sdk);
    let read = studio_aws::prices::load(&s3, &cfg.bucket, &cfg.region);
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            eprintln!("studio: warning: the deployment's spot prices are unreadable ({e}): ranked by on-demand price");
            None
        }
        Err(_) => {
            eprintln!("studio: warning: the deployment's spot prices did not come within 10 s: ranked by on-demand price");
            None
        }
    }
}

/// The workspace tarball of `dir`, Studio's own state left out (the default
/// `~/.studio` with a script in `~`: the database, logs and earlier
/// workspaces would grow every run's tarball).
/// Packs `dir`, leaving out Studio's home and the outputs earlier runs
/// pulled (`./studio-out`) where they lie inside it.
pub(crate) fn pack_workspace(g: &Globals, dir: &Path) -> Result<Vec<u8>, CliError> {
    let home = g.home.canonicalize().unwrap_or_else(|_| g.home.clone());
    let pulled = std::env::current_dir()
        .map(|d| d.join(PULL_DIR))
        .unwrap_or_else(|_| PathBuf::from(PULL_DIR));
    let pulled = pulled.canonicalize().unwrap_or(pulled);
    studio_core::workspace::pack_dir_except(dir, WORKSPACE_LIMIT, &[&home, &pulled]).map_err(usage)
}
