//! What each subcommand does.

use crate::args::{
    CancelArgs, CatalogCommand, Cli, Command, CostArgs, CostBy, DoctorArgs, GcArgs, InitArgs,
    LogsArgs, Output, PlanArgs, PullArgs, RefreshArgs, RequestArgs, RunArgs, StatusArgs,
    SubmitArgs, UiArgs, WorkerArgs,
};
use anyhow::Context as _;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;
use studio_core::catalog::{Arch, Catalog};
use studio_core::clock::{format_age, Clock, SystemClock};
use studio_core::contract::SubmitJob;
use studio_core::handlers::{self, CancelOutcome, Settings};
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::{usd, Job, JobState};
use studio_core::notice::{Ec2Metadata, GceMetadata, NoNotice};
use studio_core::plan::{CatalogPlanner, Planner};
use studio_core::pool::PoolSpec;
use studio_core::ports::{ArtifactStore, Created, JobStore, WorkQueue};
use studio_core::resources::{Bid, Cloud, Market, ResourceRequest, WorkerPolicy};
use studio_core::size::format_mib;
use studio_core::worker::{run_worker, Cadence, WorkerConfig, WorkerExit};
use studio_local::LocalBackend;

use crate::sides::{self, Side};
use crate::{term, ui};
use studio_core::ports::{merge_pages, JobQuery};
use studio_core::progress;

/// Largest workspace the CLI uploads.
const WORKSPACE_LIMIT: u64 = 256 << 20;
/// How often a waiting `run` looks at the job.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How often a waiting `run` makes sure a driver is there.
const DRIVER_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the driver runs the handlers while there is work.
const DRIVE_EVERY: Duration = Duration::from_millis(250);

pub enum CliError {
    /// The user's input is wrong: one line, exit code 2.
    Usage(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Other(e.into())
    }
}

pub fn usage(msg: impl std::fmt::Display) -> CliError {
    CliError::Usage(msg.to_string())
}

impl CliError {
    /// The one line a user reads.
    pub fn message(&self) -> String {
        match self {
            CliError::Usage(m) => m.clone(),
            CliError::Other(e) => format!("{e:#}"),
        }
    }
}

/// What `main` read from the process environment.
pub struct Env {
    pub user: String,
    pub cores: u32,
    pub default_home: Option<PathBuf>,
    pub lock_fd: Option<i32>,
    /// The `STUDIO_*` and `AWS_*` environment variables.
    pub vars: std::collections::HashMap<String, String>,
}

struct Globals {
    home: PathBuf,
    settings: Settings,
    exe: PathBuf,
    /// The global flags as given, handed on to a driver this command starts.
    pool_grace: String,
    max_workers: Option<u32>,
    max_attempts: u32,
}

pub async fn dispatch(cli: Cli, env: Env) -> Result<ExitCode, CliError> {
    let home = cli
        .home
        .clone()
        .or(env.default_home.clone())
        .ok_or_else(|| usage("no home directory: set STUDIO_HOME or HOME"))?;
    // Absolute from here on: workers and scripts run in other directories,
    // and every path handed to them (checkpoints, logs) must still point here.
    let home = std::path::absolute(&home)
        .map_err(|e| usage(format!("STUDIO_HOME '{}': {e}", home.display())))?;
    let pool_grace = humantime::parse_duration(&cli.pool_grace)
        .map_err(|e| usage(format!("STUDIO_POOL_GRACE '{}': {e}", cli.pool_grace)))?;
    // The bound on a worker's heartbeat: workers (started with this same
    // environment) write theirs every quarter of it.
    let heartbeat_timeout = match env.vars.get("STUDIO_LEASE") {
        Some(v) => {
            humantime::parse_duration(v).map_err(|e| usage(format!("STUDIO_LEASE '{v}': {e}")))?
        }
        None => Settings::default().heartbeat_timeout,
    };
    let settings = Settings {
        pool_grace,
        max_attempts: cli.max_attempts.max(1),
        max_auto_workers: cli.max_workers.unwrap_or(env.cores).max(1),
        heartbeat_timeout,
        // The chart of `studio ui`: a record write is a file write here.
        pool_sample_every: Duration::from_secs(5),
        ..Settings::default()
    };
    let g = Globals {
        home,
        settings,
        exe: std::env::current_exe().context("locating the studio binary")?,
        pool_grace: cli.pool_grace.clone(),
        max_workers: cli.max_workers,
        max_attempts: cli.max_attempts,
    };
    match cli.command {
        Command::Run(a) => run(&g, &env, a).await,
        Command::Submit(a) => submit(&g, &env, a).await,
        Command::Status(a) => status(&g, &env, a).await,
        Command::Logs(a) => logs(&g, &env, a).await,
        Command::Cancel(a) => cancel(&g, &env, a).await,
        Command::Gc(a) => gc(&g, a).await,
        Command::Pull(a) => pull(&g, &env, a).await,
        Command::Cost(a) => cost(&g, &env, a).await,
        Command::Worker(a) => worker(&g, &env, a).await,
        Command::Driver => driver(&g).await,
        Command::Plan(a) => plan(&g, a, &env).await,
        Command::Catalog(CatalogCommand::Refresh(a)) => catalog_refresh(&g, a).await,
        Command::Init(a) => init(&g, a).await,
        Command::Doctor(a) => doctor(&g, &env, a).await,
        Command::Ui(a) => serve_ui(&g, &env, a).await,
    }
}

async fn open(g: &Globals) -> Result<LocalBackend, CliError> {
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

fn parse_count(flag: &str, v: &str, min: u32) -> Result<u32, CliError> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= min as i64 && n <= u32::MAX as i64 => Ok(n as u32),
        Ok(_) => Err(usage(format!("--{flag} must be at least {min}, got {v}"))),
        Err(_) => Err(usage(format!("--{flag} '{v}' is not a whole number"))),
    }
}

