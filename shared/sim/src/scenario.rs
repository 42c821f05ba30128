//! What a simulation compares: the policies, and the scenario they all
//! run (the same workload, market and seed).

use crate::market::Market;
use crate::rng::Rng;
use crate::workload::{Generator, SimJob};
use std::time::Duration;

/// A way of running the same work.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// In words, for the report.
    pub about: String,
    /// Spot requests run on-demand instead.
    pub on_demand: bool,
    /// One machine type per pool (the cheapest) instead of several.
    pub one_type: bool,
    /// An attempt resumes from the job's last checkpoint (else from scratch).
    pub resume: bool,
    /// Scale-up waits for a queue-depth alarm standing this long.
    pub alarm: Option<Duration>,
    /// The deployment's `STUDIO_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// Jobs ask `--fallback-on-demand`: out of spot attempts, on-demand.
    pub fallback: bool,
}

impl Policy {
    /// All on-demand; Studio in 2017; Studio now; Studio now falling back
    /// to on-demand after the first interruption.
    pub fn standard() -> Vec<Policy> {
        let now = Policy {
            name: "studio".into(),
            about: "spot over diversified types, checkpoint resume, scaling at once, on-demand after 3 attempts".into(),
            on_demand: false,
            one_type: false,
            resume: true,
            alarm: None,
            max_attempts: 3,
            fallback: true,
        };
        vec![
            Policy {
                name: "on-demand".into(),
                about: "every job on on-demand machines".into(),
                on_demand: true,
                ..now.clone()
            },
            Policy {
                name: "studio-2017".into(),
                about:
                    "one spot type, re-run from scratch, scale-up after a 300 s queue-depth alarm"
                        .into(),
                one_type: true,
                resume: false,
                alarm: Some(Duration::from_secs(300)),
                max_attempts: 100,
                fallback: false,
                ..now.clone()
            },
            now.clone(),
            Policy {
                name: "studio-k1".into(),
                about: "as studio, on-demand after the first interruption (K = 1)".into(),
                max_attempts: 1,
                ..now
            },
        ]
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub jobs: Vec<SimJob>,
    pub market: Market,
    pub policies: Vec<Policy>,
    /// The deployment's `STUDIO_MAX_WORKERS`.
    pub max_workers: u32,
    /// What an attempt spends before its script computes (workspace,
    /// environment from the cache, checkpoint restored).
    pub setup: Duration,
    /// A run that has not ended this long after its start failed.
    pub horizon: Duration,
    /// Machines reclaimed at given times from the start (by their id, as
    /// the fleet names them: `i-00000001` is the first launched), besides
    /// the market's own: for replaying a known scenario.
    pub reclaims: Vec<(String, Duration)>,
}

impl Scenario {
    /// A named preset: `standard` (the market as the Spot Advisor's
    /// buckets say, 1,000 jobs) or `volatile` (the same work in a market
    /// interrupting 200 times as often).
    ///
    /// # Errors
    /// An unknown name.
    pub fn preset(name: &str, seed: u64) -> Result<Scenario, String> {
        let mut market = Market::default();
        match name {
            "standard" => {}
            "volatile" => market.interruption_scale = 200.0,
            other => return Err(format!("no preset {other:?}: use standard or volatile")),
        }
        Ok(Scenario {
            seed,
            jobs: Generator::standard(1000).generate(&mut Rng::stream(seed, 0)),
            market,
            policies: Policy::standard(),
            max_workers: 20,
            setup: Duration::from_secs(45),
            horizon: Duration::from_secs(60 * 86_400),
            reclaims: Vec::new(),
        })
    }
}
