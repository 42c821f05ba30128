//! The work a simulation runs: a file (one job per line) or a seeded
//! generator (`--jobs`, arrival rate, duration distribution, shapes).

use crate::rng::Rng;
use std::str::FromStr;
use studio_core::resources::{Cloud, ResourceRequest};

/// One job of a workload. Times are milliseconds (integers, so a report
/// adds up the same way on every run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimJob {
    /// When it is submitted, from the simulation's start.
    pub arrive_ms: i64,
    /// How long its script computes, start to end, without interruption.
    pub duration_ms: i64,
    pub cloud: Cloud,
    pub cpus: u32,
    pub gpus: u32,
    /// As a user writes it (`16g`); `None`: the planner's default.
    pub ram: Option<String>,
    /// How often the script saves a checkpoint; `None`: never.
    pub checkpoint_ms: Option<i64>,
    /// Its line in the workload file (0: generated).
    pub line: usize,
}

impl SimJob {
    /// The request it makes.
    ///
    /// # Errors
    /// A size that does not parse.
    pub fn request(&self) -> Result<ResourceRequest, String> {
        ResourceRequest::parse(self.cpus, self.gpus, self.ram.as_deref(), None)
            .map_err(|e| e.to_string())
    }
}

/// A kind of job the generator draws, by weight.
#[derive(Debug, Clone)]
pub struct Shape {
    pub weight: f64,
    pub cloud: Cloud,
    pub cpus: u32,
    pub gpus: u32,
    pub ram: Option<String>,
    pub checkpoint_s: Option<u64>,
}

/// A seeded workload: Poisson arrivals, log-normal durations.
#[derive(Debug, Clone)]
pub struct Generator {
    pub jobs: usize,
    pub arrivals_per_hour: f64,
    /// The median duration and the log-normal's shape (sigma).
    pub median_s: f64,
    pub sigma: f64,
    /// Durations are kept within these bounds.
    pub min_s: f64,
    pub max_s: f64,
    pub shapes: Vec<Shape>,
}

impl Generator {
    /// The standard mix: CPU work on EC2 spot in three sizes, GPU training
    /// on EC2 spot, CPU work on GCE spot; most of it checkpoints.
    pub fn standard(jobs: usize) -> Generator {
        let shape = |weight, cloud, cpus, gpus, ram: &str, ckpt| Shape {
            weight,
            cloud,
            cpus,
            gpus,
            ram: Some(ram.to_string()),
            checkpoint_s: ckpt,
        };
        Generator {
            jobs,
            arrivals_per_hour: 120.0,
            median_s: 1800.0,
            sigma: 0.9,
            min_s: 60.0,
            max_s: 12.0 * 3600.0,
            shapes: vec![
                shape(0.35, Cloud::Ec2spot, 4, 0, "16g", Some(600)),
                shape(0.20, Cloud::Ec2spot, 8, 0, "32g", Some(600)),
                shape(0.15, Cloud::Ec2spot, 4, 1, "16g", Some(900)),
                shape(0.15, Cloud::Gcspot, 2, 0, "8g", Some(600)),
                shape(0.15, Cloud::Ec2spot, 16, 0, "64g", None),
            ],
        }
    }

    /// `pools` distinct requests (one pool each) on EC2 spot, all alike
    /// otherwise: what the scale benchmark spreads its jobs over.
    pub fn spread(mut self, pools: usize) -> Generator {
        let cpus = [1u32, 2, 4, 8];
        self.shapes = (0..pools.max(1))
            .map(|i| {
                let c = cpus[i % cpus.len()];
                // 256 MiB steps above 2 GiB a vCPU: each its own request.
                let ram_mib = u64::from(c) * 2048 + (i / cpus.len()) as u64 * 256;
                Shape {
                    weight: 1.0,
                    cloud: Cloud::Ec2spot,
                    cpus: c,
                    gpus: 0,
                    ram: Some(format!("{ram_mib}MiB")),
                    checkpoint_s: Some(600),
                }
            })
            .collect();
        self
    }

    pub fn generate(&self, rng: &mut Rng) -> Vec<SimJob> {
        let weights: Vec<f64> = self.shapes.iter().map(|s| s.weight).collect();
        let mean_gap_ms = 3_600_000.0 / self.arrivals_per_hour.max(1e-9);
        let mut at = 0.0f64;
        (0..self.jobs)
            .map(|_| {
                let s = &self.shapes[rng.weighted(&weights)];
                let d = rng
                    .lognormal(self.median_s, self.sigma)
                    .clamp(self.min_s, self.max_s);
                let job = SimJob {
                    arrive_ms: at.round() as i64,
                    duration_ms: (d * 1000.0).round() as i64,
                    cloud: s.cloud,
                    cpus: s.cpus,
                    gpus: s.gpus,
                    ram: s.ram.clone(),
                    checkpoint_ms: s.checkpoint_s.map(|c| c as i64 * 1000),
                    line: 0,
                };
                at += rng.exp(mean_gap_ms);
                job
            })
            .collect()
    }
}

