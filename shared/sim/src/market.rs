//! The spot market the simulated fleet meets: per machine type a spot
//! discount and a monthly interruption frequency, in the buckets AWS's
//! Spot Instance Advisor publishes (<5 %, 5-10 %, 10-15 %, 15-20 %, >20 %).
//!
//! # Defaults, and where they come from
//! - **EC2 spot discount: 65 % off on-demand** for every type. The shipped
//!   catalogue has no spot prices (it is built offline); AWS advertises "up
//!   to 90 %" and third-party snapshots of us-east-1 in 2026 show 55-70 %
//!   for current general-purpose types. Override per type from a CSV.
//! - **EC2 interruption bucket by family** (an assumption shaped like the
//!   Advisor's pages, not AWS's data, which is not shipped): GPU families
//!   (`g*`, `p*`) 15-20 %, generations up to 5 (`m5`, `c5`, `r5`) 5-10 %,
//!   newer ones <5 % (AWS: "95 % of Spot instances are not interrupted").
//! - **GCE spot**: the discount is the shipped rate table's preemptible
//!   price (`shared/core/catalog/gce-rates.csv`, 2023); Google publishes no
//!   interruption frequency, so 10-15 % is assumed.
//! - A bucket stands for its midpoint (>20 % for 25 %) as the probability
//!   that a machine is reclaimed within 30 days of running, a constant
//!   hazard: `-ln(1 - p) / 30 days`.
//!
//! A notice comes 2 minutes before an EC2 reclaim and 30 s before a GCE
//! one; on EC2 every reclaim is preceded by a rebalance recommendation
//! ("Amazon EC2 always gives both"), up to 30 minutes earlier or with the
//! notice itself.

use std::collections::BTreeMap;
use std::time::Duration;
use studio_core::resources::Cloud;

/// The Spot Instance Advisor's interruption-frequency ranges (per month).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    Under5,
    From5To10,
    From10To15,
    From15To20,
    Over20,
}

impl Bucket {
    pub const ALL: [Bucket; 5] = [
        Bucket::Under5,
        Bucket::From5To10,
        Bucket::From10To15,
        Bucket::From15To20,
        Bucket::Over20,
    ];

    /// The Advisor's label.
    pub fn label(self) -> &'static str {
        match self {
            Bucket::Under5 => "<5%",
            Bucket::From5To10 => "5-10%",
            Bucket::From10To15 => "10-15%",
            Bucket::From15To20 => "15-20%",
            Bucket::Over20 => ">20%",
        }
    }

    /// The share of machines reclaimed within a month it stands for.
    pub fn monthly(self) -> f64 {
        match self {
            Bucket::Under5 => 0.025,
            Bucket::From5To10 => 0.075,
            Bucket::From10To15 => 0.125,
            Bucket::From15To20 => 0.175,
            Bucket::Over20 => 0.25,
        }
    }

    pub fn parse(s: &str) -> Option<Bucket> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        Bucket::ALL
            .into_iter()
            .find(|b| b.label() == s || b.label().trim_end_matches('%') == s)
    }
}

/// One machine type's spot market.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarketRow {
    /// Share off the on-demand price (0.65: pay 35 %); `None`: the plan's
    /// own spot price (GCE's rate table).
    pub spot_discount: Option<f64>,
    pub bucket: Bucket,
}

/// How the market behaves; see the module's documentation for the defaults.
#[derive(Debug, Clone)]
pub struct Market {
    pub overrides: BTreeMap<String, MarketRow>,
    pub ec2_spot_discount: f64,
    pub gce_bucket: Bucket,
    /// Share of EC2 reclaims preceded by a rebalance recommendation (1: all).
    pub rebalance_share: f64,
    /// Multiplies every interruption rate (1: the buckets as they are).
    pub interruption_scale: f64,
}

const MONTH_S: f64 = 30.0 * 86_400.0;

impl Default for Market {
    fn default() -> Self {
        Market {
            overrides: BTreeMap::new(),
            ec2_spot_discount: 0.65,
            gce_bucket: Bucket::From10To15,
            rebalance_share: 1.0,
            interruption_scale: 1.0,
        }
    }
}

