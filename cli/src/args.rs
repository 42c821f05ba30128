//! The command line. Flags are taken as text and parsed by `studio-core`, so
//! every bad value gets the same one-line message whatever the entry point.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    /// Write the AWS settings of $STUDIO_HOME/config.toml from a deployed stack's outputs.
    Init(InitArgs),
    /// Check the configured AWS deployment, one line per check.
    Doctor(DoctorArgs),
    /// Serve a web page of jobs and pools on this machine (127.0.0.1).
    Ui(UiArgs),
    /// The EC2 instance catalogue.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Run a worker for a pool (started by the fleet, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Drive the local control plane until nothing is left to do.
    #[command(hide = true)]
    Driver,
}

/// What the job asks for: shared by `run` and `plan`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Where to run: local, ec2, ec2spot, gcloud, gcspot.
    #[arg(long, default_value = "local")]
    pub cloud: String,
    /// vCPUs per worker.
    #[arg(long, default_value = "1", value_name = "N")]
    pub cpus: String,
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
    /// Do not download the job's outputs into ./studio-out/JOB/ when it ends.
    #[arg(long)]
    pub no_pull: bool,
    /// On ec2spot/gcspot: when the job runs out of attempts, move it to on-demand machines instead of failing it.
    #[arg(long)]
    pub fallback_on_demand: bool,
    /// The script, then its own arguments (everything after the script is the script's).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SCRIPT [ARGS]"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// A script and its arguments may follow, as for `run`; they are ignored.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SCRIPT [ARGS]",
        hide = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the EC2 catalogue from DescribeInstanceTypes and spot price history.
    Refresh(RefreshArgs),
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// CSV of on-demand prices (instance_type,region,on_demand_usd_per_hour).
    #[arg(long, value_name = "CSV")]
    pub on_demand_prices: Option<PathBuf>,
    /// Do not read spot prices (for endpoints that serve placeholders).
    #[arg(long)]
    pub no_spot_prices: bool,
    /// Where to write the catalogue (default: $STUDIO_HOME/catalog/ec2-REGION.json).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One job, in detail.
    pub job: Option<String>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// Keep the table live: redrawn in place on a terminal (q or Ctrl-C to
    /// leave), one line per change when piped.
    #[arg(long, short, conflicts_with_all = ["job", "output"])]
    pub watch: bool,
    /// How often --watch looks (e.g. 1s, 500ms).
    #[arg(
        long,
        default_value = "1s",
        requires = "watch",
        value_name = "DURATION"
    )]
    pub every: String,
}

#[derive(Debug, Args)]
pub struct UiArgs {
    /// The port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on. Anything but loopback lets others on the
    /// network see your jobs and cancel them: there is no login.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub bind: String,
    /// Open the page in a browser (xdg-open, or open on macOS).
    #[arg(long)]
    pub open: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    pub job: String,
    /// Where to write them (default: ./studio-out/JOB).
    pub dest: Option<PathBuf>,
    /// One attempt's outputs instead of the last attempt's that left any.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CostBy {
    Pool,
    Owner,
    Cloud,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// Only jobs created within this long, e.g. 7d (default: all).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// One line per pool, owner or cloud.
    #[arg(long, value_enum)]
    pub by: Option<CostBy>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job: String,
    /// Keep printing until the job ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove jobs that ended (and instances that stopped) longer ago than this.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub older_than: String,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The SubmitJob, as JSON (the contract in the README); `-` reads stdin.
    /// Its `workspace` is either the stored tarball's reference
    /// (`{"sha256", "bytes"}`) or a directory (a string, relative to the
    /// file's directory), which is packed and uploaded.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The CloudFormation stack `scripts/deploy` created.
    #[arg(long, value_name = "NAME")]
    pub stack: String,
    /// Its region (default: AWS_REGION or the profile's).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The stack to check against (default: the one `studio init` recorded).
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub job: String,
}

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
    #[arg(long, env = "STUDIO_PYTHON", default_value = "python3")]
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
    /// Run scripts as this (unprivileged) user; the worker itself stays root.
    #[arg(long, env = "STUDIO_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Give each job a virtualenv (cached here by the hash of its requirements.txt).
    #[arg(long, env = "STUDIO_VENV_ROOT", value_name = "DIR")]
    pub venv_root: Option<PathBuf>,
    /// Where the worker's queue, store and artifacts are: local, aws or gce.
    #[arg(long, env = "STUDIO_BACKEND", default_value = "local")]
    pub backend: String,
}
