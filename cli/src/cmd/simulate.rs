//! `studio simulate`: the policies compared on one workload, by a
//! discrete-event simulation through the real handlers and worker rules
//! (`studio_sim`). Nothing is launched; no account is needed.

use crate::error::{usage, CliError};
use crate::table::Output;
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;
use studio_sim::rng::Rng;
use studio_sim::workload::Generator;
use studio_sim::Scenario;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// `standard` (the Spot Advisor's interruption buckets, 1,000 jobs) or
    /// `volatile` (the same work, interrupted 200 times as often).
    #[arg(long, default_value = "standard")]
    pub preset: String,
    /// The same seed gives the same report, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generate this many jobs (the preset's mix).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Spread the generated jobs over this many distinct requests (one pool each).
    #[arg(long)]
    pub pools: Option<usize>,
    /// Generated arrivals, a Poisson process (default 120 an hour).
    #[arg(long, allow_negative_numbers = true)]
    pub arrivals_per_hour: Option<f64>,
    /// The generated durations' median, e.g. 30m (log-normal).
    #[arg(long, value_name = "DURATION")]
    pub median_duration: Option<String>,
    /// A workload file instead: CSV `arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["jobs", "pools", "arrivals_per_hour", "median_duration"])]
    pub workload: Option<std::path::PathBuf>,
    /// Market rows: CSV `instance_type,spot_discount,interruption` (`g4dn.xlarge,0.7,15-20%`).
    #[arg(long, value_name = "FILE")]
    pub market: Option<std::path::PathBuf>,
    /// Multiply every interruption rate, the preset's included (1: as they are).
    #[arg(long, allow_negative_numbers = true)]
    pub interruption_scale: Option<f64>,
    /// The simulated deployment's cap on workers per pool (its
    /// STUDIO_MAX_WORKERS; default 20). This machine's settings play no part.
    #[arg(long)]
    pub workers_per_pool: Option<u32>,
    /// Only these policies (repeat): on-demand, studio-2017, studio, studio-k1.
    #[arg(long = "policy", value_name = "NAME")]
    pub policies: Vec<String>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

fn read(path: &std::path::Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("--{what} {}: {e}", path.display())))
}

/// Builds the scenario the flags describe; nothing runs before it is whole.
fn scenario(a: &SimulateArgs) -> Result<Scenario, CliError> {
    let mut s = Scenario::preset(&a.preset, a.seed).map_err(|e| usage(format!("--preset: {e}")))?;
    if let Some(path) = &a.workload {
        s.jobs = studio_sim::workload::from_csv(&read(path, "workload")?)
            .map_err(|e| usage(format!("--workload {}: {e}", path.display())))?;
    } else if a.jobs.is_some()
        || a.pools.is_some()
        || a.arrivals_per_hour.is_some()
        || a.median_duration.is_some()
    {
        let mut g = Generator::standard(a.jobs.unwrap_or(s.jobs.len()));
        if g.jobs == 0 {
            return Err(usage("--jobs must be at least 1"));
        }
        if let Some(p) = a.pools {
            if p == 0 {
                return Err(usage("--pools must be at least 1"));
            }
            g = g.spread(p);
        }
        if let Some(r) = a.arrivals_per_hour {
            if !(r.is_finite() && r > 0.0) {
                return Err(usage(format!(
                    "--arrivals-per-hour {r}: must be a number above 0"
                )));
            }
            g.arrivals_per_hour = r;
        }
        if let Some(d) = &a.median_duration {
            let d = humantime::parse_duration(d)
                .map_err(|e| usage(format!("--median-duration '{d}': {e} (e.g. 30m)")))?;
            if d.is_zero() {
                return Err(usage("--median-duration must be above 0"));
            }
            g.median_s = d.as_secs_f64();
        }
        s.jobs = g.generate(&mut Rng::stream(a.seed, 0));
    }
    if let Some(path) = &a.market {
        let bad = |e: String| usage(format!("--market {}: {e}", path.display()));
        let before = s.market.overrides.len();
        s.market = s.market.with_csv(&read(path, "market")?).map_err(bad)?;
        if s.market.overrides.len() == before {
            return Err(bad(
                "no rows (instance_type,spot_discount,interruption)".into()
            ));
        }
        let catalog = studio_core::catalog::Catalog::shipped();
        if let Some(t) = s
            .market
            .overrides
            .keys()
            .find(|t| t.contains('.') && catalog.get(t).is_none())
        {
            return Err(bad(format!(
                "{t} is not an EC2 type of the shipped catalogue"
            )));
        }
    }
    studio_sim::workload::check(&s.jobs).map_err(|e| match &a.workload {
        Some(path) => usage(format!("--workload {}: {e}", path.display())),
        None => usage(e),
    })?;
    if let Some(x) = a.interruption_scale {
        if !(x.is_finite() && x >= 0.0) {
            return Err(usage(format!(
                "--interruption-scale {x}: must be a number >= 0"
            )));
        }
        s.market.interruption_scale *= x;
    }
    if let Some(m) = a.workers_per_pool {
        if m == 0 {
            return Err(usage("--workers-per-pool must be at least 1"));
        }
        s.max_workers = m;
    }
    if !a.policies.is_empty() {
        let known: Vec<String> = s.policies.iter().map(|p| p.name.clone()).collect();
        if let Some(bad) = a.policies.iter().find(|p| !known.contains(p)) {
            return Err(usage(format!(
                "--policy {bad}: not one of {}",
                known.join(", ")
            )));
        }
        s.policies.retain(|p| a.policies.contains(&p.name));
    }
    Ok(s)
}

/// `studio simulate [--preset standard] [--seed N] [...]`.
pub(crate) async fn simulate(a: SimulateArgs) -> Result<ExitCode, CliError> {
    let s = scenario(&a)?;
    let started = Instant::now();
    let (report, _) = studio_sim::simulate(&s)
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!(e)))?;
    let wall = started.elapsed();
    match a.output {
        Output::Table => print!("{}", studio_sim::report::table(&report)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        ),
    }
    // Not part of the report: it would differ from run to run.
    eprintln!(
        "simulated {} job(s) x {} polic{} in {:.1} s of wall time, peak memory {} MiB",
        report.jobs,
        report.policies.len(),
        if report.policies.len() == 1 {
            "y"
        } else {
            "ies"
        },
        wall.as_secs_f64(),
        studio_sim::peak_rss_bytes() >> 20
    );
    let unfinished: Vec<&str> = report
        .policies
        .iter()
        .filter(|p| p.jobs_finished < p.jobs)
        .map(|p| p.name.as_str())
        .collect();
    if !unfinished.is_empty() {
        eprintln!("not every job finished under: {}", unfinished.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
