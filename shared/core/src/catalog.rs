//! The EC2 instance catalogue and the choice of the cheapest machine.
//!
//! One code path for both sources: `studio catalog refresh` builds a
//! [`Catalog`] from `DescribeInstanceTypes` (+ spot price history) and writes
//! it as JSON; the same JSON, shipped in the repository, is what planning
//! reads offline ([`Catalog::shipped`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// The JSON format version of a catalogue file.
pub const CATALOG_FORMAT: u32 = 1;

/// A CPU architecture as EC2 names it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    Arm64,
    /// i386, the mac variants: never chosen.
    #[serde(other)]
    Other,
}

impl Arch {
    pub fn is_x86_64(&self) -> bool {
        *self == Arch::X86_64
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
            Arch::Other => "other",
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" | "x86" => Ok(Arch::X86_64),
            "arm64" | "aarch64" | "arm" | "graviton" => Ok(Arch::Arm64),
            _ => Err(format!("unknown architecture '{s}': use x86_64 or arm64")),
        }
    }
}

/// The GPUs of an instance type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpus {
    pub count: u32,
    pub vendor: String,
    pub model: String,
    /// Memory of one GPU.
    pub memory_mib: u64,
}

/// One EC2 instance type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Gpus>,
    pub archs: Vec<Arch>,
    pub burstable: bool,
    pub current_generation: bool,
    pub on_demand: bool,
    pub spot: bool,
    /// FPGAs, Inferentia/Trainium, media accelerators: never chosen for plain CPU work.
    pub other_accelerators: bool,
    /// Millionths of USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_micro_usd: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_micro_usd: Option<u64>,
    /// The zone of that spot price (the region's cheapest for the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_zone: Option<String>,
}

impl InstanceType {
    pub fn gpu_count(&self) -> u32 {
        self.gpus.as_ref().map_or(0, |g| g.count)
    }

    /// `8 vCPU, 32 GiB, 1× NVIDIA T4 (16 GiB)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} vCPU, {}",
            self.vcpus,
            crate::size::format_mib(self.memory_mib)
        );
        if let Some(g) = &self.gpus {
            s.push_str(&format!(
                ", {}× {} {} ({})",
                g.count,
                g.vendor,
                g.model,
                crate::size::format_mib(g.memory_mib)
            ));
        }
        s
    }
}

/// A catalogue of one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub format: u32,
    pub region: String,
    pub generated_at: String,
    /// Where the specs and prices came from.
    pub source: String,
    pub types: Vec<InstanceType>,
}

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("catalogue file: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("catalogue format {0} is not supported (this build reads {CATALOG_FORMAT})")]
    Format(u32),
}

static SHIPPED: OnceLock<Arc<Catalog>> = OnceLock::new();

/// The current spot prices of a region's types, as a deployment keeps them
/// (`DescribeSpotPriceHistory`, refreshed by its scale function): per type
/// the lowest price across the region's zones, and that zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotPrices {
    pub region: String,
    /// RFC 3339, when they were read.
    pub fetched_at: String,
    pub source: String,
    pub prices: std::collections::BTreeMap<String, ZonePrice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZonePrice {
    pub zone: String,
    pub micro_usd: u64,
}

impl Catalog {
    /// # Errors
    /// [`CatalogError`] for a file that is not a catalogue of this format.
    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        let c: Catalog = serde_json::from_str(text)?;
        if c.format != CATALOG_FORMAT {
            return Err(CatalogError::Format(c.format));
        }
        Ok(c)
    }

    /// The catalogue shipped in the repository (us-east-1), parsed once.
    pub fn shipped() -> Arc<Catalog> {
        SHIPPED
            .get_or_init(|| {
                Arc::new(
                    Catalog::from_json(include_str!("../catalog/ec2-us-east-1.json"))
                        .expect("the shipped catalogue is valid (tested)"),
                )
            })
            .clone()
    }

    /// This catalogue with `prices` as its spot prices (a type they do not
    /// name has none), and its source saying where and when they come
    /// from. Prices of another region change nothing.
    pub fn with_spot_prices(&self, prices: &SpotPrices) -> Catalog {
        if prices.region != self.region {
            return self.clone();
        }
        let mut c = self.clone();
        for t in &mut c.types {
            let p = prices.prices.get(&t.name);
            t.spot_micro_usd = p.map(|p| p.micro_usd);
            t.spot_zone = p.map(|p| p.zone.clone());
        }
        let specs = self
            .source
            .split("; spot prices:")
            .next()
            .unwrap_or(&self.source);
        c.source = format!(
            "{specs}; spot prices: {} of {} ({} types)",
            prices.source,
            prices.fetched_at,
            prices.prices.len()
        );
        c
    }

    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types.iter().find(|t| t.name == name)
    }
}

