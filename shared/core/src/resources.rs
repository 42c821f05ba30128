//! What a job asks for: the cloud, the machine's size, the bid and how many
//! workers. Everything here is validated and normalized once, so that two
//! requests that mean the same thing (`--ram=16g`, `--ram=16GiB`) compare equal
//! and land in the same pool.

use crate::size::{parse_size, round_up, SizeError, GIB, MIB};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// RAM is rounded up to a multiple of this many MiB (what clouds sell).
pub const RAM_STEP_MIB: u64 = 256;

/// Where a job runs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// The embedded backend: worker processes on this machine.
    #[default]
    Local,
    Ec2,
    Ec2spot,
    Gcloud,
    Gcspot,
}

impl Cloud {
    pub const ALL: [Cloud; 5] = [
        Cloud::Local,
        Cloud::Ec2,
        Cloud::Ec2spot,
        Cloud::Gcloud,
        Cloud::Gcspot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Local => "local",
            Cloud::Ec2 => "ec2",
            Cloud::Ec2spot => "ec2spot",
            Cloud::Gcloud => "gcloud",
            Cloud::Gcspot => "gcspot",
        }
    }

    /// How machines of this cloud are bought.
    pub fn market(self) -> Market {
        match self {
            Cloud::Local => Market::Local,
            Cloud::Ec2 | Cloud::Gcloud => Market::OnDemand,
            Cloud::Ec2spot | Cloud::Gcspot => Market::Spot,
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Cloud {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cloud::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| RequestError::UnknownCloud(s.to_string()))
    }
}

/// How a machine is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    OnDemand,
    Spot,
    #[default]
    Local,
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Market::OnDemand => "on-demand",
            Market::Spot => "spot",
            Market::Local => "local",
        })
    }
}

/// The size of this machine, as local jobs see it: the CPUs this process
/// may use and the memory the kernel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mem_total_mib(&t))
                .unwrap_or(0),
        }
    }
}

/// `MemTotal` of a `/proc/meminfo`, in MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    crate::size::proc_kib(meminfo, "MemTotal:").map(|kib| kib / 1024)
}

/// A validated, normalized machine request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// vCPUs, at least 1.
    pub cpus: u32,
    /// GPUs, 0 or more.
    #[serde(default)]
    pub gpus: u32,
    /// RAM in MiB, a multiple of [`RAM_STEP_MIB`]; `None` lets the planner choose.
    #[serde(default)]
    pub ram_mib: Option<u64>,
    /// Root disk in GiB, rounded up; `None` means the image's default.
    #[serde(default)]
    pub hdd_gib: Option<u64>,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        ResourceRequest {
            cpus: 1,
            gpus: 0,
            ram_mib: None,
            hdd_gib: None,
        }
    }
}

impl ResourceRequest {
    /// Builds a request from the user's spelling of it.
    ///
    /// # Errors
    /// [`RequestError`] when a count is zero or a size does not parse.
    pub fn parse(
        cpus: u32,
        gpus: u32,
        ram: Option<&str>,
        hdd: Option<&str>,
    ) -> Result<Self, RequestError> {
        let ram_mib = ram
            .map(|r| {
                parse_size(r).map_err(|e| RequestError::Size {
                    flag: "ram",
                    source: e,
                })
            })
            .transpose()?
            .map(|bytes| round_up(bytes, RAM_STEP_MIB * MIB) / MIB);
        let hdd_gib = hdd
            .map(|h| {
                parse_size(h).map_err(|e| RequestError::Size {
                    flag: "hdd",
                    source: e,
                })
            })
            .transpose()?
            .map(|bytes| round_up(bytes, GIB) / GIB);
        let req = ResourceRequest {
            cpus,
            gpus,
            ram_mib,
            hdd_gib,
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks a request that arrived already in numbers (a queue message).
    ///
    /// # Errors
    /// [`RequestError`] for zero vCPUs, zero RAM or disk, or RAM that is not
    /// a whole number of 256 MiB steps.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.cpus == 0 {
            return Err(RequestError::NotPositive("cpus"));
        }
        if self.cpus > 1024 || self.gpus > 64 {
            return Err(RequestError::Extravagant(format!(
                "{} vCPUs and {} GPUs is more than any machine has",
                self.cpus, self.gpus
            )));
        }
        match self.ram_mib {
            Some(0) => return Err(RequestError::NotPositive("ram")),
            Some(m) if !m.is_multiple_of(RAM_STEP_MIB) => {
                return Err(RequestError::RamStep(m));
            }
            _ => {}
        }
        if self.hdd_gib == Some(0) {
            return Err(RequestError::NotPositive("hdd"));
        }
        Ok(())
    }
}

