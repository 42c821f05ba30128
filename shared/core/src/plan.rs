//! What machine a request runs on and what it costs.
//!
//! The [`Planner`] port turns a request into a [`Plan`]. [`LocalPlanner`]
//! plans the embedded backend's jobs only; [`CatalogPlanner`] plans every
//! cloud from the EC2 catalogue and the GCE rate table (used by `studio plan`
//! and, with the cloud backends, by submit).

use crate::catalog::{select_ec2, Arch, Candidate, Catalog, Ec2Request};
use crate::contract::SubmitJob;
use crate::gce::{gce_shape, GceError, GceRates};
use crate::resources::{Bid, Cloud, Machine, Market, ResourceRequest};
use crate::size::format_mib;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// How many fitting types a spot pool may use (mixed instances).
pub const SPOT_CANDIDATES: usize = 10;
/// The GCE region plans assume when none is given (the rate table's).
pub const GCE_DEFAULT_REGION: &str = "us-central1";

/// The machine choice for a request. Prices are millionths of USD per hour.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    pub cloud: Cloud,
    pub region: Option<String>,
    pub market: Market,
    /// The chosen machine type (the cheapest fitting one), or a GCE custom shape.
    pub machine: String,
    /// Every type the pool may use, best first (spot pools use several).
    pub machine_types: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    pub gpu_model: Option<String>,
    /// Expected price: the spot price where known for spot, else on-demand.
    pub price_micro_usd_per_hour: u64,
    /// Whether that price is a spot (or preemptible) price: false for a
    /// spot plan ranked by on-demand prices (no spot price known).
    pub spot_price_known: bool,
    pub on_demand_micro_usd_per_hour: u64,
    /// The most the pool pays for a spot machine (from `--bid`); `None`: up to on-demand.
    pub max_price_micro_usd_per_hour: Option<u64>,
    pub candidates: Vec<Candidate>,
    /// How the request was upsized to a valid shape, in words.
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
    /// GCE: `TERMINATE` for GPU machines (they cannot live-migrate).
    pub on_host_maintenance: Option<String>,
    /// Where the prices come from and of when (catalogue, rate table).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub price_source: String,
}

impl Plan {
    /// The plan as a job record keeps it: without the ranked candidates.
    /// They are the planner's working (the dry run shows them); the pool
    /// keeps the machine types, and the record is written several times
    /// per job, each write charged by its size (DynamoDB: per KB). Ten
    /// candidates were two thirds of a spot job's record.
    pub fn for_record(mut self) -> Plan {
        self.candidates = Vec::new();
        self.price_source = String::new();
        self
    }

    /// A plan for the best of `candidates` (the first); the others are what
    /// a mixed-instances pool may also use.
    fn from_candidates(cloud: Cloud, region: String, candidates: Vec<Candidate>) -> Plan {
        let best = candidates[0].clone();
        Plan {
            cloud,
            region: Some(region),
            market: cloud.market(),
            machine: best.machine,
            machine_types: candidates.iter().map(|c| c.machine.clone()).collect(),
            vcpus: best.vcpus,
            memory_mib: best.memory_mib,
            gpus: best.gpus,
            gpu_model: best.gpu_model,
            price_micro_usd_per_hour: best.price_micro_usd_per_hour,
            on_demand_micro_usd_per_hour: best.on_demand_micro_usd_per_hour,
            spot_price_known: best.spot_price_known,
            candidates,
            ..Plan::default()
        }
    }

    /// The plan of a local job: a worker process on this machine, free.
    pub fn local(r: &ResourceRequest) -> Plan {
        Plan {
            cloud: Cloud::Local,
            market: Market::Local,
            machine: "local".into(),
            machine_types: vec!["local".into()],
            vcpus: r.cpus,
            memory_mib: r.ram_mib.unwrap_or(0),
            gpus: r.gpus,
            ..Plan::default()
        }
    }

