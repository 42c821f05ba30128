//! `studio cost [--since 7d] [--by pool|owner|cloud]`: what jobs cost, summed.

use crate::backend;
use crate::backend::{all_jobs, local_if_exists};
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::table::{print_table, Output};
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use studio_core::clock::{Clock, SystemClock};
use studio_core::job::usd;

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

/// `studio cost [--since 7d] [--by pool|owner|cloud]`.
pub(crate) async fn cost(g: &Globals, env: &Env, a: CostArgs) -> Result<ExitCode, CliError> {
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
        backend::aws(&g.home, env).await?.as_ref(),
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