/// The request flags as a `SubmitJob` (workspace and entrypoint still empty).
fn parse_request(r: &RequestArgs, owner: &str) -> Result<SubmitJob, CliError> {
    let cloud: Cloud = r.cloud.parse().map_err(usage)?;
    let cpus = parse_count("cpus", &r.cpus, 1)?;
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

/// Everything about a run that can be checked before anything is written.
///
/// `local_cap` bounds `--num-workers` on the local cloud (the cloud
/// deployments refuse a size above their own cap at submit).
fn validate_run(
    a: &RunArgs,
    owner: &str,
    home: &Path,
    local_cap: u32,
) -> Result<(SubmitJob, PathBuf), CliError> {
    let Some((script, script_args)) = a.command.split_first() else {
        return Err(usage(
            "missing script: studio run [flags] script.py [script args...]",
        ));
    };
    if script.starts_with('-') {
        return Err(usage(format!(
            "unknown flag '{script}': Studio's flags go before the script, the script's after it"
        )));
    }
    let path = Path::new(script);
    if !path.is_file() {
        return Err(usage(format!("script '{script}' not found")));
    }
    let path = path
        .canonicalize()
        .map_err(|e| usage(format!("script '{script}': {e}")))?;
    let dir = match &a.workspace {
        None => path.parent().expect("a file has a parent").to_path_buf(),
        Some(w) => w
            .canonicalize()
            .map_err(|e| usage(format!("--workspace '{}': {e}", w.display())))?,
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "--workspace '{}' is not a directory",
            dir.display()
        )));
    }
    let mut spec = parse_request(&a.request, owner)?;
    spec.entrypoint = path
        .strip_prefix(&dir)
        .map_err(|_| {
            usage(format!(
                "script '{script}' is not inside the workspace {}",
                dir.display()
            ))
        })?
        .to_str()
        .ok_or_else(|| usage(format!("script '{script}' has no usable name")))?
        .to_string();
    spec.args = script_args.to_vec();
    spec.fallback_on_demand = a.fallback_on_demand;
    spec.outputs = a.outputs.clone();
    spec.inputs = a
        .inputs
        .iter()
        .map(|i| parse_input(i))
        .collect::<Result<_, _>>()?;
    spec.max_cost_cents = a.max_cost.as_deref().map(parse_usd_cents).transpose()?;
    spec.settle_version();
    spec.job_id = a
        .job_id
        .as_deref()
        .map(JobId::new)
        .transpose()
        .map_err(|e| usage(format!("--job-id: {e}")))?;
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--env '{kv}' must be NAME=VALUE")))?;
        spec.env.insert(k.to_string(), v.to_string());
    }
    spec.max_duration_secs = a
        .max_duration
        .as_deref()
        .map(|d| {
            humantime::parse_duration(d)
                .map_err(|e| usage(format!("--max-duration '{d}': {e} (e.g. 2h30m)")))
                .map(|d| d.as_secs().max(1))
        })
        .transpose()?;
    spec.lifetime_secs = a
        .lifetime
        .as_deref()
        .map(|d| {
            humantime::parse_duration(d)
                .map_err(|e| usage(format!("--lifetime '{d}': {e} (e.g. 6h)")))
                .map(|d| d.as_secs().max(1))
        })
        .transpose()?;
    spec.validate().map_err(usage)?;
    if let Some(n) = spec
        .num_workers
        .filter(|n| spec.cloud == Cloud::Local && *n > local_cap)
    {
        return Err(usage(format!(
            "--num-workers {n} is above this machine's cap of {local_cap} workers (STUDIO_MAX_WORKERS, default: the number of cores)"
        )));
    }
    // Plan against the catalogue (a request nothing fits is refused whatever
    // the backend); `run` then picks the backend that runs the cloud.
    let plan = planner(home, spec.region.as_deref())?
        .plan(&spec)
        .map_err(usage)?;
    for w in &plan.warnings {
        eprintln!("studio: warning: {w}");
    }
    Ok((spec, dir))
}

