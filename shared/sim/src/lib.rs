//! `studio simulate`: what spot saves and what interruptions cost, and
//! what the control plane does at scale, found on one machine.
//!
//! A discrete-event simulation drives the **same handler code and worker
//! rules** as the real backends over a simulated clock, store, queue,
//! fleet and market; only the scripts' runs are simulated.
//!
//! # Layout
//! - [`sched`]: the event queue and the clock that jumps between events.
//! - [`mem`]: the job store and work queues in memory, with the real
//!   services' semantics, and the [`mem::Meter`] counting every call.
//! - [`fleet`]: worker groups, machines, boots, bills and reclaims.
//! - [`market`]: spot discounts and interruption frequencies per type.
//! - [`workload`]: the jobs, from a file or a seeded generator.
//! - [`scenario`]: the policies compared and the presets.
//! - [`engine`]: one policy's run, event by event.
//! - [`report`]: the table and the JSON.

pub mod engine;
pub mod fleet;
pub mod market;
pub mod mem;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sched;
pub mod workload;

pub use engine::Outcome;
pub use report::{PolicyReport, Report};
pub use scenario::{Policy, Scenario};

/// Runs every policy of the scenario, one after the other.
///
/// # Errors
/// A job the handlers refused, or a policy whose work had not ended at the
/// horizon.
pub async fn simulate(s: &Scenario) -> Result<(Report, Vec<Outcome>), String> {
    let mut outcomes = Vec::new();
    let mut policies = Vec::new();
    for i in 0..s.policies.len() {
        let o = engine::Engine::new(s, i).run().await?;
        policies.push(report::policy_report(s, i, &o));
        outcomes.push(o);
    }
    Ok((
        Report {
            seed: s.seed,
            jobs: s.jobs.len(),
            policies,
        },
        outcomes,
    ))
}

/// This process's peak resident memory, bytes (Linux `ru_maxrss`).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0;
    }
    u.ru_maxrss.max(0) as u64 * 1024
}