    /// The plan of a local job on `machine`: refused when it asks for more
    /// memory than the machine has (it could only swap or be killed);
    /// warned when it asks for more CPUs (it runs on all there are).
    ///
    /// # Errors
    /// [`PlanError::Request`] for `--ram` above the machine's memory.
    pub fn local_on(job: &SubmitJob, machine: &Machine) -> Result<Plan, PlanError> {
        let r = &job.resources;
        let mut p = Plan::local(r);
        p.vcpus = r.cpus.min(machine.cpus);
        p.memory_mib = r.ram_mib.unwrap_or(machine.memory_mib);
        let size = format!("{} vCPU, {}", machine.cpus, format_mib(machine.memory_mib));
        if let Some(ram) = r
            .ram_mib
            .filter(|m| machine.memory_mib > 0 && *m > machine.memory_mib)
        {
            return Err(PlanError::Request(format!(
                "--ram {} is more than this machine has ({size}); ask for less, or run on a cloud (--cloud=ec2spot)",
                format_mib(ram)
            )));
        }
        if r.cpus > machine.cpus {
            p.warnings.push(format!(
                "--cpus {} is more than this machine has ({size}): the job runs on all {}",
                r.cpus, machine.cpus
            ));
        }
        if r.gpus > 0 {
            p.warnings.push(format!(
                "--gpus {} is not held locally: the job sees whatever GPUs this machine has",
                r.gpus
            ));
        }
        if job.bid.is_some() {
            p.warnings
                .push("--bid applies to ec2spot only; ignored on local".into());
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    #[error("cloud '{0}' is not configured in this installation: only 'local' runs here for now")]
    CloudUnavailable(Cloud),
    #[error("too extravagant: {0}")]
    NoMachineFits(String),
    #[error("no EC2 catalogue for region {asked} (this one is for {have}): run `studio catalog refresh --region {asked}`")]
    NoCatalog { asked: String, have: String },
    #[error("{0}")]
    Request(String),
}

/// Largest gp3 EBS volume, in GiB.
pub const MAX_GP3_GIB: u64 = 16_384;

/// Chooses machines.
pub trait Planner: Send + Sync {
    /// # Errors
    /// [`PlanError`] when no machine fits or the cloud is not available.
    fn plan(&self, job: &SubmitJob) -> Result<Plan, PlanError>;
}

/// Plans `local` jobs; every other cloud is refused by name.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPlanner;

impl Planner for LocalPlanner {
    fn plan(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        match job.cloud {
            Cloud::Local => Plan::local_on(job, &Machine::this()),
            other => Err(PlanError::CloudUnavailable(other)),
        }
    }
}

/// Plans every cloud from a catalogue and a rate table.
#[derive(Debug, Clone)]
pub struct CatalogPlanner {
    pub ec2: Arc<Catalog>,
    pub gce: GceRates,
}

impl CatalogPlanner {
    /// The planner over the data shipped in the repository.
    pub fn shipped() -> CatalogPlanner {
        CatalogPlanner {
            ec2: Catalog::shipped(),
            gce: GceRates::shipped(),
        }
    }

    fn plan_ec2(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        let cat = &*self.ec2;
        // The root volume is gp3: 1 GiB to 16 TiB (EBS volume types). Refused
        // here, not by RunInstances after the group is made.
        if let Some(gib) = job.resources.hdd_gib.filter(|g| *g > MAX_GP3_GIB) {
            return Err(PlanError::NoMachineFits(format!(
                "--hdd {gib} GiB is more than an EC2 gp3 volume holds (16 TiB, {MAX_GP3_GIB} GiB)"
            )));
        }
        if let Some(asked) = job.region.as_ref().filter(|r| **r != cat.region) {
            return Err(PlanError::NoCatalog {
                asked: asked.clone(),
                have: cat.region.clone(),
            });
        }
        let spot = job.cloud == Cloud::Ec2spot;
        let req = Ec2Request {
            cpus: job.resources.cpus,
            gpus: job.resources.gpus,
            ram_mib: job.resources.ram_mib,
            spot,
            arch: job.arch.unwrap_or(Arch::X86_64),
            gpu_model: job.gpu_type.clone(),
            allow_burstable: false,
            max_candidates: if spot { SPOT_CANDIDATES } else { 1 },
        };
        let mut candidates = select_ec2(cat, &req).map_err(|e| PlanError::NoMachineFits(e.0))?;
        let mut warnings = Vec::new();
        let max_price = resolve_bid(job.cloud, job.bid, &mut candidates, &mut warnings);
        let best = &candidates[0];
        if spot && !best.spot_price_known {
            warnings.push(format!(
                "no spot price known for {} in {}: ranked by on-demand price (run `studio catalog refresh` for live spot prices)",
                best.machine, cat.region
            ));
        }
        Ok(Plan {
            max_price_micro_usd_per_hour: max_price,
            warnings,
            price_source: format!(
                "EC2 {} catalogue of {}: {}",
                cat.region,
                cat.generated_at.get(..10).unwrap_or(&cat.generated_at),
                cat.source
            ),
            ..Plan::from_candidates(job.cloud, cat.region.clone(), candidates)
        })
    }

    fn plan_gce(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        if job.arch.is_some_and(|a| a != Arch::X86_64) {
            return Err(PlanError::Request(
                "GCE custom N1 machine types are x86_64 only; drop --arch".into(),
            ));
        }
        let r = &job.resources;
        let shape = gce_shape(
            r.cpus,
            r.ram_mib,
            r.gpus,
            job.gpu_type.as_deref(),
            &self.gce,
        )
        .map_err(|e| match e {
            GceError::Request(m) => PlanError::NoMachineFits(m),
            other => PlanError::Request(other.to_string()),
        })?;
        let preemptible = job.cloud == Cloud::Gcspot;
        let cand = Candidate {
            machine: shape.machine(),
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            gpus: shape.gpus,
            gpu_model: shape.gpu_type.clone(),
            price_micro_usd_per_hour: shape.price(&self.gce, preemptible),
            on_demand_micro_usd_per_hour: shape.price(&self.gce, false),
            spot_price_known: preemptible,
            zone: None,
            bid_cap_micro_usd_per_hour: None,
        };
        let mut warnings = Vec::new();
        let region = job
            .region
            .clone()
            .unwrap_or_else(|| GCE_DEFAULT_REGION.into());
        if region != GCE_DEFAULT_REGION {
            warnings.push(format!(
                "prices are {GCE_DEFAULT_REGION}'s (the shipped rate table); {region}'s may differ"
            ));
        }
        let mut cands = vec![cand];
        resolve_bid(job.cloud, job.bid, &mut cands, &mut warnings);
        Ok(Plan {
            changes: shape.changes,
            warnings,
            on_host_maintenance: (shape.gpus > 0).then(|| "TERMINATE".to_string()),
            price_source: format!("GCE rate table: {}", self.gce.source),
            ..Plan::from_candidates(job.cloud, region, cands)
        })
    }
}

impl Planner for CatalogPlanner {
    fn plan(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        match job.cloud {
            Cloud::Local => Plan::local_on(job, &Machine::this()),
            Cloud::Ec2 | Cloud::Ec2spot => self.plan_ec2(job),
            Cloud::Gcloud | Cloud::Gcspot => self.plan_gce(job),
        }
    }
}

fn usd(micro: u64) -> String {
    format!("${:.4}/h", micro as f64 / 1e6)
}

/// The spot price cap a bid means for the pool, with warnings for bids
/// that will not do what the user expects.
///
/// A share of on-demand is a cap per type (60 % of each type's own
/// on-demand price), shown on each candidate; but an EC2 group takes one
/// `SpotMaxPrice` for all its types, so the pool's cap is the lowest of
/// them, and no type is ever paid more than the bid. Types whose known spot
/// price is above the pool's cap could never launch: they leave the pool
/// (unless none is left, then the bid is warned about).
fn resolve_bid(
    cloud: Cloud,
    bid: Option<Bid>,
    candidates: &mut Vec<Candidate>,
    warnings: &mut Vec<String>,
) -> Option<u64> {
    let bid = bid?;
    match cloud {
        Cloud::Ec2spot => {}
        Cloud::Gcspot => {
            warnings.push("--bid is ignored on gcspot: preemptible prices are fixed".into());
            return None;
        }
        other => {
            warnings.push(format!("--bid applies to ec2spot only; ignored on {other}"));
            return None;
        }
    }
    for c in candidates.iter_mut() {
        c.bid_cap_micro_usd_per_hour = Some(match bid {
            Bid::MicroUsdPerHour(m) => m,
            Bid::BasisPointsOfOnDemand(bp) => c.on_demand_micro_usd_per_hour * bp as u64 / 10_000,
        });
    }
    let max = candidates
        .iter()
        .filter_map(|c| c.bid_cap_micro_usd_per_hour)
        .min()?;
    let launchable = |c: &Candidate| !c.spot_price_known || c.price_micro_usd_per_hour <= max;
    if candidates.iter().any(launchable) {
        let before = candidates.len();
        candidates.retain(launchable);
        if candidates.len() < before {
            warnings.push(format!(
                "{} of the fitting types left the pool: their spot price is above the bid's cap {}",
                before - candidates.len(),
                usd(max)
            ));
        }
    } else {
        let best = &candidates[0];
        warnings.push(format!(
            "bid {} is below the current spot price {} of {}: workers may not start",
            usd(max),
            usd(best.price_micro_usd_per_hour),
            best.machine
        ));
    }
    let best = &candidates[0];
    if max > best.on_demand_micro_usd_per_hour {
        warnings.push(format!(
            "bid {} is above the on-demand price {} of {}: --cloud=ec2 would cost less",
            usd(max),
            usd(best.on_demand_micro_usd_per_hour),
            best.machine
        ));
    }
    Some(max)
}