/// Plans every job as `submit` would (the shipped catalogue and rate
/// table), so a request no machine fits is refused before anything runs,
/// with its line.
///
/// # Errors
/// The first job that cannot be planned, and why.
pub fn check(jobs: &[SimJob]) -> Result<(), String> {
    use studio_core::plan::Planner;
    let planner = studio_core::plan::CatalogPlanner::shipped();
    let mut seen = std::collections::BTreeSet::new();
    for j in jobs {
        if !seen.insert((j.cloud, j.cpus, j.gpus, j.ram.clone())) {
            continue;
        }
        let spec = studio_core::contract::SubmitJob::new(j.cloud, j.request()?, "sim");
        if let Err(e) = planner.plan(&spec) {
            let at = match j.line {
                0 => "a generated job".to_string(),
                n => format!("workload line {n}"),
            };
            return Err(format!("{at}: {e}"));
        }
    }
    Ok(())
}

/// A workload file: CSV with the header
/// `arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s` (`ram` and
/// `checkpoint_s` may be empty).
///
/// # Errors
/// The line and what is wrong with it; nothing is half-read.
pub fn from_csv(text: &str) -> Result<Vec<SimJob>, String> {
    const HEADER: &str = "arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s";
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    match lines.next() {
        Some((_, h)) if h.replace(' ', "") == HEADER => {}
        other => {
            return Err(format!(
                "workload: the first line must be the header {HEADER:?}; got {:?}",
                other.map(|(_, l)| l).unwrap_or("")
            ))
        }
    }
    let mut jobs = Vec::new();
    for (n, line) in lines {
        let at = |what: &str| format!("workload line {}: {what}", n + 1);
        let c: Vec<&str> = line.split(',').map(str::trim).collect();
        let [arrive, duration, cpus, gpus, ram, cloud, ckpt] = c[..] else {
            return Err(at(&format!(
                "expected 7 columns ({HEADER}); got {}",
                c.len()
            )));
        };
        let secs = |name: &str, v: &str| -> Result<i64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| (x * 1000.0).round() as i64)
                .ok_or_else(|| at(&format!("{name} {v:?} is not a number of seconds >= 0")))
        };
        let count = |name: &str, v: &str| -> Result<u32, String> {
            v.parse::<u32>()
                .map_err(|_| at(&format!("{name} {v:?} is not a whole number")))
        };
        let job = SimJob {
            arrive_ms: secs("arrive_s", arrive)?,
            duration_ms: secs("duration_s", duration)?,
            cpus: count("cpus", cpus)?,
            gpus: count("gpus", gpus)?,
            ram: (!ram.is_empty()).then(|| ram.to_string()),
            cloud: Cloud::from_str(cloud).map_err(|e| at(&e.to_string()))?,
            checkpoint_ms: match ckpt {
                "" => None,
                v => Some(secs("checkpoint_s", v)?).filter(|c| *c > 0),
            },
            line: n + 1,
        };
        if job.duration_ms == 0 {
            return Err(at("duration_s must be above 0"));
        }
        if job.cloud == Cloud::Local {
            return Err(at(
                "cloud local is this machine, not a fleet: use ec2, ec2spot, gcloud or gcspot",
            ));
        }
        job.request().map_err(|e| at(&e))?;
        jobs.push(job);
    }
    if jobs.is_empty() {
        return Err("workload: no jobs".into());
    }
    jobs.sort_by_key(|j| j.arrive_ms);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_file_reads_and_a_bad_line_says_where() {
        let ok = from_csv(
            "arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s\n60,3600,4,0,16g,ec2spot,600\n0,30,1,0,,gcspot,\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!((ok[0].arrive_ms, ok[0].checkpoint_ms), (0, None));
        assert_eq!(ok[1].duration_ms, 3_600_000);
        let e = from_csv("arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s\n0,1,1,0,,azure,\n")
            .unwrap_err();
        assert!(
            e.starts_with("workload line 2:") && e.contains("azure"),
            "{e}"
        );
        let e = from_csv("0,1,1,0,,ec2,\n").unwrap_err();
        assert!(e.contains("header"), "{e}");
        let e = from_csv("arrive_s,duration_s,cpus,gpus,ram,cloud,checkpoint_s\n0,-1,1,0,,ec2,\n")
            .unwrap_err();
        assert!(e.contains("duration_s"), "{e}");
    }

    #[test]
    fn the_generator_is_seeded_and_spreads_over_distinct_requests() {
        let g = Generator::standard(200);
        let a = g.generate(&mut Rng::new(3));
        assert_eq!(a, g.generate(&mut Rng::new(3)));
        assert_ne!(a, g.generate(&mut Rng::new(4)));
        assert!(a.windows(2).all(|w| w[0].arrive_ms <= w[1].arrive_ms));
        let s = Generator::standard(10).spread(40);
        let reqs: std::collections::BTreeSet<_> =
            s.shapes.iter().map(|x| (x.cpus, x.ram.clone())).collect();
        assert_eq!(reqs.len(), 40);
    }
}