/// What the EC2 selection is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Request {
    pub cpus: u32,
    pub gpus: u32,
    pub ram_mib: Option<u64>,
    pub spot: bool,
    pub arch: Arch,
    /// Pin a GPU model (`T4`, `A10G`, …), case-insensitive.
    pub gpu_model: Option<String>,
    pub allow_burstable: bool,
    /// How many fitting types to return (spot pools use several).
    pub max_candidates: usize,
}

/// A fitting type with the price it was ranked by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub machine: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// The price ranked by: spot (where known) for spot requests, else on-demand.
    pub price_micro_usd_per_hour: u64,
    pub on_demand_micro_usd_per_hour: u64,
    /// Whether `price` is a spot price (false: on-demand stands in for an unknown spot price).
    pub spot_price_known: bool,
    /// The zone of the spot price, where it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// What the user's `--bid` allows for this type (a share of on-demand
    /// is a different price for each type); `None` without a bid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid_cap_micro_usd_per_hour: Option<u64>,
}

/// Why nothing fits: the limiting dimension and the largest offer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct NoMachineFits(pub String);

fn eligible(t: &InstanceType, r: &Ec2Request) -> bool {
    if !t.archs.contains(&r.arch) || !t.current_generation || (t.burstable && !r.allow_burstable) {
        return false;
    }
    if t.on_demand_micro_usd.is_none() || !(if r.spot { t.spot } else { t.on_demand }) {
        return false;
    }
    if r.gpus == 0 {
        return t.gpus.is_none() && !t.other_accelerators;
    }
    match &t.gpus {
        Some(g) if g.vendor.eq_ignore_ascii_case("nvidia") => r
            .gpu_model
            .as_ref()
            .is_none_or(|m| g.model.eq_ignore_ascii_case(m)),
        _ => false,
    }
}

fn rank_price(t: &InstanceType, spot: bool) -> (u64, bool) {
    let od = t.on_demand_micro_usd.unwrap_or(u64::MAX);
    match (spot, t.spot_micro_usd) {
        (true, Some(p)) => (p, true),
        _ => (od, false),
    }
}

/// The cheapest fitting types, best first: vCPUs, memory and GPUs at least
/// what was asked; ties broken by fewer vCPUs, less memory, then name.
///
/// # Errors
/// [`NoMachineFits`] naming the dimension nothing meets and the largest offer.
pub fn select_ec2(cat: &Catalog, r: &Ec2Request) -> Result<Vec<Candidate>, NoMachineFits> {
    let ram = r.ram_mib.unwrap_or(0);
    let mut fits: Vec<(&InstanceType, u64, bool)> = cat
        .types
        .iter()
        .filter(|t| {
            t.vcpus >= r.cpus && t.memory_mib >= ram && t.gpu_count() >= r.gpus && eligible(t, r)
        })
        .map(|t| {
            let (p, known) = rank_price(t, r.spot);
            (t, p, known)
        })
        .collect();
    if fits.is_empty() {
        return Err(explain_no_fit(cat, r));
    }
    fits.sort_by(|a, b| {
        (a.1, a.0.vcpus, a.0.memory_mib, &a.0.name).cmp(&(
            b.1,
            b.0.vcpus,
            b.0.memory_mib,
            &b.0.name,
        ))
    });
    Ok(fits
        .into_iter()
        .take(r.max_candidates.max(1))
        .map(|(t, p, known)| Candidate {
            machine: t.name.clone(),
            vcpus: t.vcpus,
            memory_mib: t.memory_mib,
            gpus: t.gpu_count(),
            gpu_model: t.gpus.as_ref().map(|g| g.model.clone()),
            price_micro_usd_per_hour: p,
            on_demand_micro_usd_per_hour: t.on_demand_micro_usd.unwrap_or(0),
            spot_price_known: known,
            zone: if known { t.spot_zone.clone() } else { None },
            bid_cap_micro_usd_per_hour: None,
        })
        .collect())
}

