//! `studio status [JOB]`: a table of jobs, or one job in detail.

use crate::backend;
use crate::backend::{all_jobs, local_if_exists};
use crate::cmd::watch::watch;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::jobs_table::jobs_table;
use crate::outputs::format_bytes;
use crate::table::Output;
use crate::term;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::clock::{format_age, Clock, SystemClock, Timestamp};
use studio_core::ids::JobId;
use studio_core::job::{usd, Job, JobState};
use studio_core::ports::JobStore;
use studio_local::LocalBackend;

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

pub(crate) async fn status(g: &Globals, env: &Env, a: StatusArgs) -> Result<ExitCode, CliError> {
    if a.watch {
        let every = humantime::parse_duration(&a.every)
            .map_err(|e| usage(format!("--every '{}': {e} (e.g. 1s, 500ms)", a.every)))?;
        if every < Duration::from_millis(100) {
            return Err(usage(format!("--every '{}' is below 100ms", a.every)));
        }
        return watch(g, env, every).await;
    }
    let local = local_if_exists(g).await?;
    let aws = backend::aws(&g.home, env).await?;
    let now = SystemClock.now();
    if let Some(j) = a.job {
        let id = resolve(local.as_ref(), aws.as_ref(), &j).await?;
        let (side, job) = backend::find(&g.home, env, local, aws, &id).await?;
        if a.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            print_job(&job, now);
            // A job that waits for a machine: why none starts, if the
            // cloud said (the sweep records failed launches on the pool).
            if job.state == JobState::Queued {
                if let Ok(Some(pool)) = side.store().get_pool(&job.pool).await {
                    if let Some(t) = pool.launch_trouble {
                        println!(
                            "waiting   no machine starts ({} ago): {}",
                            format_age(now.since(t.since)),
                            t.reason
                        );
                    }
                }
            }
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
        println!("no jobs");
        return Ok(ExitCode::SUCCESS);
    }
    for l in jobs_table(&jobs, now, "ID", term::width()) {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The job `text` names: its id, or (when no job has that id) the one job
/// whose id starts with it, as the table's shortened ids do.
async fn resolve(
    local: Option<&LocalBackend>,
    aws: Option<&studio_aws::AwsJobs>,
    text: &str,
) -> Result<JobId, CliError> {
    let id = JobId::new(text).map_err(usage)?;
    if let Some(be) = local {
        if be.store.get_job(&id).await?.is_some() {
            return Ok(id);
        }
    }
    if let Some(a) = aws {
        if a.store.get_job(&id).await?.is_some() {
            return Ok(id);
        }
    }
    let mut matching: Vec<JobId> = all_jobs(local, aws)
        .await?
        .into_iter()
        .map(|j| j.id)
        .filter(|i| i.as_str().starts_with(text))
        .collect();
    matching.sort();
    matching.dedup();
    match matching.len() {
        0 => Ok(id),
        1 => Ok(matching.remove(0)),
        n => Err(usage(format!(
            "'{text}' starts {n} job ids ({}{}): give more of it",
            matching
                .iter()
                .take(3)
                .map(JobId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if n > 3 { ", …" } else { "" }
        ))),
    }
}

fn print_job(j: &Job, now: Timestamp) {
    println!("job       {}", j.id);
    println!("state     {}", j.state);
    // The reason is why the job ended, or why an earlier attempt stopped:
    // on a job that went on after it, it is said as that.
    match (
        &j.reason,
        j.state.is_terminal() && j.state != JobState::Finished,
    ) {
        (Some(r), true) => println!("reason    {r}"),
        (Some(r), false) if j.attempt > 1 => {
            println!("earlier   attempt {} stopped: {r}", j.attempt - 1)
        }
        (Some(r), false) if j.state != JobState::Finished => println!("reason    {r}"),
        _ => {}
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
    if j.spec.cloud == studio_core::resources::Cloud::Local {
        println!("cloud     local (this machine)");
    } else {
        println!(
            "cloud     {} ({}, {})",
            j.spec.cloud, j.plan.machine, j.plan.market
        );
    }
    println!("pool      {}", j.pool);
    let script = std::iter::once(j.spec.entrypoint.as_str())
        .chain(j.spec.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    println!("script    {script}");
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
