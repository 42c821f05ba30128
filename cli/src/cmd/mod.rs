//! The command line and where each subcommand goes.
//!
//! One file per subcommand, each with its flags (a clap `Args` struct) and
//! what it does. They share the plumbing beside this folder
//! ([`crate::backend`], [`crate::follow`], [`crate::request`],
//! [`crate::outputs`], [`crate::table`], [`crate::progress_line`]); none of
//! that plumbing imports a command.

use crate::cmd::cancel::CancelArgs;
use crate::cmd::catalog::CatalogCommand;
use crate::cmd::cost::CostArgs;
use crate::cmd::doctor::DoctorArgs;
use crate::cmd::down::DownArgs;
use crate::cmd::gc::GcArgs;
use crate::cmd::gcp::GcpCommand;
use crate::cmd::init::InitArgs;
use crate::cmd::logs::LogsArgs;
use crate::cmd::plan::PlanArgs;
use crate::cmd::pull::PullArgs;
use crate::cmd::run::RunArgs;
use crate::cmd::status::StatusArgs;
use crate::cmd::submit::SubmitArgs;
use crate::cmd::ui::UiArgs;
use crate::cmd::worker::WorkerArgs;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::handlers::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "studio",
    version,
    about = "Run Python scripts on machines you never have to touch"
)]
pub struct Cli {
    /// Where the local backend keeps its state.
    #[arg(long, global = true, env = "STUDIO_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// How long a pool may sit idle before it is torn down (local backend).
    #[arg(
        long,
        global = true,
        env = "STUDIO_POOL_GRACE",
        default_value = "60s",
        hide = true
    )]
    pub pool_grace: String,
    /// Most workers an auto-sized local pool grows to (default: the number of cores).
    #[arg(long, global = true, env = "STUDIO_MAX_WORKERS", hide = true)]
    pub max_workers: Option<u32>,
    /// Attempts a job gets before an interruption fails it.
    #[arg(
        long,
        global = true,
        env = "STUDIO_MAX_ATTEMPTS",
        default_value_t = 3,
        hide = true
    )]
    pub max_attempts: u32,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a script: `studio run [flags] script.py [script args...]`.
    Run(RunArgs),
    /// Send a prepared SubmitJob (JSON): `studio submit --file job.json` (or `-` for stdin).
    Submit(SubmitArgs),
    /// Show jobs: a table of all, or one job in detail.
    Status(StatusArgs),
    /// Print a job's output.
    Logs(LogsArgs),
    /// Cancel a queued or running job.
    Cancel(CancelArgs),
    /// Show the machine, price and pool a request would get; changes nothing.
    Plan(PlanArgs),
    /// Download a job's outputs (the last attempt's, or --attempt N's).
    Pull(PullArgs),
    /// What jobs cost, summed: total, or --by pool, owner or cloud.
    Cost(CostArgs),
    /// Remove what ended jobs left under $STUDIO_HOME after the retention.
    Gc(GcArgs),
    /// Stop this home's driver and workers (after running jobs end, or --force).
    Down(DownArgs),
    /// Write the AWS settings of $STUDIO_HOME/config.toml from a deployed stack's outputs.
    Init(InitArgs),
    /// Check the configured AWS deployment, one line per check.
    Doctor(DoctorArgs),
    /// Google Cloud: `studio gcp setup` makes a project ready for gcloud/gcspot pools.
    #[command(subcommand)]
    Gcp(GcpCommand),
    /// Serve a web page of jobs and pools on this machine (127.0.0.1).
    Ui(UiArgs),
    /// The EC2 instance catalogue.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Compare policies (on-demand, spot, Studio's) on a workload, simulated: cost, time, interruptions.
    Simulate(simulate::SimulateArgs),
    /// Run a worker for a pool (started by the fleet, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Drive the local control plane until nothing is left to do.
    #[command(hide = true)]
    Driver,
}

mod cancel;

mod catalog;

mod cost;

mod doctor;

mod down;

mod driver;

mod gc;

mod gcp;

mod init;

mod logs;

mod simulate;

mod plan;

mod pull;

mod run;

mod status;

mod submit;

mod ui;

mod watch;

mod worker;

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
        Command::Run(a) => run::run(&g, &env, a).await,
        Command::Submit(a) => submit::submit(&g, &env, a).await,
        Command::Status(a) => status::status(&g, &env, a).await,
        Command::Logs(a) => logs::logs(&g, &env, a).await,
        Command::Cancel(a) => cancel::cancel(&g, &env, a).await,
        Command::Gc(a) => gc::gc(&g, a).await,
        Command::Down(a) => down::down(&g, &env, a).await,
        Command::Pull(a) => pull::pull(&g, &env, a).await,
        Command::Cost(a) => cost::cost(&g, &env, a).await,
        Command::Worker(a) => worker::worker(&g, &env, a).await,
        Command::Driver => driver::driver(&g).await,
        Command::Plan(a) => plan::plan(&g, a, &env).await,
        Command::Catalog(CatalogCommand::Refresh(a)) => catalog::catalog_refresh(&g, a).await,
        Command::Init(a) => init::init(&g, a).await,
        Command::Doctor(a) => doctor::doctor(&g, &env, a).await,
        Command::Gcp(c) => gcp::gcp(&g, &env, c).await,
        Command::Ui(a) => ui::serve_ui(&g, &env, a).await,
        Command::Simulate(a) => simulate::simulate(a).await,
    }
}