fn explain_no_fit(cat: &Catalog, r: &Ec2Request) -> NoMachineFits {
    let base: Vec<&InstanceType> = cat.types.iter().filter(|t| eligible(t, r)).collect();
    let region = &cat.region;
    let gpu_words = match &r.gpu_model {
        Some(m) => format!("NVIDIA {m} GPUs"),
        None => "NVIDIA GPUs".to_string(),
    };
    if base.is_empty() {
        let models: std::collections::BTreeSet<String> = cat
            .types
            .iter()
            .filter_map(|t| t.gpus.as_ref())
            .filter(|g| g.vendor.eq_ignore_ascii_case("nvidia"))
            .map(|g| g.model.clone())
            .collect();
        return NoMachineFits(match &r.gpu_model {
            Some(m) if r.gpus > 0 => format!(
                "no EC2 instance type in {region} has {gpu_words}; models on offer: {}",
                models.into_iter().collect::<Vec<_>>().join(", ")
            ),
            _ => format!(
                "no EC2 instance type in {region} is offered for this request ({} {}{})",
                r.arch,
                if r.spot { "spot" } else { "on-demand" },
                if r.gpus > 0 { ", NVIDIA GPUs" } else { "" }
            ),
        });
    }
    let largest = |key: &dyn Fn(&InstanceType) -> u64| -> (u64, String) {
        let max = base.iter().map(|t| key(t)).max().unwrap_or(0);
        let mut names: Vec<&InstanceType> =
            base.iter().copied().filter(|t| key(t) == max).collect();
        names.sort_by_key(|t| (t.on_demand_micro_usd, t.name.clone()));
        let mut list: Vec<String> = names.iter().take(3).map(|t| t.name.clone()).collect();
        if names.len() > 3 {
            list.push("…".into());
        }
        (max, list.join(", "))
    };
    if r.gpus > 0 {
        let (max, names) = largest(&|t| t.gpu_count() as u64);
        if (r.gpus as u64) > max {
            return NoMachineFits(format!(
                "no EC2 instance type in {region} has {} {gpu_words}; the most is {max} ({names})",
                r.gpus
            ));
        }
    }
    let (max, names) = largest(&|t| t.vcpus as u64);
    if (r.cpus as u64) > max {
        return NoMachineFits(format!(
            "no EC2 instance type in {region} has {} vCPUs; the most is {max} ({names})",
            r.cpus
        ));
    }
    let ram = r.ram_mib.unwrap_or(0);
    let (max, names) = largest(&|t| t.memory_mib);
    if ram > max {
        return NoMachineFits(format!(
            "no EC2 instance type in {region} has {} of memory; the most is {} ({names})",
            crate::size::format_mib(ram),
            crate::size::format_mib(max)
        ));
    }
    let gpus = if r.gpus > 0 {
        format!(" and {} {gpu_words}", r.gpus)
    } else {
        String::new()
    };
    NoMachineFits(format!(
        "no EC2 instance type in {region} has {} vCPUs, {} of memory{gpus} together",
        r.cpus,
        crate::size::format_mib(ram),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, vcpus: u32, mem_gib: u64, od: u64, spot: Option<u64>) -> InstanceType {
        InstanceType {
            name: name.into(),
            vcpus,
            memory_mib: mem_gib * 1024,
            gpus: None,
            archs: vec![Arch::X86_64],
            burstable: false,
            current_generation: true,
            on_demand: true,
            spot: true,
            other_accelerators: false,
            on_demand_micro_usd: Some(od),
            spot_micro_usd: spot,
            spot_zone: spot.map(|_| "test-1a".into()),
        }
    }

    fn cat(types: Vec<InstanceType>) -> Catalog {
        Catalog {
            format: CATALOG_FORMAT,
            region: "test-1".into(),
            generated_at: "now".into(),
            source: "test".into(),
            types,
        }
    }

    fn req(cpus: u32, ram_gib: u64, spot: bool) -> Ec2Request {
        Ec2Request {
            cpus,
            gpus: 0,
            ram_mib: Some(ram_gib * 1024),
            spot,
            arch: Arch::X86_64,
            gpu_model: None,
            allow_burstable: false,
            max_candidates: 10,
        }
    }

    #[test]
    fn ties_break_by_fewer_vcpus_then_less_memory_then_name() {
        let c = cat(vec![
            t("z.large", 2, 8, 100, None),
            t("b.large", 4, 4, 100, None),
            t("a.large", 2, 8, 100, None),
            t("c.large", 2, 4, 100, None),
        ]);
        let names: Vec<String> = select_ec2(&c, &req(2, 4, false))
            .unwrap()
            .into_iter()
            .map(|c| c.machine)
            .collect();
        assert_eq!(names, ["c.large", "a.large", "z.large", "b.large"]);
        let mut shuffled = c.clone();
        shuffled.types.reverse();
        let again: Vec<String> = select_ec2(&shuffled, &req(2, 4, false))
            .unwrap()
            .into_iter()
            .map(|c| c.machine)
            .collect();
        assert_eq!(names, again, "input order does not matter");
    }

    #[test]
    fn spot_ranks_by_spot_price_and_on_demand_stands_in_where_unknown() {
        let c = cat(vec![
            t("cheap-od", 2, 4, 100, Some(90)),
            t("cheap-spot", 2, 4, 200, Some(30)),
            t("no-spot-price", 2, 4, 50, None),
        ]);
        let spot: Vec<(String, u64, bool)> = select_ec2(&c, &req(2, 4, true))
            .unwrap()
            .into_iter()
            .map(|c| (c.machine, c.price_micro_usd_per_hour, c.spot_price_known))
            .collect();
        assert_eq!(
            spot,
            [
                ("cheap-spot".to_string(), 30, true),
                ("no-spot-price".to_string(), 50, false),
                ("cheap-od".to_string(), 90, true)
            ]
        );
        assert_eq!(
            select_ec2(&c, &req(2, 4, false)).unwrap()[0].machine,
            "no-spot-price"
        );
    }

    #[test]
    fn burstable_old_generation_accelerated_and_unpriced_types_are_skipped() {
        let mut burst = t("t3.large", 2, 8, 1, None);
        burst.burstable = true;
        let mut old = t("m4.large", 2, 8, 2, None);
        old.current_generation = false;
        let mut fpga = t("f1.2xlarge", 8, 122, 3, None);
        fpga.other_accelerators = true;
        let mut unpriced = t("new.large", 2, 8, 4, None);
        unpriced.on_demand_micro_usd = None;
        let mut no_spot = t("od-only.large", 2, 8, 5, None);
        no_spot.spot = false;
        let c = cat(vec![
            burst,
            old,
            fpga,
            unpriced,
            no_spot,
            t("m7a.large", 2, 8, 9, None),
        ]);
        assert_eq!(
            select_ec2(&c, &req(2, 8, false)).unwrap()[0].machine,
            "od-only.large"
        );
        assert_eq!(
            select_ec2(&c, &req(2, 8, true)).unwrap()[0].machine,
            "m7a.large"
        );
        let mut r = req(2, 8, false);
        r.allow_burstable = true;
        assert_eq!(select_ec2(&c, &r).unwrap()[0].machine, "t3.large");
    }

    #[test]
    fn when_each_dimension_fits_alone_the_error_says_together() {
        let c = cat(vec![
            t("many-cpus", 64, 8, 1, None),
            t("much-memory", 2, 512, 1, None),
        ]);
        let e = select_ec2(&c, &req(64, 512, false))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no EC2 instance type in test-1 has 64 vCPUs, 512g of memory together"
        );
    }
}