impl Market {
    /// The defaults with rows from a CSV: `instance_type,spot_discount,interruption`
    /// (`g4dn.xlarge,0.70,15-20%`; a discount may be empty: the default).
    ///
    /// # Errors
    /// The line and what is wrong with it.
    pub fn with_csv(mut self, text: &str) -> Result<Market, String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty()
                || line.starts_with('#')
                || (n == 0 && line.starts_with("instance_type"))
            {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [name, discount, bucket] = cols[..] else {
                return Err(format!(
                    "market CSV line {}: expected instance_type,spot_discount,interruption; got {line:?}",
                    n + 1
                ));
            };
            let spot_discount = match discount {
                "" => None,
                d => Some(
                    d.parse::<f64>()
                        .ok()
                        .filter(|d| (0.0..1.0).contains(d))
                        .ok_or_else(|| {
                            format!(
                                "market CSV line {}: spot_discount {d:?} is not a share in [0, 1)",
                                n + 1
                            )
                        })?,
                ),
            };
            let bucket = Bucket::parse(bucket).ok_or_else(|| {
                format!(
                    "market CSV line {}: interruption {bucket:?} is not one of <5%, 5-10%, 10-15%, 15-20%, >20%",
                    n + 1
                )
            })?;
            self.overrides.insert(
                name.to_string(),
                MarketRow {
                    spot_discount,
                    bucket,
                },
            );
        }
        Ok(self)
    }

    /// The market of `machine` on `cloud`.
    pub fn row(&self, cloud: Cloud, machine: &str) -> MarketRow {
        if let Some(r) = self.overrides.get(machine) {
            return *r;
        }
        match cloud {
            Cloud::Gcloud | Cloud::Gcspot => MarketRow {
                spot_discount: None,
                bucket: self.gce_bucket,
            },
            _ => MarketRow {
                spot_discount: Some(self.ec2_spot_discount),
                bucket: ec2_family_bucket(machine),
            },
        }
    }

    /// Reclaims per second of a running spot machine of this type.
    pub fn hazard_per_s(&self, cloud: Cloud, machine: &str) -> f64 {
        let p = self.row(cloud, machine).bucket.monthly();
        -(1.0 - p).ln() / MONTH_S * self.interruption_scale
    }

    /// The hourly price of a machine, millionths of USD: on-demand, or spot
    /// (`plan_spot`: the plan's own spot price, where it knows one).
    pub fn price(
        &self,
        cloud: Cloud,
        machine: &str,
        on_demand: u64,
        plan_spot: Option<u64>,
        spot: bool,
    ) -> u64 {
        if !spot {
            return on_demand;
        }
        match (self.row(cloud, machine).spot_discount, plan_spot) {
            (Some(d), _) => (on_demand as f64 * (1.0 - d)).round() as u64,
            (None, Some(p)) => p,
            (None, None) => (on_demand as f64 * (1.0 - self.ec2_spot_discount)).round() as u64,
        }
    }

    /// How long before a reclaim its notice comes.
    pub fn notice(cloud: Cloud) -> Duration {
        match cloud {
            Cloud::Gcloud | Cloud::Gcspot => Duration::from_secs(30),
            _ => Duration::from_secs(120),
        }
    }
}

/// The default bucket of an EC2 type by its family (see the module docs).
fn ec2_family_bucket(machine: &str) -> Bucket {
    let family = machine.split('.').next().unwrap_or(machine);
    let letters: String = family
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let generation: u32 = family[letters.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    if letters.starts_with('g') || letters.starts_with('p') {
        Bucket::From15To20
    } else if generation <= 5 {
        Bucket::From5To10
    } else {
        Bucket::Under5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_family_and_a_csv_overrides_them() {
        let m = Market::default();
        assert_eq!(
            m.row(Cloud::Ec2spot, "g4dn.xlarge").bucket,
            Bucket::From15To20
        );
        assert_eq!(m.row(Cloud::Ec2spot, "m5.large").bucket, Bucket::From5To10);
        assert_eq!(m.row(Cloud::Ec2spot, "c7i.2xlarge").bucket, Bucket::Under5);
        let m = m
            .with_csv(
                "instance_type,spot_discount,interruption\nc7i.2xlarge,0.5,>20%\nm5.large,,<5%\n",
            )
            .unwrap();
        assert_eq!(m.row(Cloud::Ec2spot, "c7i.2xlarge").bucket, Bucket::Over20);
        assert_eq!(
            m.price(Cloud::Ec2spot, "c7i.2xlarge", 1_000_000, None, true),
            500_000
        );
        assert_eq!(
            m.price(Cloud::Ec2spot, "m5.large", 1_000_000, None, true),
            350_000
        );
        assert_eq!(
            m.price(Cloud::Ec2, "m5.large", 1_000_000, None, false),
            1_000_000
        );
        let e = Market::default().with_csv("m5.large,2,<5%").unwrap_err();
        assert!(e.contains("line 1") && e.contains("spot_discount"), "{e}");
        let e = Market::default()
            .with_csv("m5.large,0.5,often")
            .unwrap_err();
        assert!(e.contains("interruption \"often\""), "{e}");
        // 25 % a month: a machine lives 104 days on average.
        let h = Market::default()
            .with_csv("x.large,,>20%")
            .unwrap()
            .hazard_per_s(Cloud::Ec2spot, "x.large");
        assert!(
            (1.0 / h / 86_400.0 - 104.3).abs() < 0.5,
            "{}",
            1.0 / h / 86_400.0
        );
    }
}