/// `--input s3://bucket/prefix[:path]`: the last `:` after the scheme
/// starts the path; without one, the path is the prefix's last part (or
/// the bucket's name).
fn parse_input(v: &str) -> Result<studio_core::contract::Input, CliError> {
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
fn parse_usd_cents(v: &str) -> Result<u64, CliError> {
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
fn planner(home: &Path, region: Option<&str>) -> Result<CatalogPlanner, CliError> {
    let mut p = CatalogPlanner::shipped();
    let region = region.unwrap_or(&p.ec2.region);
    let file = home.join("catalog").join(format!("ec2-{region}.json"));
    if file.exists() {
        let text = std::fs::read_to_string(&file)?;
        let cat =
            Catalog::from_json(&text).map_err(|e| usage(format!("{}: {e}", file.display())))?;
        // One catalogue per process, kept for its lifetime.
        p.ec2 = Box::leak(Box::new(cat));
    }
    Ok(p)
}

async fn plan(g: &Globals, a: PlanArgs, env: &Env) -> Result<ExitCode, CliError> {
    let mut spec = parse_request(&a.request, &env.user)?;
    spec.entrypoint = "plan.py".into();
    spec.validate().map_err(usage)?;
    let plan = planner(&g.home, spec.region.as_deref())?
        .plan(&spec)
        .map_err(usage)?;
    let pool = PoolSpec::for_job(&spec, &plan).key();
    if a.output == Output::Json {
        let mut v = serde_json::to_value(&plan)?;
        v["pool"] = serde_json::Value::String(pool.to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let usd = |m: u64| format!("${:.4}/h", m as f64 / 1e6);
    let region = plan
        .region
        .as_deref()
        .map_or(String::new(), |r| format!(", {r}"));
    println!("cloud      {} ({}{region})", plan.cloud, plan.market);
    let mut shape = format!("{} vCPU, {}", plan.vcpus, format_mib(plan.memory_mib));
    if plan.gpus > 0 {
        shape.push_str(&format!(
            ", {}× {}",
            plan.gpus,
            plan.gpu_model.as_deref().unwrap_or("GPU")
        ));
    }
    println!("machine    {} ({shape})", plan.machine);
    let kind = match (
        plan.market,
        plan.candidates.first().map(|c| c.spot_price_known),
    ) {
        (Market::Spot, Some(true)) => "spot",
        (Market::Spot, _) => "on-demand price; spot price unknown",
        (Market::Local, _) => "local",
        _ => "on-demand",
    };
    println!("price      {} ({kind})", usd(plan.price_micro_usd_per_hour));
    if let Some(bid) = spec.bid {
        let cap = plan
            .max_price_micro_usd_per_hour
            .map_or("ignored".to_string(), |m| format!("max {}", usd(m)));
        println!("bid        {bid} → {cap}");
    }
    if plan.machine_types.len() > 1 {
        let list: Vec<String> = plan
            .candidates
            .iter()
            .map(|c| format!("{} {}", c.machine, usd(c.price_micro_usd_per_hour)))
            .collect();
        println!("types      {}", list.join(", "));
    }
    if let Some(m) = &plan.on_host_maintenance {
        println!("host       on-host maintenance {m} (GPU machines cannot live-migrate)");
    }
    println!("pool       {pool}");
    for c in &plan.changes {
        println!("changed    {c}");
    }
    for w in &plan.warnings {
        println!("warning    {w}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(g: &Globals, env: &Env, a: RunArgs) -> Result<ExitCode, CliError> {
    let (mut spec, dir) = validate_run(&a, &env.user, &g.home, g.settings.max_auto_workers)?;
    if a.dry_run {
        // What would be sent: the workspace packed (for its reference) but
        // not uploaded, no job id assigned unless given, nothing created.
        let tarball = pack_workspace(g, &dir)?;
        spec.workspace = studio_core::contract::WorkspaceRef {
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tarball)),
            bytes: tarball.len() as u64,
        };
        if a.format == Some(Output::Table) {
            println!("{}", spec.to_json());
        } else {
            println!("{}", serde_json::to_string_pretty(&spec)?);
        }
        eprintln!("studio: dry run: nothing uploaded or sent (`studio submit --file` takes this with \"workspace\": \"DIR\" to upload the directory)");
        return Ok(ExitCode::SUCCESS);
    }
    if a.format.is_some() {
        return Err(usage("--format goes with --dry-run"));
    }
    let side = side_for(g, env, spec.cloud).await?;
    let tarball = pack_workspace(g, &dir)?;
    spec.workspace = side.artifacts().put_workspace(&tarball).await?;
    let id = send(g, env, &side, &mut spec).await?;
    if a.detach {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("studio: job {id} submitted ({} cloud)", spec.cloud);
    let job = follow(g, &side, &id).await?;
    if let Some(j) = job.as_ref().filter(|_| !a.no_pull) {
        if j.attempts.iter().any(|a| a.outputs.is_some()) {
            let dest = PathBuf::from(PULL_DIR).join(id.as_str());
            if let Err(e) = pull_outputs(&side, j, None, &dest, false).await {
                eprintln!("studio: outputs not downloaded: {}", e.message());
            }
        }
        let spent = j.cost_micro_usd(SystemClock.now());
        if spent > 0 {
            eprintln!("studio: job {id} cost {}", usd(spent));
        }
    }
    Ok(report_end(&job))
}

/// `studio pull JOB [DEST] [--attempt N]`.
async fn pull(g: &Globals, env: &Env, a: PullArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, job) = find_job(g, env, &id).await?;
    let dest = a
        .dest
        .unwrap_or_else(|| PathBuf::from(PULL_DIR).join(id.as_str()));
    pull_outputs(&side, &job, a.attempt, &dest, true).await?;
    Ok(ExitCode::SUCCESS)
}

/// Downloads an attempt's outputs into `dest` (checked, unchanged files
/// kept), with a progress line on a terminal, and says what it wrote: each
/// file on stdout when `list` (`studio pull`), else only the summary (a
/// waiting `run`, whose stdout is the script's).
async fn pull_outputs(
    side: &Side,
    job: &Job,
    attempt: Option<u32>,
    dest: &Path,
    list: bool,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let chosen = match attempt {
        Some(n) => {
            let Some(a) = job.attempts.iter().find(|a| a.number == n) else {
                return Err(usage(format!("job {} has no attempt {n}", job.id)));
            };
            match &a.outputs {
                Some(o) => (n, o.clone()),
                None => {
                    return Err(usage(format!(
                        "attempt {n} of job {} left no outputs{}",
                        job.id,
                        if a.script_ended_at.is_none() { " (yet)" } else { "" }
                    )))
                }
            }
        }
        None => match job.attempts.iter().rev().find_map(|a| a.outputs.clone().map(|o| (a.number, o))) {
            Some(c) => c,
            None => {
                return Err(usage(format!(
                    "job {} has no outputs{}: a script writes them to $STUDIO_OUTPUT_DIR (or names them with --output)",
                    job.id,
                    if job.state.is_terminal() { "" } else { " yet" }
                )))
            }
        },
    };
    let (n, r) = chosen;
    let m = studio_core::outputs_store::manifest(side.artifacts(), &job.id, &r, &std::env::temp_dir())
        .await?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0u64;
    let mut count = 0usize;
    let files = m.files.len();
    let mut progress = |p: &studio_core::outputs_store::Pulled| {
        use studio_core::outputs_store::Pulled;
        let size = match p {
            Pulled::Wrote { size, .. } | Pulled::Kept { size, .. } => *size,
        };
        done += size;
        count += 1;
        if tty {
            let width = 30usize;
            let filled = (done * width as u64)
                .checked_div(total)
                .unwrap_or(width as u64) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {count}/{files} files, {} of {}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                format_bytes(done),
                format_bytes(total)
            );
        }
    };
    let pulled = studio_core::outputs_store::pull(side.artifacts(), &job.id, &m, dest, &mut progress)
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!("pulling outputs of {}: {e}", job.id)))?;
    if tty {
        eprintln!();
    }
    let (mut wrote, mut kept, mut bytes) = (0, 0, 0u64);
    for p in &pulled {
        match p {
            studio_core::outputs_store::Pulled::Wrote { path, size } => {
                wrote += 1;
                bytes += size;
                if list {
                    println!("{}", dest.join(path).display());
                }
            }
            studio_core::outputs_store::Pulled::Kept { .. } => kept += 1,
        }
    }
    eprintln!(
        "studio: outputs of job {} attempt {n} in {}: {wrote} written ({}), {kept} already there",
        job.id,
        dest.display(),
        format_bytes(bytes)
    );
    Ok(())
}

/// Bytes for people: `812 B`, `3.4 MiB`, `1.2 GiB`.
fn format_bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
    }
}

/// `studio cost [--since 7d] [--by pool|owner|cloud]`.
async fn cost(g: &Globals, env: &Env, a: CostArgs) -> Result<ExitCode, CliError> {
    let now = SystemClock.now();
    let since = a
        .since
        .as_deref()
        .map(|d| {
            humantime::parse_duration(d).map_err(|e| usage(format!("--since '{d}': {e} (e.g. 7d)")))
        })
        .transpose()?;
    let mut jobs = all_jobs(
        local_if_exists(g).await?.as_ref(),
        sides::aws(&g.home, env).await?.as_ref(),
    )
    .await?;
    if let Some(d) = since {
        let from = studio_core::clock::Timestamp(now.0 - d.as_millis() as i64);
        jobs.retain(|j| j.created_at >= from);
    }
    let rows = studio_core::job::cost_by(
        &jobs,
        |j| match a.by {
            None => "total".to_string(),
            Some(CostBy::Pool) => j.pool.to_string(),
            Some(CostBy::Owner) => j.spec.owner.clone(),
            Some(CostBy::Cloud) => j.spec.cloud.to_string(),
        },
        now,
    );
    if a.output == Output::Json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(k, n, c)| serde_json::json!({"key": k, "jobs": n, "cost_usd": *c as f64 / 1e6}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let head = match a.by {
        None => "",
        Some(CostBy::Pool) => "POOL",
        Some(CostBy::Owner) => "OWNER",
        Some(CostBy::Cloud) => "CLOUD",
    };
    let mut table = vec![vec![head.to_string(), "JOBS".into(), "COST".into()]];
    for (k, n, c) in &rows {
        table.push(vec![k.clone(), n.to_string(), usd(*c)]);
    }
    if rows.is_empty() {
        println!("no jobs");
    } else {
        print_table(&table);
    }
    Ok(ExitCode::SUCCESS)
}

/// `studio submit --file F`: a prepared SubmitJob, validated as every entry
/// point validates it, its workspace directory (if it names one) packed and
/// uploaded, sent; prints the job id.
async fn submit(g: &Globals, env: &Env, a: SubmitArgs) -> Result<ExitCode, CliError> {
    let (text, base) = if a.file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        (t, std::env::current_dir()?)
    } else {
        let t = std::fs::read_to_string(&a.file)
            .map_err(|e| usage(format!("--file {}: {e}", a.file.display())))?;
        let dir = a
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(std::env::current_dir, |d| Ok(d.to_path_buf()))?;
        (t, dir)
    };
    let what = a.file.display().to_string();
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("{what}: not JSON: {e}")))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(usage(format!("{what}: a SubmitJob is a JSON object")));
    };
    // The owner is who submits, unless the file says.
    fields
        .entry("owner")
        .or_insert_with(|| serde_json::Value::String(env.user.clone()));
    // A directory to upload: packed now, sent as its reference.
    let dir = match fields.get("workspace") {
        Some(serde_json::Value::String(d)) => {
            let dir = base.join(d);
            if !dir.is_dir() {
                return Err(usage(format!(
                    "{what}: workspace '{d}' is not a directory (relative to {})",
                    base.display()
                )));
            }
            fields.insert(
                "workspace".into(),
                serde_json::json!({"sha256": "0".repeat(64), "bytes": 0}),
            );
            Some(dir)
        }
        _ => None,
    };
    let mut spec =
        SubmitJob::from_json(&value.to_string()).map_err(|e| usage(format!("{what}: {e}")))?;
    planner(&g.home, spec.region.as_deref())?
        .plan(&spec)
        .map_err(|e| usage(format!("{what}: {e}")))?;
    if spec.cloud == Cloud::Local {
        if let Some(asked) = spec
            .num_workers
            .filter(|n| *n > g.settings.max_auto_workers)
        {
            return Err(usage(format!(
                "{what}: num_workers {asked} is above this machine's cap of {} (STUDIO_MAX_WORKERS)",
                g.settings.max_auto_workers
            )));
        }
    }
    let side = side_for(g, env, spec.cloud).await?;
    if let Some(dir) = dir {
        let tarball = pack_workspace(g, &dir.canonicalize()?)?;
        spec.workspace = side.artifacts().put_workspace(&tarball).await?;
    }
    let id = send(g, env, &side, &mut spec).await?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// The workspace tarball of `dir`, Studio's own state left out (the default
