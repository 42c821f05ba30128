//! `studio plan`: the machines a request would get, what they cost and
//! where the prices come from, on one cloud or all of them; changes nothing.

use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::request::{deployment_prices, parse_request, planner, RequestArgs};
use crate::table::{table_lines, Output};
use clap::Args;
use std::process::ExitCode;
use studio_core::catalog::{Candidate, SpotPrices};
use studio_core::plan::{Plan, Planner};
use studio_core::pool::PoolSpec;
use studio_core::resources::{Cloud, Market};
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

/// One cloud's answer: its plan and pool, or why nothing fits there.
struct Planned {
    cloud: Cloud,
    result: Result<(Plan, String), String>,
}

fn plan_one(
    g: &Globals,
    a: &RequestArgs,
    env: &Env,
    prices: Option<&SpotPrices>,
) -> Result<(Plan, String), CliError> {
    let mut spec = parse_request(a, &env.user)?;
    spec.entrypoint = "plan.py".into();
    spec.validate().map_err(usage)?;
    let plan = planner(&g.home, spec.region.as_deref(), prices)?
        .plan(&spec)
        .map_err(usage)?;
    let pool = PoolSpec::for_job(&spec, &plan).key().to_string();
    Ok((plan, pool))
}

pub(crate) async fn plan(g: &Globals, a: PlanArgs, env: &Env) -> Result<ExitCode, CliError> {
    if a.request.cloud != "all" {
        let cloud = a.request.cloud.parse().map_err(usage)?;
        let prices = deployment_prices(&g.home, env, cloud).await;
        let (plan, pool) = plan_one(g, &a.request, env, prices.as_ref())?;
        if a.output == Output::Json {
            let mut v = serde_json::to_value(&plan)?;
            v["pool"] = serde_json::Value::String(pool);
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_one(&plan, &pool, a.request.bid.as_deref());
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Every cloud, the same request: a flag one cloud refuses (a region
    // only EC2 knows) is that cloud's row, not the command's end; a flag
    // that is wrong everywhere is refused once.
    let prices = deployment_prices(&g.home, env, Cloud::Ec2spot).await;
    let all: Vec<Planned> = Cloud::ALL
        .iter()
        .map(|&cloud| {
            let mut r = a.request.clone();
            r.cloud = cloud.to_string();
            Planned {
                cloud,
                result: plan_one(g, &r, env, prices.as_ref()).map_err(|e| e.message()),
            }
        })
        .collect();
    if all.iter().all(|p| p.result.is_err()) {
        let why = all[0].result.as_ref().err().cloned().unwrap_or_default();
        return Err(usage(why));
    }
    if a.output == Output::Json {
        let plans: Vec<serde_json::Value> = all
            .iter()
            .map(|p| match &p.result {
                Ok((plan, pool)) => {
                    let mut v = serde_json::to_value(plan).unwrap_or_default();
                    v["pool"] = serde_json::Value::String(pool.clone());
                    v
                }
                Err(why) => serde_json::json!({ "cloud": p.cloud, "error": why }),
            })
            .collect();
        let v = serde_json::json!({ "plans": plans });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_all(&all);
    Ok(ExitCode::SUCCESS)
}

fn usd(m: u64) -> String {
    format!("${:.4}/h", m as f64 / 1e6)
}

const HEADER: [&str; 9] = [
    "",
    "TYPE",
    "VCPU",
    "MEMORY",
    "GPUS",
    "REGION",
    "ON-DEMAND",
    "SPOT",
    "BID CAP",
];

/// A candidate's row: the chosen one (the first) marked.
fn row(plan: &Plan, c: &Candidate, chosen: bool) -> Vec<String> {
    let gpus = match (c.gpus, &c.gpu_model) {
        (0, _) => "-".to_string(),
        (n, Some(m)) => format!("{n}× {m}"),
        (n, None) => n.to_string(),
    };
    let spot = match plan.market {
        Market::Spot if c.spot_price_known => match &c.zone {
            Some(z) => format!("{} in {z}", usd(c.price_micro_usd_per_hour)),
            None => usd(c.price_micro_usd_per_hour),
        },
        Market::Spot => "unknown".to_string(),
        _ => "-".to_string(),
    };
    vec![
        if chosen { "*" } else { "" }.to_string(),
        c.machine.clone(),
        c.vcpus.to_string(),
        format_mib(c.memory_mib),
        gpus,
        plan.region.clone().unwrap_or_else(|| "-".into()),
        usd(c.on_demand_micro_usd_per_hour),
        spot,
        c.bid_cap_micro_usd_per_hour.map_or("-".into(), usd),
    ]
}

/// The plan's rows: its candidates, or the one local machine.
fn rows(plan: &Plan) -> Vec<Vec<String>> {
    if plan.market == Market::Local {
        return vec![vec![
            "*".into(),
            "local (this machine)".into(),
            plan.vcpus.to_string(),
            format_mib(plan.memory_mib),
            "-".into(),
            "-".into(),
            "free".into(),
            "-".into(),
            "-".into(),
        ]];
    }
    plan.candidates
        .iter()
        .enumerate()
        .map(|(i, c)| row(plan, c, i == 0))
        .collect()
}

/// The table with its header; the bid's column only where there is a bid.
fn table(header: Vec<String>, rows: Vec<Vec<String>>) -> Vec<String> {
    let bid = rows.iter().any(|r| r.last().is_some_and(|c| c != "-"));
    let mut all = vec![header];
    all.extend(rows);
    if !bid {
        for r in &mut all {
            r.pop();
        }
    }
    table_lines(&all)
}

fn print_one(plan: &Plan, pool: &str, bid: Option<&str>) {
    let region = plan
        .region
        .as_deref()
        .map_or(String::new(), |r| format!(", {r}"));
    if plan.market == Market::Local {
        println!("cloud      local (this machine)");
    } else {
        println!("cloud      {} ({}{region})", plan.cloud, plan.market);
    }
    println!();
    let header = HEADER.iter().map(|h| h.to_string()).collect();
    for l in table(header, rows(plan)) {
        println!("  {l}");
    }
    println!();
    let mut shape = format!("{} vCPU, {}", plan.vcpus, format_mib(plan.memory_mib));
    if plan.gpus > 0 {
        shape.push_str(&format!(
            ", {}× {}",
            plan.gpus,
            plan.gpu_model.as_deref().unwrap_or("GPU")
        ));
    }
    let machine = if plan.market == Market::Local {
        "this machine"
    } else {
        &plan.machine
    };
    println!("machine    {machine} ({shape})");
    let kind = match (
        plan.market,
        plan.candidates.first().map(|c| c.spot_price_known),
    ) {
        (Market::Spot, Some(true)) => "spot",
        (Market::Spot, _) => "on-demand price; spot price unknown",
        (Market::Local, _) => "local",
        _ => "on-demand",
    };
    if plan.market == Market::Local {
        println!("price      free (this machine)");
    } else {
        println!("price      {} ({kind})", usd(plan.price_micro_usd_per_hour));
    }
    if let (Some(bid), Some(max)) = (bid, plan.max_price_micro_usd_per_hour) {
        let per_type = plan
            .candidates
            .iter()
            .filter_map(|c| c.bid_cap_micro_usd_per_hour)
            .any(|c| c != max);
        let why = if per_type {
            " (the lowest type's cap: an EC2 group takes one for all its types)"
        } else {
            ""
        };
        println!("bid        {bid} → at most {} a machine{why}", usd(max));
    }
    if let Some(m) = &plan.on_host_maintenance {
        println!("host       on-host maintenance {m} (GPU machines cannot live-migrate)");
    }
    println!("pool       {pool}");
    if !plan.price_source.is_empty() {
        println!("prices     {}", plan.price_source);
    }
    for c in &plan.changes {
        println!("changed    {c}");
    }
    for w in &plan.warnings {
        println!("warning    {w}");
    }
}

fn print_all(all: &[Planned]) {
    let mut header: Vec<String> = vec!["".into(), "CLOUD".into()];
    header.extend(HEADER[1..].iter().map(|h| h.to_string()));
    let mut body = Vec::new();
    let mut cheapest: Option<&Plan> = None;
    for p in all {
        if let Ok((plan, _)) = &p.result {
            for mut r in rows(plan) {
                r.insert(1, p.cloud.to_string());
                body.push(r);
            }
            if plan.market != Market::Local
                && cheapest
                    .is_none_or(|c| plan.price_micro_usd_per_hour < c.price_micro_usd_per_hour)
            {
                cheapest = Some(plan);
            }
        }
    }
    for l in table(header, body) {
        println!("{l}");
    }
    println!();
    if let Some(plan) = cheapest {
        println!(
            "cheapest   {} {} at {} (of the clouds; local is free)",
            plan.cloud,
            plan.machine,
            usd(plan.price_micro_usd_per_hour)
        );
    }
    // One line per source, naming the clouds priced from it.
    let mut sources: Vec<(Vec<String>, &str)> = Vec::new();
    for p in all {
        match &p.result {
            Err(why) => println!("refused    {}: {why}", p.cloud),
            Ok((plan, _)) if !plan.price_source.is_empty() => {
                match sources.iter_mut().find(|(_, s)| *s == plan.price_source) {
                    Some((clouds, _)) => clouds.push(p.cloud.to_string()),
                    None => sources.push((vec![p.cloud.to_string()], &plan.price_source)),
                }
            }
            Ok(_) => {}
        }
    }
    for (clouds, source) in sources {
        println!("prices     {}: {source}", clouds.join(", "));
    }
    for p in all {
        if let Ok((plan, _)) = &p.result {
            for w in plan.changes.iter().chain(&plan.warnings) {
                println!("note       {}: {w}", p.cloud);
            }
        }
    }
}
