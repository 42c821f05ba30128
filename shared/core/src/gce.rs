//! GCE custom machine shapes and their price.
//!
//! A custom shape is `custom-{vCPUs}-{MiB}`: 1 or an even number of vCPUs,
//! memory a multiple of 256 MiB, and (Studio's documented rule, no extended
//! memory) 1 to 6 GiB per vCPU. A request outside the rule is **upsized** to
//! the nearest valid shape, never below what was asked, and every change is
//! said in words.

use crate::size::format_mib;
use std::collections::BTreeMap;
use thiserror::Error;

/// Studio's default RAM on GCE when none is asked: 4 GiB per vCPU.
pub const DEFAULT_GIB_PER_VCPU: u64 = 4;
pub const MIN_GIB_PER_VCPU: u64 = 1;
pub const MAX_GIB_PER_VCPU: u64 = 6;
/// Most vCPUs of an N1 custom shape.
pub const MAX_VCPUS: u32 = 96;
/// The GPU when `--gpu-type` is not given.
pub const DEFAULT_GPU: &str = "nvidia-tesla-t4";

/// Hourly rates, millionths of USD: (on-demand, preemptible).
#[derive(Debug, Clone, PartialEq)]
pub struct GceRates {
    pub source: String,
    pub vcpu: (u64, u64),
    pub gib: (u64, u64),
    pub gpus: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GceError {
    #[error("GCE rate table line {line}: {why}")]
    Rates { line: usize, why: String },
    #[error("{0}")]
    Request(String),
}

fn micro(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * 1e6).round() as u64)
}

impl GceRates {
    /// Parses the rate table (`item,unit,on_demand_usd_per_hour,preemptible_usd_per_hour`;
    /// `#` lines are provenance and kept as the source).
    ///
    /// # Errors
    /// [`GceError::Rates`] for a malformed line or a missing custom vCPU/memory rate.
    pub fn from_csv(text: &str) -> Result<GceRates, GceError> {
        let mut source = Vec::new();
        let (mut vcpu, mut gib) = (None, None);
        let mut gpus = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(c) = line.strip_prefix('#') {
                source.push(c.trim().to_string());
                continue;
            }
            if line.is_empty() || line.starts_with("item,") {
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            let bad = |why: &str| GceError::Rates {
                line: i + 1,
                why: why.to_string(),
            };
            if f.len() != 4 {
                return Err(bad("expected 4 fields"));
            }
            let rates = (
                micro(f[2]).ok_or_else(|| bad("bad on-demand rate"))?,
                micro(f[3]).ok_or_else(|| bad("bad preemptible rate"))?,
            );
            match (f[0], f[1]) {
                ("n1-custom-vcpu", "vcpu") => vcpu = Some(rates),
                ("n1-custom-memory", "gib") => gib = Some(rates),
                (name, "gpu") => {
                    gpus.insert(name.to_string(), rates);
                }
                _ => {}
            }
        }
        Ok(GceRates {
            source: source.join(" "),
            vcpu: vcpu.ok_or(GceError::Rates {
                line: 0,
                why: "no n1-custom-vcpu rate".into(),
            })?,
            gib: gib.ok_or(GceError::Rates {
                line: 0,
                why: "no n1-custom-memory rate".into(),
            })?,
            gpus,
        })
    }

    /// The table shipped in the repository.
    pub fn shipped() -> GceRates {
        GceRates::from_csv(include_str!("../catalog/gce-rates.csv"))
            .expect("the shipped rate table is valid (tested)")
    }

