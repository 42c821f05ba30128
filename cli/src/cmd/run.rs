//! `studio run [flags] script.py [args...]`: validate, pack, send, and
//! (unless `--detach`) follow the job to its end and pull its outputs.

use crate::backend::{send, side_for};
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::follow::{follow, report_end};
use crate::outputs::{pull_outputs, PULL_DIR};
use crate::request::{
    deployment_prices, pack_workspace, parse_input, parse_request, parse_usd_cents, planner,
    RequestArgs,
};
use crate::table::Output;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use studio_core::catalog::SpotPrices;
use studio_core::clock::{Clock, SystemClock};
use studio_core::contract::SubmitJob;
use studio_core::ids::JobId;
use studio_core::job::usd;
use studio_core::plan::Planner;
use studio_core::resources::Cloud;
use studio_core::worker::pyenv::{find_uv, Deps};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// The directory to snapshot as the job's workspace (default: the
    /// script's); the script must be inside it, and runs from its top.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Your idempotency key: submitting the same id twice makes one job.
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Environment for the script, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Kill the script after this long, e.g. 2h30m.
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
    /// Drop the job if no worker took it within this long, e.g. 6h.
    #[arg(long, value_name = "DURATION")]
    pub lifetime: Option<String>,
    /// Print the job id and return instead of waiting.
    #[arg(long)]
    pub detach: bool,
    /// Print the SubmitJob this would send (JSON) and change nothing: no
    /// upload, no job.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: `json` (the default for a dry run) or `table`.
    #[arg(long, value_enum)]
    pub format: Option<Output>,
    /// A file or directory of the workspace the script writes, collected
    /// with $STUDIO_OUTPUT_DIR at the end of every attempt (repeatable).
    #[arg(long = "output", value_name = "PATH")]
    pub outputs: Vec<String>,
    /// Data too large for the workspace, fetched by the worker before the
    /// script starts: s3://BUCKET/PREFIX, into PATH of the workspace
    /// (default: the prefix's last part) (repeatable).
    #[arg(long = "input", value_name = "s3://BUCKET/PREFIX[:PATH]")]
    pub inputs: Vec<String>,
    /// Stop the job (and its re-runs), cancelled with the reason, before
    /// its machines cost more than this many USD, e.g. 2.50.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<String>,
    /// The Python the script runs with: a version (3.12: found on the
    /// machine, or fetched by uv) or an interpreter's absolute path.
    /// Default: the machine's python3, or what the project's uv.lock asks.
    #[arg(long, env = "STUDIO_PYTHON", value_name = "VERSION|PATH")]
    pub python: Option<String>,
    /// Do not download the job's outputs into ./studio-out/JOB/ when it ends.
    #[arg(long)]
    pub no_pull: bool,
    /// On ec2spot/gcspot: when the job runs out of attempts, move it to on-demand machines instead of failing it.
    #[arg(long)]
    pub fallback_on_demand: bool,
    /// The script, then its own arguments (everything after the script is the script's).
    // No `allow_hyphen_values`: a flag before the script is Studio's, and
    // one it does not know is clap's error, with its "did you mean".
    #[arg(trailing_var_arg = true, value_name = "SCRIPT [ARGS]")]
    pub command: Vec<String>,
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
    prices: Option<&SpotPrices>,
) -> Result<(SubmitJob, PathBuf), CliError> {
    let Some((script, script_args)) = a.command.split_first() else {
        return Err(usage(
            "missing script: studio run [flags] script.py [script args...]",
        ));
    };
    let path = Path::new(script);
    if !path.is_file() {
        return Err(usage(format!("script '{script}' not found")));
    }
    for flag in own_flags_among(script_args) {
        eprintln!(
            "studio: warning: {flag} after {script} goes to the script; put it before the script to give it to studio"
        );
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
    spec.python = a.python.clone();
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
    spec.max_duration_secs = seconds("--max-duration", a.max_duration.as_deref(), "2h30m")?;
    spec.lifetime_secs = seconds("--lifetime", a.lifetime.as_deref(), "6h")?;
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
    let plan = planner(home, spec.region.as_deref(), prices)?
        .plan(&spec)
        .map_err(usage)?;
    for w in &plan.warnings {
        eprintln!("studio: warning: {w}");
    }
    preflight(&spec, &dir, &path, home)?;
    Ok((spec, dir))
}

/// The arguments for the script (up to a `--`) that name one of `studio
/// run`'s own flags (`--detach`, `--cpus=2`): the script gets them, and may
/// well take such a flag, but they may have been meant for Studio.
fn own_flags_among(script_args: &[String]) -> Vec<&str> {
    let run = <RunArgs as clap::Args>::augment_args(clap::Command::new("run"));
    let longs: Vec<&str> = run
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .collect();
    script_args
        .iter()
        .take_while(|a| *a != "--")
        .filter(|a| {
            a.strip_prefix("--")
                .map(|f| f.split_once('=').map_or(f, |(name, _)| name))
                .is_some_and(|name| longs.contains(&name))
        })
        .map(String::as_str)
        .collect()
}

/// A duration flag (`2h30m`) in whole seconds, at least one.
fn seconds(flag: &str, value: Option<&str>, example: &str) -> Result<Option<u64>, CliError> {
    value
        .map(|d| {
            humantime::parse_duration(d)
                .map_err(|e| usage(format!("{flag} '{d}': {e} (e.g. {example})")))
                .map(|d| d.as_secs().max(1))
        })
        .transpose()
}

/// What `run` says and checks of the script's Python before anything is
/// sent: the dependency files its environment will be built from (and,
/// for the local default, that this machine has uv to build it), and that
/// the script compiles.
fn preflight(spec: &SubmitJob, dir: &Path, script: &Path, home: &Path) -> Result<(), CliError> {
    let deps = Deps::of(dir);
    let files = deps.files().join(" + ");
    if deps != Deps::None {
        eprintln!("studio: the job's Python environment is built from {files} (with uv, cached)");
    }
    let needs_uv = deps != Deps::None || spec.python.is_some();
    // The worker takes STUDIO_UV as it is, else looks on PATH and beside itself.
    let have_uv = std::env::var_os("STUDIO_UV").is_some_and(|p| Path::new(&p).is_file())
        || find_uv().is_some();
    if needs_uv && spec.cloud == Cloud::Local && !have_uv {
        let what = if files.is_empty() {
            "--python"
        } else {
            files.as_str()
        };
        return Err(usage(format!(
            "{what} needs uv to build the job's environment, and this machine has none: \
             install it (`pip install uv`) or point STUDIO_UV at it"
        )));
    }
    // A version is found (or fetched) on the worker; check with what runs it.
    let python = match spec.python.as_deref() {
        None => "python3",
        Some(p) if p.starts_with('/') => p,
        Some(_) => return Ok(()),
    };
    // A script that compiled once with this interpreter is not asked
    // again (a sweep of 200 runs starts Python once, not 200 times).
    let Ok(bytes) = std::fs::read(script) else {
        return Ok(());
    };
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, python.as_bytes());
    sha2::Digest::update(&mut h, [0]);
    sha2::Digest::update(&mut h, &bytes);
    let seen = home
        .join("cache")
        .join("compiled")
        .join(hex::encode(sha2::Digest::finalize(h)));
    if seen.exists() {
        return Ok(());
    }
    let out = std::process::Command::new(python)
        .args(["-c", COMPILES])
        .arg(script)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.code() == Some(3) => Err(usage(format!(
            "script '{}' does not compile: {}",
            spec.entrypoint,
            String::from_utf8_lossy(&o.stdout).trim()
        ))),
        Ok(o) if o.status.success() => {
            // Only a note: a home that cannot hold it asks again next time.
            if let Some(dir) = seen.parent() {
                if studio_local::files::create_dir_all(dir).is_ok() {
                    let _ = studio_local::files::write(&seen, b"");
                }
            }
            Ok(())
        }
        // No such interpreter here to ask: the worker says.
        _ => Ok(()),
    }
}

