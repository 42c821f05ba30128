//! What machine a request runs on and what it costs.
//!
//! The [`Planner`] port turns a request into a [`Plan`]. The local backend's
//! planner is here; the catalogue-backed EC2/GCE planner plugs into the same
//! port.

use crate::contract::SubmitJob;
use crate::resources::{Cloud, Market};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The machine choice for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub cloud: Cloud,
    pub region: Option<String>,
    pub market: Market,
    /// The chosen machine type (the cheapest fitting one).
    pub machine: String,
    /// Every type the pool may use, best first (mixed-instances pools use several).
    pub machine_types: Vec<String>,
    /// Expected price, millionths of USD per hour.
    pub price_micro_usd_per_hour: u64,
    /// The most the pool pays for a spot machine, if capped.
    pub max_price_micro_usd_per_hour: Option<u64>,
}

impl Plan {
    /// The plan of every local job: a worker process, free.
    pub fn local() -> Plan {
        Plan {
            cloud: Cloud::Local,
            region: None,
            market: Market::Local,
            machine: "local".into(),
            machine_types: vec!["local".into()],
            price_micro_usd_per_hour: 0,
            max_price_micro_usd_per_hour: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    #[error("cloud '{0}' is not configured in this installation: only 'local' runs here for now")]
    CloudUnavailable(Cloud),
    #[error("too extravagant: {0}")]
    NoMachineFits(String),
}

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
            Cloud::Local => Ok(Plan::local()),
            other => Err(PlanError::CloudUnavailable(other)),
        }
    }
}
