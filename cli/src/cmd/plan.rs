//! `studio plan`: the machine, price and pool a request would get; changes nothing.

use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::request::{parse_request, planner, RequestArgs};
use crate::table::Output;
use clap::Args;
use std::process::ExitCode;
use studio_core::plan::Planner;
use studio_core::pool::PoolSpec;
use studio_core::resources::Market;
use studio_core::size::format_mib;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// A script and its arguments may follow, as for `run`; they are ignored.
    // No `allow_hyphen_values`, as for `run`: a mistyped flag before the
    // script is clap's error with its "did you mean", not swallowed.
    #[arg(trailing_var_arg = true, value_name = "SCRIPT [ARGS]", hide = true)]
    pub command: Vec<String>,
}

pub(crate) async fn plan(g: &Globals, a: PlanArgs, env: &Env) -> Result<ExitCode, CliError> {
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