/// The most a job will pay for a spot machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bid {
    /// An absolute price, in millionths of a US dollar per hour.
    MicroUsdPerHour(u64),
    /// A share of the chosen machine's on-demand price, in hundredths of a percent.
    BasisPointsOfOnDemand(u32),
}

impl FromStr for Bid {
    type Err = RequestError;
    /// `0.35` (USD per hour) or `60%` (of the on-demand price).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || RequestError::Bid(s.to_string());
        if let Some(pct) = t.strip_suffix('%') {
            let v: f64 = pct.trim().parse().map_err(|_| bad())?;
            if !v.is_finite() || v <= 0.0 {
                return Err(RequestError::BidNotPositive(s.to_string()));
            }
            if v > 10_000.0 {
                return Err(bad());
            }
            Ok(Bid::BasisPointsOfOnDemand((v * 100.0).round() as u32))
        } else {
            let v: f64 = t.trim_start_matches('$').parse().map_err(|_| bad())?;
            if !v.is_finite() || v <= 0.0 {
                return Err(RequestError::BidNotPositive(s.to_string()));
            }
            if v > 1_000_000.0 {
                return Err(bad());
            }
            Ok(Bid::MicroUsdPerHour((v * 1e6).round() as u64))
        }
    }
}

impl fmt::Display for Bid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bid::MicroUsdPerHour(m) => write!(f, "${}/h", *m as f64 / 1e6),
            Bid::BasisPointsOfOnDemand(bp) => write!(f, "{}%", *bp as f64 / 100.0),
        }
    }
}

/// How many workers a pool keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerPolicy {
    /// `--num-workers N`: keep exactly N while the pool lives.
    Fixed(u32),
    /// Start with one worker and add more while work waits, up to a cap.
    Auto,
}

impl WorkerPolicy {
    /// # Errors
    /// [`RequestError::NotPositive`] for `Some(0)`.
    pub fn from_flag(num_workers: Option<u32>) -> Result<Self, RequestError> {
        match num_workers {
            None => Ok(WorkerPolicy::Auto),
            Some(0) => Err(RequestError::NotPositive("num-workers")),
            Some(n) => Ok(WorkerPolicy::Fixed(n)),
        }
    }
}