    /// Resolves `T4`, `nvidia-tesla-t4`, `t4` to a key of the table.
    ///
    /// # Errors
    /// A retired (K80) or unknown model, naming the ones on offer.
    pub fn gpu_key(&self, name: &str) -> Result<String, GceError> {
        let n = name.trim().to_ascii_lowercase();
        let key = if n.starts_with("nvidia-") {
            n.clone()
        } else {
            format!("nvidia-tesla-{n}")
        };
        if key.ends_with("k80") {
            return Err(GceError::Request(
                "the NVIDIA K80 is retired on GCE; use T4, P4, V100 or P100".into(),
            ));
        }
        if self.gpus.contains_key(&key) {
            return Ok(key);
        }
        Err(GceError::Request(format!(
            "unknown GCE GPU '{name}': on offer are {}",
            self.gpus.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// A valid custom shape, and what was changed to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceShape {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub gpus: u32,
    pub gpu_type: Option<String>,
    pub changes: Vec<String>,
}

impl GceShape {
    pub fn machine(&self) -> String {
        format!("custom-{}-{}", self.vcpus, self.memory_mib)
    }

    /// Price per hour in millionths of USD.
    pub fn price(&self, rates: &GceRates, preemptible: bool) -> u64 {
        let pick = |r: (u64, u64)| if preemptible { r.1 } else { r.0 };
        let gpu = self
            .gpu_type
            .as_ref()
            .and_then(|g| rates.gpus.get(g))
            .map_or(0, |r| pick(*r) * self.gpus as u64);
        // memory_mib is a multiple of 256, so this is exact in 1/4 GiB steps.
        pick(rates.vcpu) * self.vcpus as u64 + pick(rates.gib) * self.memory_mib / 1024 + gpu
    }
}

const GIB_MIB: u64 = 1024;

/// Per GPU count of an N1 GPU: (count, most vCPUs, most GB of memory),
/// from https://cloud.google.com/compute/docs/gpus#n1-gpus (read
/// 2026-12; P100's 4-GPU row is 64 vCPUs outside the few zones that allow
/// 96, so 64 here).
fn n1_gpu_limits(key: &str) -> &'static [(u32, u32, u64)] {
    if key.ends_with("v100") {
        &[(1, 12, 78), (2, 24, 156), (4, 48, 312), (8, 96, 624)]
    } else if key.ends_with("p100") {
        &[(1, 16, 104), (2, 32, 208), (4, 64, 208)]
    } else if key.ends_with("p4") {
        &[(1, 24, 156), (2, 48, 312), (4, 96, 624)]
    } else if key.ends_with("t4") {
        &[(1, 48, 312), (2, 48, 312), (4, 96, 624)]
    } else {
        // Unknown here: the counts only, GCE says the rest.
        &[
            (1, u32::MAX, u64::MAX / GIB_MIB),
            (2, u32::MAX, u64::MAX / GIB_MIB),
            (4, u32::MAX, u64::MAX / GIB_MIB),
            (8, u32::MAX, u64::MAX / GIB_MIB),
        ]
    }
}

/// The nearest valid custom shape at least as large as the request.
///
/// # Errors
/// [`GceError::Request`] when no custom shape is that large, or the GPU is unknown.
pub fn gce_shape(
    cpus: u32,
    ram_mib: Option<u64>,
    gpus: u32,
    gpu_type: Option<&str>,
    rates: &GceRates,
) -> Result<GceShape, GceError> {
    let mut changes = Vec::new();
    let even_up = |n: u32| if n > 1 && n % 2 == 1 { n + 1 } else { n };
    let mut vcpus = even_up(cpus);
    if vcpus != cpus {
        changes.push(format!(
            "vCPUs {cpus} → {vcpus}: custom machine types take 1 or an even number of vCPUs"
        ));
    }
    let mut mem = match ram_mib {
        Some(m) => m,
        None => {
            let m = vcpus as u64 * DEFAULT_GIB_PER_VCPU * GIB_MIB;
            changes.push(format!(
                "RAM {}: none asked, Studio's default of {DEFAULT_GIB_PER_VCPU} GiB per vCPU",
                format_mib(m)
            ));
            m
        }
    };
    let per_vcpu_max = MAX_GIB_PER_VCPU * GIB_MIB;
    if mem > vcpus as u64 * per_vcpu_max {
        let need = even_up(mem.div_ceil(per_vcpu_max) as u32);
        changes.push(format!(
            "vCPUs {vcpus} → {need}: {} needs at least {need} vCPUs at most {MAX_GIB_PER_VCPU} GiB per vCPU",
            format_mib(mem)
        ));
        vcpus = need;
    }
    let floor = vcpus as u64 * MIN_GIB_PER_VCPU * GIB_MIB;
    if mem < floor {
        changes.push(format!(
            "RAM {} → {}: custom machine types need at least {MIN_GIB_PER_VCPU} GiB per vCPU",
            format_mib(mem),
            format_mib(floor)
        ));
        mem = floor;
    }
    if vcpus > MAX_VCPUS {
        return Err(GceError::Request(format!(
            "no GCE custom machine type has {vcpus} vCPUs; the most is {MAX_VCPUS} (custom-{MAX_VCPUS}-{})",
            MAX_VCPUS as u64 * per_vcpu_max
        )));
    }
    let (gpus, gpu_type) = if gpus == 0 {
        (0, None)
    } else {
        let key = rates.gpu_key(gpu_type.unwrap_or(DEFAULT_GPU))?;
        let limits = n1_gpu_limits(&key);
        let allowed: Vec<u32> = limits.iter().map(|l| l.0).collect();
        let Some(&n) = allowed.iter().find(|&&n| n >= gpus) else {
            return Err(GceError::Request(format!(
                "no GCE machine takes {gpus} {key} GPUs; the most is {}",
                allowed[allowed.len() - 1]
            )));
        };
        if n != gpus {
            changes.push(format!(
                "GPUs {gpus} → {n}: {key} is attached in counts of {allowed:?}"
            ));
        }
        // N1 bounds the vCPUs and memory per GPU count: a larger shape is
        // refused by GCE at every VM creation, so it is refused here, with
        // the count that would fit.
        if let Some(&(_, max_vcpus, max_gib)) = limits.iter().find(|l| l.0 == n) {
            if vcpus > max_vcpus || mem > max_gib * GIB_MIB {
                let fits = limits
                    .iter()
                    .find(|l| l.1 >= vcpus && l.2 * GIB_MIB >= mem)
                    .map_or(String::from("no count of it takes that much"), |l| {
                        format!("--gpus={} allows {} vCPUs and {} GB", l.0, l.1, l.2)
                    });
                return Err(GceError::Request(format!(
                    "{n} {key} on an N1 machine allows at most {max_vcpus} vCPUs and {max_gib} GB; asked {vcpus} vCPUs and {}: ask for less, or {fits}",
                    format_mib(mem)
                )));
            }
        }
        (n, Some(key))
    };
    Ok(GceShape {
        vcpus,
        memory_mib: mem,
        gpus,
        gpu_type,
        changes,
    })
}

#[cfg(test)]
mod n1_gpu_tests {
    use super::*;

    #[test]
    fn n1_gpus_bound_the_vcpus_and_memory_and_p100_stops_at_four() {
        let rates = GceRates::shipped();
        let v100 = Some("v100");
        let ok = gce_shape(12, Some(64 * GIB_MIB), 1, v100, &rates).unwrap();
        assert_eq!((ok.vcpus, ok.gpus), (12, 1));
        let e = gce_shape(16, Some(64 * GIB_MIB), 1, v100, &rates)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 12 vCPUs and 78 GB"), "{e}");
        assert!(e.contains("--gpus=2 allows 24 vCPUs"), "{e}");
        let e = gce_shape(8, Some(100 * GIB_MIB), 1, v100, &rates)
            .unwrap_err()
            .to_string();
        assert!(e.contains("78 GB"), "{e}");
        let e = gce_shape(4, None, 8, Some("p100"), &rates)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the most is 4"), "{e}");
        // T4 takes 48 vCPUs with one GPU.
        assert!(gce_shape(48, Some(200 * GIB_MIB), 1, None, &rates).is_ok());
    }
}