/// `~/.studio` with a script in `~`: the database, logs and earlier
/// workspaces would grow every run's tarball).
/// Packs `dir`, leaving out Studio's home and the outputs earlier runs
/// pulled (`./studio-out`) where they lie inside it.
fn pack_workspace(g: &Globals, dir: &Path) -> Result<Vec<u8>, CliError> {
    let home = g.home.canonicalize().unwrap_or_else(|_| g.home.clone());
    let pulled = std::env::current_dir()
        .map(|d| d.join(PULL_DIR))
        .unwrap_or_else(|_| PathBuf::from(PULL_DIR));
    let pulled = pulled.canonicalize().unwrap_or(pulled);
    studio_core::workspace::pack_dir_except(dir, WORKSPACE_LIMIT, &[&home, &pulled]).map_err(usage)
}

/// Where `studio run` and `studio pull` put outputs, under the current directory.
const PULL_DIR: &str = "studio-out";

/// Where jobs of `cloud` go.
async fn side_for(g: &Globals, env: &Env, cloud: Cloud) -> Result<Side, CliError> {
    Ok(match cloud {
        Cloud::Local => Side::Local(Box::new(open(g).await?)),
        Cloud::Ec2 | Cloud::Ec2spot | Cloud::Gcloud | Cloud::Gcspot => {
            match sides::aws(&g.home, env).await? {
                // One control plane: GCE jobs go through the same submit
                // queue; only their files go to GCS.
                Some(aws) if matches!(cloud, Cloud::Gcloud | Cloud::Gcspot) => {
                    Side::Gcp(Box::new(aws), Box::new(sides::gcs(&g.home, env).await?))
                }
                Some(aws) => Side::Aws(Box::new(aws)),
                None => {
                    return Err(usage(format!(
                    "cloud '{}' needs the AWS settings: set {} (or [aws] in {}); see the README",
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
async fn send(
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

fn report_end(job: &Option<Job>) -> ExitCode {
    let Some(job) = job else {
        return ExitCode::from(130);
    };
    match job.state {
        JobState::Finished => ExitCode::SUCCESS,
        JobState::Failed => {
            eprintln!(
                "studio: job {} failed: {}",
                job.id,
                job.reason.as_deref().unwrap_or("no reason recorded")
            );
            ExitCode::from(1)
        }
        JobState::Cancelled => {
            eprintln!("studio: job {} was cancelled", job.id);
            ExitCode::from(3)
        }
        _ => ExitCode::from(1),
    }
}

/// Prints state changes (stderr) and the job's output (stdout) until the job
/// ends and, on the local backend, until its script has really stopped (a
/// cancelled script prints during its SIGTERM grace). It only reads: the
/// driver does the work, so a follower that is stopped, blocked on a full
/// pipe or killed holds nothing back. Returns `None` when interrupted with
/// Ctrl-C (the job goes on).
async fn follow(g: &Globals, side: &Side, id: &JobId) -> Result<Option<Job>, CliError> {
    let local = match side {
        Side::Local(be) => Some(be.as_ref()),
        Side::Aws(_) | Side::Gcp(..) => None,
    };
    let every = if local.is_some() {
        FOLLOW_EVERY
    } else {
        Duration::from_secs(1)
    };
    let mut offset = 0u64;
    let mut seen = 0usize;
    let mut bar = ProgressLine::new();
    let mut tstp = if bar.on {
        Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::from_raw(libc::SIGTSTP),
        )?)
    } else {
        None
    };
    let mut waited = Duration::ZERO;
    let mut driver_checked = tokio::time::Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        // A driver that died (killed, OOM) is replaced while we wait.
        if let Some(be) = local.filter(|_| driver_checked.elapsed() >= DRIVER_CHECK_EVERY) {
            driver_checked = tokio::time::Instant::now();
            replace_dead_driver(g, be).await?;
        }
        let job = side.store().get_job(id).await?;
        let bytes = side.artifacts().read_log(id, offset).await?;
        let news = job.as_ref().is_some_and(|j| j.events.len() > seen);
        if !bytes.is_empty() || news {
            bar.clear();
        }
        offset += write_out(&bytes)?;
        bar.after_output(&bytes);
        match job {
            Some(job) => {
                for e in job.events.iter().skip(seen) {
                    eprintln!("studio: {} {} ({}, by {})", job.id, e.to, e.reason, e.by);
                }
                seen = job.events.len();
                if job.state.is_terminal() {
                    bar.clear();
                    break Some(job);
                }
                bar.show(job.progress);
            }
            None if waited > Duration::from_secs(5) => {
                if let Some(why) = local
                    .map(|be| rejected_reason(g, be, id))
                    .transpose()?
                    .flatten()
                {
                    return Err(CliError::Other(anyhow::anyhow!(
                        "job {id} was rejected: {why}"
                    )));
                }
            }
            None => {}
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                bar.clear();
                eprintln!("studio: stopped following; job {id} goes on (studio logs -f {id}, studio cancel {id})");
                break None;
            }
            _ = tokio::time::sleep(every) => waited += every,
            // Ctrl-Z with the bar up: take it down first, as a stopped job's
            // line should not keep a bar; it comes back on `fg`.
            _ = async { tstp.as_mut().expect("only with a bar").recv().await }, if tstp.is_some() => {
                bar.clear();
                term::stop_self();
            }
        }
    };
    if let Some(job) = &result {
        tail_until_script_ends(side, job, offset).await?;
    }
    Ok(result)
}

/// Longest a cancelled script is waited for: the worker's SIGTERM grace
/// (10 s), the second it takes to notice the cancel, the last log upload
/// (a file append locally, an S3 object in the cloud) and a margin.
const SCRIPT_END_LIMIT: Duration = Duration::from_secs(20);

/// After the job's end is recorded, prints what its script still writes
/// until the script has stopped and its last output is in the log. A job
/// that ended by its script's own exit is already complete; a cancelled one
/// may still be in its SIGTERM grace.
///
/// The worker records on the attempt when the script's processes are gone
/// and its last output is in the log (`script_ended_at`), on every backend;
/// a worker that died never does, so the wait is bounded.
async fn tail_until_script_ends(side: &Side, job: &Job, mut offset: u64) -> Result<(), CliError> {
    let attempt = job
        .attempts
        .last()
        .filter(|a| job.state == JobState::Cancelled && a.script_ended_at.is_none())
        .map(|a| a.number);
    if let Some(n) = attempt {
        let deadline = tokio::time::Instant::now() + SCRIPT_END_LIMIT;
        while tokio::time::Instant::now() < deadline {
            offset += print_log(side.artifacts(), &job.id, offset).await?;
            let ended = side.store().get_job(&job.id).await?.is_none_or(|j| {
                j.attempts
                    .iter()
                    .any(|a| a.number == n && a.script_ended_at.is_some())
            });
            if ended {
                break;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
    print_log(side.artifacts(), &job.id, offset).await?;
    Ok(())
}

fn rejected_reason(g: &Globals, be: &LocalBackend, id: &JobId) -> Result<Option<String>, CliError> {
    let dlq = studio_local::queue::dlq_name(&g.settings.submit_queue);
    let needle = format!("\"job_id\":\"{id}\"");
    Ok(be
        .queue
        .peek(&dlq)?
        .into_iter()
        .find(|(body, _)| body.contains(&needle))
        .map(|(_, note)| note.unwrap_or_else(|| "dead-lettered".into())))
}

async fn print_log(
    artifacts: &dyn ArtifactStore,
    id: &JobId,
    offset: u64,
) -> Result<u64, CliError> {
    write_out(&artifacts.read_log(id, offset).await?)
}

/// Writes output bytes to stdout; how many.
fn write_out(bytes: &[u8]) -> Result<u64, CliError> {
    if !bytes.is_empty() {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
    }
    Ok(bytes.len() as u64)
}

/// The progress bar a waiting `run` keeps under the script's output, on
/// the terminal's last line (stderr, so stdout never gets it).
/// It is cleared before anything else is written there, and drawn again
/// only where a line starts, so it never splits the script's output.
struct ProgressLine {
    on: bool,
    shown: Option<f32>,
    /// Whether the script's output ends at a line's start (stdout on the
    /// same terminal), so the bar can go below it.
    at_line_start: bool,
    stdout_tty: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        use std::io::IsTerminal;
        // Into a pipe, what reads it (`| tee log`) may print on this same
        // terminal at any moment, in the middle of the bar: no bar then.
        // A file or a terminal is fine.
        let stdout_pipe = {
            // SAFETY: fstat on fd 1 into a stat we own.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::fstat(1, &mut st) } == 0;
            ok && matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
        };
        ProgressLine {
            on: std::io::stderr().is_terminal() && !stdout_pipe,
            shown: None,
            at_line_start: true,
            stdout_tty: std::io::stdout().is_terminal(),
        }
    }

    fn clear(&mut self) {
        if self.shown.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    fn after_output(&mut self, bytes: &[u8]) {
        if let Some(last) = bytes.last() {
            self.at_line_start = *last == b'\n';
        }
    }

    fn show(&mut self, p: Option<f32>) {
        let Some(p) = p.filter(|_| self.on) else {
            return;
        };
        if self.shown == Some(p) || (self.stdout_tty && !self.at_line_start) {
            return;
        }
        let cols = term::size(2).map_or(80, |(c, _)| c);
        let line = format!("{} studio: running", progress::bar(p, 30));
        eprint!("\r\x1b[2K{}", term::cut(&line, cols.saturating_sub(1)));
        self.shown = Some(p);
    }
}

/// The local backend, if this home has one (commands that only read never
/// create it). Any command that opens it also makes sure a driver looks
/// after it, so a driver that died (or a follower killed by a signal) never
/// leaves jobs stuck until some later `run`.
async fn local_if_exists(g: &Globals) -> Result<Option<LocalBackend>, CliError> {
    if !g.home.join("studio.sqlite3").exists() {
        return Ok(None);
    }
    let be = open(g).await?;
    ensure_driver(g, &be).await?;
    Ok(Some(be))
}

/// A driver that died (killed, OOM) is replaced, by a command that stays
/// (a waiting `run`, `studio ui`); a look at the lock while one lives.
async fn replace_dead_driver(g: &Globals, be: &LocalBackend) -> Result<(), CliError> {
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
async fn ensure_driver(g: &Globals, be: &LocalBackend) -> Result<(), CliError> {
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

async fn driver(g: &Globals) -> Result<ExitCode, CliError> {
    let be = open(g).await?;
    let served = studio_local::driver::serve(&be, DRIVE_EVERY).await?;
    tracing::debug!(?served, "driver leaving");
    Ok(ExitCode::SUCCESS)
}

/// The uid and gid of a user name (from the system's user database).
fn user_ids(name: &str) -> Result<(u32, u32), CliError> {
    let c = std::ffi::CString::new(name).map_err(|_| usage(format!("--run-as '{name}'")))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(usage(format!("--run-as '{name}': no such user")));
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

async fn worker(g: &Globals, env: &Env, a: WorkerArgs) -> Result<ExitCode, CliError> {
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
    let cfg = WorkerConfig {
        pool: PoolKey::new(a.pool).map_err(usage)?,
        instance: InstanceId::new(a.instance_id).map_err(usage)?,
        lease: dur("lease", &a.lease)?,
        poll_wait: Cadence::CLOUD.poll_wait,
        heartbeat: Cadence::CLOUD.heartbeat,
        seen_every: Cadence::CLOUD.seen_every,
        // The heartbeat on the job record: a file write locally, a DynamoDB
        // write in the cloud.
        beat_every: if a.backend != "local" {
            Cadence::CLOUD.beat_every
        } else {
            dur("lease", &a.lease)? / 4
        },
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
        notice_every: Cadence::CLOUD.notice_every,
        checkpoint_every: dur("checkpoint-every", &a.checkpoint_every)?,
        // Locally a flush is a file append; on S3 each flush is an object.
        log_every: if a.backend != "local" {
            Cadence::CLOUD.log_every
        } else {
            Duration::from_millis(200)
        },
        // Locally a record write is a file write: progress shows within a second.
        progress_every: if a.backend != "local" {
            Cadence::CLOUD.progress_every
        } else {
            Duration::from_secs(1)
        },
        venv_root: a.venv_root,
        run_as: a.run_as.as_deref().map(user_ids).transpose()?,
        inputs: None,
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
            let ctx = studio_aws::lambda::context_from_env(&aws).await;
            let sdk = studio_aws::sdk_config(&aws.region).await;
            let artifacts = studio_aws::s3::S3Artifacts::from_sdk(&sdk, &aws.bucket);
            let mut cfg = cfg;
            cfg.inputs = Some(Arc::new(studio_aws::s3::S3Inputs::new(
                studio_aws::s3::client(&sdk),
            )));
            run_worker(&ctx, &artifacts, &cfg, rx).await?
        }
        #[cfg(not(feature = "ec2"))]
        "aws" => return Err(usage(without_ec2("the EC2 worker"))),
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

/// A job wherever it lives (this home, or the configured AWS deployment),
/// with the side that holds its records and files.
async fn find_job(g: &Globals, env: &Env, id: &JobId) -> Result<(Side, Job), CliError> {
    sides::find(
        &g.home,
        env,
        local_if_exists(g).await?,
        sides::aws(&g.home, env).await?,
        id,
    )
    .await
}

/// Every job of this home and of the configured AWS deployment.
async fn all_jobs(
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

async fn status(g: &Globals, env: &Env, a: StatusArgs) -> Result<ExitCode, CliError> {
    if a.watch {
        let every = humantime::parse_duration(&a.every)
            .map_err(|e| usage(format!("--every '{}': {e} (e.g. 1s, 500ms)", a.every)))?;
        if every < Duration::from_millis(100) {
            return Err(usage(format!("--every '{}' is below 100ms", a.every)));
        }
        return watch(g, env, every).await;
    }
    let local = local_if_exists(g).await?;
    let aws = sides::aws(&g.home, env).await?;
    let now = SystemClock.now();
    if let Some(j) = a.job {
        let id = JobId::new(j).map_err(usage)?;
        let (_, job) = sides::find(&g.home, env, local, aws, &id).await?;
        if a.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            print_job(&job, now);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut jobs = all_jobs(local.as_ref(), aws.as_ref()).await?;
    jobs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("no jobs yet");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        ["ID", "STATE", "CLOUD", "MACHINE", "ATTEMPTS", "AGE", "COST"]
            .map(String::from)
            .to_vec(),
    ];
    for j in &jobs {
        rows.push(vec![
            j.id.to_string(),
            j.state.to_string(),
            j.plan.cloud.to_string(),
            j.plan.machine.clone(),
            j.attempt.to_string(),
            format_age(now.since(j.created_at)),
            usd(j.cost_micro_usd(now)),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Vec<String>]) {
    for l in table_lines(rows) {
        println!("{l}");
    }
}

/// Rows as aligned lines (columns as wide as their widest cell).
fn table_lines(rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The newest `limit` jobs of this home and of the AWS deployment, through
/// the stores' listing index (never a scan).
async fn newest_jobs(
    local: Option<&LocalBackend>,
    aws: Option<&studio_aws::AwsJobs>,
    limit: u32,
) -> Result<Vec<Job>, CliError> {
    let q = JobQuery {
        limit,
        ..JobQuery::default()
    };
    let mut pages = Vec::new();
    if let Some(be) = local {
        pages.push(be.store.page_jobs(&q).await?);
    }
    if let Some(aws) = aws {
        pages.push(aws.store.page_jobs(&q).await?);
    }
    Ok(merge_pages(pages, limit).jobs)
}

/// One frame of `status --watch` on a terminal.
fn watch_frame(jobs: &[Job], now: studio_core::clock::Timestamp, every: Duration) -> Vec<String> {
    let clock = now.to_string();
    let mut lines = vec![
        format!(
            "studio status --watch   {} job(s)   {} UTC   every {}   q to quit",
            jobs.len(),
            clock.get(11..19).unwrap_or(&clock),
            humantime::format_duration(every)
        ),
        String::new(),
    ];
    if jobs.is_empty() {
        lines.push("no jobs yet".into());
        return lines;
    }
    let mut rows = vec![[
        "JOB", "SCRIPT", "STATE", "CLOUD", "MACHINE", "ATTEMPT", "RUNTIME", "COST", "PROGRESS",
    ]
    .map(String::from)
    .to_vec()];
    for j in jobs {
        rows.push(vec![
            j.id.to_string(),
            term::cut(&j.command_line(), 28).to_string(),
            j.state.to_string(),
            j.plan.cloud.to_string(),
            j.plan.machine.clone(),
            j.attempt.to_string(),
            format_age(j.runtime(now)),
            usd(j.cost_micro_usd(now)),
            j.progress.map_or("-".into(), |p| progress::bar(p, 20)),
        ]);
    }
    lines.extend(table_lines(&rows));
    lines
}

/// A job's line when `status --watch` writes to a pipe: what changed is
/// printed again (cost and runtime, which move every second, are left out).
fn watch_line(j: &Job) -> String {
    format!(
        "{}  {}  {}  attempt {}  {} {}  {}{}",
        j.id,
        j.command_line(),
        j.state,
        j.attempt,
        j.plan.cloud,
        j.plan.machine,
        j.progress
            .map_or("-".to_string(), |p| format!("{:.0}%", p * 100.0)),
        j.reason
            .as_deref()
            .filter(|_| j.state.is_terminal())
            .map_or(String::new(), |r| format!("  ({r})"))
    )
}

/// `studio status --watch`: the jobs table, live. On a terminal it takes
/// the screen (given back on q, Ctrl-C, SIGTERM, and around Ctrl-Z) and
/// redraws in place; into a pipe it writes a timestamped line whenever a
/// job appears or changes, until the pipe closes or a signal ends it.
async fn watch(g: &Globals, env: &Env, every: Duration) -> Result<ExitCode, CliError> {
    use std::io::IsTerminal;
    use tokio::signal::unix::{signal, SignalKind};
    let aws = sides::aws(&g.home, env).await?;
    let mut local = local_if_exists(g).await?;
    let tty = std::io::stdout().is_terminal();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigtstp = signal(SignalKind::from_raw(libc::SIGTSTP))?;
    let mut winch = signal(SignalKind::window_change())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (key_tx, mut keys) = tokio::sync::mpsc::channel::<u8>(8);
    if tty && std::io::stdin().is_terminal() {
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut b) {
                if key_tx.blocking_send(b[0]).is_err() {
                    break;
                }
            }
        });
    } else {
        drop(key_tx);
    }
    let mut keys_open = tty;
    let mut screen = tty.then(term::Screen::enter);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut printed: std::collections::HashMap<JobId, String> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = winch.recv() => {}
            k = keys.recv(), if keys_open => match k {
                Some(b'q' | b'Q') => break,
                Some(_) => continue,
                None => keys_open = false,
            },
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sigtstp.recv() => {
                // Ctrl-Z: give the terminal back, stop, and take it again on `fg`.
                if let Some(s) = screen.as_mut() {
                    s.suspend();
                }
                term::stop_self();
                if let Some(s) = screen.as_mut() {
                    s.resume();
                }
            }
        }
        if local.is_none() {
            local = local_if_exists(g).await?;
        }
        let now = SystemClock.now();
        match &screen {
            Some(s) => {
                let (cols, rows) = term::size(1).unwrap_or((100, 30));
                let jobs = newest_jobs(
                    local.as_ref(),
                    aws.as_ref(),
                    rows.saturating_sub(3).max(1) as u32,
                )
                .await?;
                if s.draw(&watch_frame(&jobs, now, every), cols, rows).is_err() {
                    break;
                }
            }
            None => {
                let jobs = newest_jobs(local.as_ref(), aws.as_ref(), 200).await?;
                let mut out = std::io::stdout().lock();
                for j in jobs.iter().rev() {
                    let line = watch_line(j);
                    if printed.get(&j.id) != Some(&line) {
                        // A closed pipe ends the watch quietly, like any unix tool.
                        if writeln!(out, "{now}  {line}")
                            .and_then(|_| out.flush())
                            .is_err()
                        {
                            return Ok(ExitCode::SUCCESS);
                        }
                        printed.insert(j.id.clone(), line);
                    }
                }
            }
        }
    }
    drop(screen);
    Ok(ExitCode::SUCCESS)
}

/// `studio ui`: serves the page and its API until Ctrl-C or SIGTERM.
async fn serve_ui(g: &Globals, env: &Env, a: UiArgs) -> Result<ExitCode, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let ip: std::net::IpAddr = a.bind.parse().map_err(|e| {
        usage(format!(
            "--bind '{}': {e} (an IP address, e.g. 127.0.0.1)",
            a.bind
        ))
    })?;
    let local = local_if_exists(g).await?;
    let aws = sides::aws(&g.home, env).await?;
    let gcs = match &aws {
        Some(_) => sides::gcs(&g.home, env).await.ok(),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind((ip, a.port))
        .await
        .with_context(|| {
            format!(
                "listening on {ip}:{} (another studio ui? --port 0 picks a free port)",
                a.port
            )
        })?;
    let addr = listener.local_addr()?;
    let shown = if ip.is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    if !ip.is_loopback() {
        eprintln!(
            "studio: warning: serving on {addr}: anyone who can reach it sees your jobs and can cancel them (there is no login)"
        );
    }
    // Output files pass through here on their way to the browser: under
    // the home, private to its user (not the shared /tmp).
    let scratch = g.home.join(format!("ui-scratch-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
    }
    let token = ui::new_token().context("reading /dev/urandom for the page's token")?;
    let src = Arc::new(ui::Sources {
        local: std::sync::Mutex::new(local.map(Arc::new)),
        aws,
        gcs,
        user: env.user.clone(),
        loopback_port: ip.is_loopback().then_some(addr.port()),
        scratch: scratch.clone(),
        token: token.clone(),
    });
    let url = format!("http://{shown}/?token={token}");
    println!("studio ui: {url}");
    std::io::stdout().flush()?;
    eprintln!("studio: serving jobs and pools at {url} (Ctrl-C to stop)");
    if a.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        if let Err(e) = std::process::Command::new(opener)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            eprintln!("studio: could not open a browser ({opener}: {e}); open {url} yourself");
        }
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut looks = tokio::time::interval(DRIVER_CHECK_EVERY);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let src = src.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| ui::handle(src.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = looks.tick() => {
                // A home that appeared (a first `studio run` in another
                // shell), and a driver for it while the page is open, as
                // `status` and a waiting `run` make sure of.
                let current = src.local.lock().expect("not poisoned").clone();
                match current {
                    None => {
                        if let Some(be) = local_if_exists(g).await? {
                            *src.local.lock().expect("not poisoned") = Some(Arc::new(be));
                        }
                    }
                    Some(be) => replace_dead_driver(g, &be).await?,
                }
            }
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("studio: ui stopped");
    Ok(ExitCode::SUCCESS)
}

fn print_job(j: &Job, now: studio_core::clock::Timestamp) {
    println!("job       {}", j.id);
    println!("state     {}", j.state);
    if let Some(r) = &j.reason {
        println!("reason    {r}");
    }
    if let Some(c) = j.exit_code {
        println!("exit code {c}");
    }
    if !j.last_lines.is_empty() && j.state == JobState::Failed {
        println!("last lines");
        for l in &j.last_lines {
            println!("  | {l}");
        }
    }
    println!(
        "cloud     {} ({}, {})",
        j.spec.cloud, j.plan.machine, j.plan.market
    );
    println!("pool      {}", j.pool);
    println!("script    {} {}", j.spec.entrypoint, j.spec.args.join(" "));
    println!("owner     {}", j.spec.owner);
    println!("age       {}", format_age(now.since(j.created_at)));
    let spent = j.cost_micro_usd(now);
    let budget = j.spec.max_cost_cents.map_or(String::new(), |c| {
        format!(" of a {} budget", usd(c * 10_000))
    });
    if j.state.is_terminal() {
        println!("cost      {}{budget}", usd(spent));
    } else {
        println!("cost      {} so far{budget}", usd(spent));
    }
    println!("attempts");
    for a in &j.attempts {
        let outcome = a.outcome.map_or("running".to_string(), |o| o.to_string());
        let took = a.ended_at.unwrap_or(now).since(a.started_at);
        println!(
            "  #{} {} on {}{} ({}, {}, ${:.4}/h {}) {} after {}, {}{}",
            a.number,
            outcome,
            a.instance,
            a.zone
                .as_deref()
                .map_or(String::new(), |z| format!(" in {z}")),
            a.machine,
            a.market,
            a.price_micro_usd_per_hour as f64 / 1e6,
            a.price_basis(),
            a.exit_code.map_or(String::new(), |c| format!("exit {c}")),
            humantime::format_duration(Duration::from_secs(took.as_secs())),
            usd(a.cost_micro_usd(now)),
            a.outputs.as_ref().map_or(String::new(), |o| format!(
                ", outputs: {} file(s), {}",
                o.files,
                format_bytes(o.bytes)
            ))
        );
    }
    println!("events");
    for e in &j.events {
        let from = e.from.map_or("-".to_string(), |f| f.to_string());
        println!("  {}  {from} -> {}  by {}: {}", e.at, e.to, e.by, e.reason);
    }
}

async fn logs(g: &Globals, env: &Env, a: LogsArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, job) = find_job(g, env, &id).await?;
    if !a.follow {
        print_log(side.artifacts(), &id, 0).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut offset = 0;
    let mut job = Some(job);
    loop {
        offset += print_log(side.artifacts(), &id, offset).await?;
        match job.filter(|j| j.state.is_terminal()) {
            Some(ended) => {
                tail_until_script_ends(&side, &ended, offset).await?;
                return Ok(ExitCode::SUCCESS);
            }
            None => {
                tokio::time::sleep(FOLLOW_EVERY).await;
                job = side.store().get_job(&id).await?;
                if job.is_none() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

async fn cancel(g: &Globals, env: &Env, a: CancelArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, _) = find_job(g, env, &id).await?;
    let by = format!("cli:{}", env.user);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match handlers::cancel(side.store(), &SystemClock, &id, &by).await? {
            CancelOutcome::Cancelled => {
                eprintln!("studio: job {id} cancelled");
                return Ok(ExitCode::SUCCESS);
            }
            CancelOutcome::AlreadyEnded(s) => {
                eprintln!("studio: job {id} already ended: {s}");
                return Ok(ExitCode::SUCCESS);
            }
            CancelOutcome::NotFound => return Err(usage(format!("no job '{id}'"))),
            CancelOutcome::Busy if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
            CancelOutcome::Busy => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "job {id} is being requeued; try again"
                )))
            }
        }
    }
}

async fn gc(g: &Globals, a: GcArgs) -> Result<ExitCode, CliError> {
    let retention = humantime::parse_duration(&a.older_than)
        .map_err(|e| usage(format!("--older-than '{}': {e} (e.g. 7d)", a.older_than)))?;
    let Some(be) = local_if_exists(g).await? else {
        eprintln!("studio: nothing to collect in {}", g.home.display());
        return Ok(ExitCode::SUCCESS);
    };
    let r = studio_local::gc::collect(&be, retention, SystemClock.now()).await?;
    eprintln!(
        "studio: removed {} jobs, {} workspaces, {} instances, {} pools, {} dead letters ({})",
        r.jobs,
        r.workspaces,
        r.instances,
        r.pools,
        r.dead_letters,
        format_mib(r.bytes.div_ceil(1 << 20))
    );
    Ok(ExitCode::SUCCESS)
}

/// What a `studio` built without the EC2 SDK says when asked for what needs it.
#[cfg(not(feature = "ec2"))]
fn without_ec2(what: &str) -> String {
    format!("{what} needs the EC2 SDK, which this studio is built without (it takes 7 GB of memory to compile): cargo install --path cli --features ec2")
}

#[cfg(not(feature = "ec2"))]
async fn catalog_refresh(_: &Globals, _: RefreshArgs) -> Result<ExitCode, CliError> {
    Err(usage(without_ec2("`studio catalog refresh`")))
}

#[cfg(feature = "ec2")]
async fn catalog_refresh(g: &Globals, a: RefreshArgs) -> Result<ExitCode, CliError> {
    let prices = match &a.on_demand_prices {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("--on-demand-prices {}: {e}", p.display())))?;
            studio_aws::catalog::parse_on_demand_csv(&text, &a.region).map_err(usage)?
        }
        None => Default::default(),
    };
    let client = studio_aws::ec2_client(&a.region).await;
    let cat = studio_aws::catalog::fetch_catalog(&client, &a.region, &prices, !a.no_spot_prices)
        .await
        .context("reading the EC2 catalogue")?;
    let out = a.output.unwrap_or_else(|| {
        g.home
            .join("catalog")
            .join(format!("ec2-{}.json", a.region))
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, studio_aws::catalog::to_json(&cat))?;
    let priced = cat
        .types
        .iter()
        .filter(|t| t.on_demand_micro_usd.is_some())
        .count();
    let spot = cat
        .types
        .iter()
        .filter(|t| t.spot_micro_usd.is_some())
        .count();
    eprintln!(
        "studio: {} instance types in {} ({priced} with on-demand prices, {spot} with spot prices) written to {}",
        cat.types.len(),
        cat.region,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `studio init --stack S`: the `[aws]` settings from the stack's outputs,
/// written into `$STUDIO_HOME/config.toml` (other settings there are kept).
async fn init(g: &Globals, a: InitArgs) -> Result<ExitCode, CliError> {
    let sdk = studio_aws::sdk_config_from_env(a.region.as_deref())
        .await
        .ok_or_else(|| usage("no AWS region: pass --region or set AWS_REGION"))?;
    let stack = studio_aws::stack::Stack::describe(&sdk, &a.stack)
        .await
        .map_err(|e| usage(format!("stack {}: {e}", a.stack)))?;
    let settings = stack.client_settings().map_err(usage)?;
    let file = g.home.join("config.toml");
    let mut table: toml::Table = match std::fs::read_to_string(&file) {
        Ok(text) => text
            .parse()
            .map_err(|e| usage(format!("{}: {e}", file.display())))?,
        Err(_) => toml::Table::new(),
    };
    let mut aws = toml::Table::new();
    aws.insert("stack".into(), toml::Value::String(stack.name.clone()));
    for (k, v) in &settings {
        aws.insert((*k).into(), toml::Value::String(v.clone()));
    }
    table.insert("aws".into(), toml::Value::Table(aws));
    std::fs::create_dir_all(&g.home)?;
    // Names only, never credentials; still private like the rest of the home.
    let tmp = file.with_extension("toml.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            toml::to_string(&table)
                .context("writing the settings")?
                .as_bytes(),
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    for (k, v) in &settings {
        println!("{k:<16} {v}");
    }
    eprintln!(
        "studio: wrote [aws] of stack {} ({}) to {}; `studio doctor` checks it",
        stack.name,
        stack.status,
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `studio doctor`: one line per check of the configured deployment; exit 1
/// when any fails.
async fn doctor(g: &Globals, env: &Env, a: DoctorArgs) -> Result<ExitCode, CliError> {
    let cfg = sides::aws_settings(&g.home, env)?.ok_or_else(|| {
        usage(format!(
            "no AWS deployment configured: run `studio init --stack NAME` (writes {})",
            g.home.join("config.toml").display()
        ))
    })?;
    let stack = match a.stack.or_else(|| sides::configured_stack(&g.home)) {
        Some(s) => s,
        None => {
            return Err(usage(
                "which stack? pass --stack NAME (or run `studio init --stack NAME`)",
            ))
        }
    };
    let sdk = studio_aws::sdk_config(&cfg.region).await;
    let shipped = vec![CatalogPlanner::shipped().ec2.region.clone()];
    let checks = studio_aws::stack::doctor(&sdk, &cfg, &stack, &shipped).await;
    let mut failed = false;
    for c in &checks {
        match &c.result {
            Ok(m) | Err(m) if c.skipped => println!("skip  {:<16} {m}", c.what),
            Ok(m) => println!("ok    {:<16} {m}", c.what),
            Err(m) => {
                failed = true;
                println!("FAIL  {:<16} {m}", c.what);
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