/// Why a request was rejected. Messages are one line and say what to change.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RequestError {
    #[error("--{flag}: {source}")]
    Size {
        flag: &'static str,
        #[source]
        source: SizeError,
    },
    #[error("--{0} must be at least 1")]
    NotPositive(&'static str),
    #[error("ram_mib {0} is not a multiple of 256 MiB")]
    RamStep(u64),
    #[error("unknown cloud '{0}': expected one of local, ec2, ec2spot, gcloud, gcspot")]
    UnknownCloud(String),
    #[error("--bid '{0}' is not a price: use USD per hour (0.35) or a share of on-demand (60%)")]
    Bid(String),
    #[error("--bid '{0}' must be greater than zero")]
    BidNotPositive(String),
    #[error("too extravagant: {0}")]
    Extravagant(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_reads_the_kernels_kib_as_mib() {
        let t = "MemFree:  100 kB\nMemTotal:       24683772 kB\n";
        assert_eq!(mem_total_mib(t), Some(24105));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn ram_is_rounded_up_to_256_mib_and_spellings_normalize_equal() {
        let a = ResourceRequest::parse(8, 1, Some("16g"), None).unwrap();
        let b = ResourceRequest::parse(8, 1, Some("16GiB"), None).unwrap();
        let c = ResourceRequest::parse(8, 1, Some("16384 MB"), None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.ram_mib, Some(16384));
        let odd = ResourceRequest::parse(1, 0, Some("3.1g"), None).unwrap();
        assert_eq!(odd.ram_mib, Some(3328)); // 3174.4 MiB -> 13 x 256
        let tiny = ResourceRequest::parse(1, 0, Some("1k"), Some("1m")).unwrap();
        assert_eq!(tiny.ram_mib, Some(256));
        assert_eq!(tiny.hdd_gib, Some(1));
    }

    #[test]
    fn zero_counts_and_bad_sizes_are_rejected_naming_the_flag() {
        let e = ResourceRequest::parse(0, 0, None, None).unwrap_err();
        assert_eq!(e.to_string(), "--cpus must be at least 1");
        let e = ResourceRequest::parse(1, 0, Some("16"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--ram: size '16' has no unit: add a unit, e.g. 16g"
        );
        let e = ResourceRequest::parse(1, 0, None, Some("lots")).unwrap_err();
        assert!(
            e.to_string().starts_with("--hdd: 'lots' is not a size"),
            "{e}"
        );
        assert_eq!(
            WorkerPolicy::from_flag(Some(0)).unwrap_err().to_string(),
            "--num-workers must be at least 1"
        );
    }

    #[test]
    fn clouds_parse_and_unknown_ones_are_named() {
        for c in Cloud::ALL {
            assert_eq!(c.as_str().parse::<Cloud>().unwrap(), c);
        }
        assert_eq!("EC2Spot".parse::<Cloud>().unwrap(), Cloud::Ec2spot);
        let e = "azure".parse::<Cloud>().unwrap_err().to_string();
        assert!(e.contains("unknown cloud 'azure'"), "{e}");
        assert_eq!(Cloud::Ec2spot.market(), Market::Spot);
        assert_eq!(Cloud::Gcloud.market(), Market::OnDemand);
    }

    #[test]
    fn bids_parse_as_price_or_share() {
        assert_eq!("0.35".parse::<Bid>(), Ok(Bid::MicroUsdPerHour(350_000)));
        assert_eq!("$1.2".parse::<Bid>(), Ok(Bid::MicroUsdPerHour(1_200_000)));
        assert_eq!("60%".parse::<Bid>(), Ok(Bid::BasisPointsOfOnDemand(6000)));
        assert_eq!(
            "62.5 %".parse::<Bid>(),
            Ok(Bid::BasisPointsOfOnDemand(6250))
        );
        assert!(matches!(
            "0".parse::<Bid>(),
            Err(RequestError::BidNotPositive(_))
        ));
        assert!(matches!(
            "-5%".parse::<Bid>(),
            Err(RequestError::BidNotPositive(_))
        ));
        assert!(matches!("cheap".parse::<Bid>(), Err(RequestError::Bid(_))));
        assert_eq!(Bid::BasisPointsOfOnDemand(6000).to_string(), "60%");
    }

    #[test]
    fn message_requests_are_validated_too() {
        let mut r = ResourceRequest {
            ram_mib: Some(1000),
            ..ResourceRequest::default()
        };
        assert_eq!(r.validate(), Err(RequestError::RamStep(1000)));
        r.ram_mib = Some(0);
        assert_eq!(r.validate(), Err(RequestError::NotPositive("ram")));
        r.ram_mib = Some(1024);
        assert_eq!(r.validate(), Ok(()));
    }
}