/// Compiles the script named by argv[1] without running it or writing a
/// .pyc; exit 3 and one line when it does not compile.
const COMPILES: &str = r#"import sys
try:
    compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')
except (SyntaxError, ValueError) as e:
    print(f'{type(e).__name__}: {getattr(e, "msg", e)} (line {getattr(e, "lineno", "?")})')
    sys.exit(3)
"#;

pub(crate) async fn run(g: &Globals, env: &Env, a: RunArgs) -> Result<ExitCode, CliError> {
    // The deployment's spot prices, as submit will plan with them (only for
    // ec2spot, and only with a deployment).
    let prices = match a.request.cloud.parse() {
        Ok(cloud) => deployment_prices(&g.home, env, cloud).await,
        Err(_) => None,
    };
    let (mut spec, dir) = validate_run(
        &a,
        &env.user,
        &g.home,
        g.settings.max_auto_workers,
        prices.as_ref(),
    )?;
    if a.dry_run {
        // What would be sent: the workspace packed (for its reference) but
        // not uploaded, no job id assigned unless given, nothing created.
        let tarball = pack_workspace(g, &dir)?;
        spec.workspace = studio_core::contract::WorkspaceRef {
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tarball)),
            bytes: tarball.len() as u64,
        };
        if a.format == Some(Output::Table) {
            // One field a line, as a person reads it; JSON is the default.
            let v = serde_json::to_value(&spec)?;
            for (k, v) in v.as_object().into_iter().flatten() {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                println!("{k:<20} {text}");
            }
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
