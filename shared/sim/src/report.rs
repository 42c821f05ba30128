//! What a run says: per policy, the cost (machines and API calls), the
//! time to finish, interruptions and the work they threw away; a table
//! for people and JSON for programs. Every figure is computed from integers
//! in a fixed order, so the same seed prints the same bytes.

use crate::engine::{Outcome, START};
use crate::mem::Service;
use crate::scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeMap;
use studio_core::job::JobState;

/// API prices, millionths of a millionth of USD per call or unit (so an
/// integer holds them), us-east-1, as published on 2026-12-07:
/// SQS standard $0.40 per million requests; DynamoDB on-demand (since
/// 2024-11-01) $0.625 per million write units and $0.125 per million read
/// units; Lambda $0.20 per million requests (its duration is not counted).
/// EC2, Auto Scaling and EventBridge's AWS events cost nothing per call.
const PICO_USD_SQS: u64 = 400_000;
const PICO_USD_WRU: u64 = 625_000;
const PICO_USD_RRU: u64 = 125_000;
const PICO_USD_LAMBDA: u64 = 200_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyReport {
    pub name: String,
    pub about: String,
    pub jobs: usize,
    pub jobs_finished: usize,
    pub jobs_failed: usize,
    pub jobs_cancelled: usize,
    pub total_cost_usd: f64,
    pub spot_cost_usd: f64,
    pub on_demand_cost_usd: f64,
    pub api_cost_usd: f64,
    pub makespan_s: u64,
    pub p50_completion_s: u64,
    pub p95_completion_s: u64,
    pub interruptions: u64,
    pub work_lost_s: u64,
    pub machines_launched: u64,
    /// Calls by service: `sqs`, `dynamodb`, `ec2` (EC2 and Auto Scaling),
    /// `lambda` (invocations).
    pub api_calls: BTreeMap<String, u64>,
    pub dynamodb_read_units: u64,
    pub dynamodb_write_units: u64,
    /// Simulated time from the first submit to the last machine gone.
    pub simulated_s: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub jobs: usize,
    pub policies: Vec<PolicyReport>,
}

fn usd(micro: u64) -> f64 {
    // Cents' hundredths: rounding to 1e-4 USD keeps the JSON short.
    (micro as f64 / 100.0).round() / 10_000.0
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn policy_report(s: &Scenario, index: usize, o: &Outcome) -> PolicyReport {
    let p = &s.policies[index];
    let count = |st: JobState| o.jobs.iter().filter(|j| j.state == st).count();
    let mut completion: Vec<u64> = Vec::new();
    let mut last_end = START;
    for j in &o.jobs {
        if let Some(end) = j.ended_at() {
            last_end = last_end.max(end);
            let arrived = o.arrivals.get(&j.id).copied().unwrap_or(0);
            completion.push((end.0 - START.0 - arrived).max(0) as u64 / 1000);
        }
    }
    completion.sort_unstable();
    let first = s.jobs.iter().map(|j| j.arrive_ms).min().unwrap_or(0);
    let interruptions = o
        .jobs
        .iter()
        .flat_map(|j| &j.attempts)
        .filter(|a| a.outcome == Some(JobState::Interrupted))
        .count() as u64;
    let c = &o.counts;
    let service = |sv: Service| c.by_service.get(&sv).copied().unwrap_or(0);
    let (sqs, ddb, fleet) = (
        service(Service::Sqs),
        service(Service::DynamoDb),
        service(Service::Fleet),
    );
    let api_pico = sqs * PICO_USD_SQS
        + c.wru * PICO_USD_WRU
        + c.rru * PICO_USD_RRU
        + c.lambda * PICO_USD_LAMBDA;
    let api_micro = api_pico / 1_000_000;
    PolicyReport {
        name: p.name.clone(),
        about: p.about.clone(),
        jobs: o.jobs.len(),
        jobs_finished: count(JobState::Finished),
        jobs_failed: count(JobState::Failed),
        jobs_cancelled: count(JobState::Cancelled),
        total_cost_usd: usd(o.bill.spot + o.bill.on_demand + api_micro),
        spot_cost_usd: usd(o.bill.spot),
        on_demand_cost_usd: usd(o.bill.on_demand),
        api_cost_usd: usd(api_micro),
        makespan_s: ((last_end.0 - START.0 - first).max(0) / 1000) as u64,
        p50_completion_s: quantile(&completion, 0.50),
        p95_completion_s: quantile(&completion, 0.95),
        interruptions,
        work_lost_s: (o.work_lost_ms.max(0) / 1000) as u64,
        machines_launched: o.bill.machines,
        api_calls: BTreeMap::from([
            ("sqs".to_string(), sqs),
            ("dynamodb".to_string(), ddb),
            ("ec2".to_string(), fleet),
            ("lambda".to_string(), c.lambda),
        ]),
        dynamodb_read_units: c.rru,
        dynamodb_write_units: c.wru,
        simulated_s: ((o.ended_at.0 - START.0) / 1000) as u64,
    }
}

fn hms(s: u64) -> String {
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

/// The comparison table.
pub fn table(r: &Report) -> String {
    let head = [
        "policy",
        "finished",
        "total $",
        "spot $",
        "on-demand $",
        "API $",
        "makespan",
        "p50",
        "p95",
        "interrupts",
        "work lost",
        "machines",
    ];
    let rows: Vec<Vec<String>> = r
        .policies
        .iter()
        .map(|p| {
            // Times over some of the jobs would read as times of all.
            let done = p.jobs_finished == p.jobs;
            let time = |s: u64| if done { hms(s) } else { "-".to_string() };
            vec![
                p.name.clone(),
                format!("{}/{}", p.jobs_finished, p.jobs),
                format!("{:.2}", p.total_cost_usd),
                format!("{:.2}", p.spot_cost_usd),
                format!("{:.2}", p.on_demand_cost_usd),
                format!("{:.2}", p.api_cost_usd),
                time(p.makespan_s),
                time(p.p50_completion_s),
                time(p.p95_completion_s),
                p.interruptions.to_string(),
                hms(p.work_lost_s),
                p.machines_launched.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                l.push_str(&format!("{c:<w$}", w = widths[i]));
            } else {
                l.push_str(&format!("  {c:>w$}", w = widths[i]));
            }
        }
        l.push('\n');
        l
    };
    let plural = if r.jobs == 1 { "job" } else { "jobs" };
    let mut out = format!("{} {plural}, seed {}\n\n", r.jobs, r.seed);
    out.push_str(&line(head.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        out.push_str(&line(row));
    }
    out.push('\n');
    for p in &r.policies {
        out.push_str(&format!("{}: {}\n", p.name, p.about));
    }
    out
}
