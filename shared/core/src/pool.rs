//! Pools: jobs that ask for the same thing share one worker group and one
//! work queue. The key is derived from the normalized request and the plan,
//! so equal requests always meet in the same pool.

use crate::catalog::Arch;
use crate::clock::Timestamp;
use crate::contract::SubmitJob;
use crate::ids::PoolKey;
use crate::plan::Plan;
use crate::resources::{Bid, Cloud, Market, ResourceRequest, WorkerPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything that makes two jobs' machines interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub cloud: Cloud,
    pub region: Option<String>,
    pub market: Market,
    pub machine_types: Vec<String>,
    pub resources: ResourceRequest,
    pub bid: Option<Bid>,
    pub max_price_micro_usd_per_hour: Option<u64>,
    pub policy: WorkerPolicy,
    /// The machines' architecture (the fleet picks the worker image by it).
    /// Left out of the record when x86_64, so existing pool keys stay.
    #[serde(default, skip_serializing_if = "Arch::is_x86_64")]
    pub arch: Arch,
    /// The GPU model where the machine type does not say it (GCE: a
    /// custom shape plus accelerators). Left out when none, so existing
    /// pool keys stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
}

impl PoolSpec {
    pub fn for_job(job: &SubmitJob, plan: &Plan) -> PoolSpec {
        PoolSpec {
            cloud: job.cloud,
            region: plan.region.clone(),
            market: plan.market,
            machine_types: plan.machine_types.clone(),
            resources: job.resources.clone(),
            bid: job.bid,
            max_price_micro_usd_per_hour: plan.max_price_micro_usd_per_hour,
            policy: WorkerPolicy::from_flag(job.num_workers).unwrap_or(WorkerPolicy::Auto),
            arch: job.arch.unwrap_or(Arch::X86_64),
            gpu_type: match job.cloud {
                Cloud::Gcloud | Cloud::Gcspot if plan.gpus > 0 => plan.gpu_model.clone(),
                _ => None,
            },
        }
    }

    /// `local-2c-0g-1a2b3c4d5e`: readable, and short enough for any cloud's
    /// resource names (SQS queue, ASG, MIG).
    pub fn key(&self) -> PoolKey {
        let canonical = serde_json::to_vec(self).expect("PoolSpec always serializes");
        let digest = hex::encode(Sha256::digest(&canonical));
        PoolKey::new(format!(
            "{}-{}c-{}g-{}",
            self.cloud,
            self.resources.cpus,
            self.resources.gpus,
            &digest[..10]
        ))
        .expect("pool keys are built from safe characters")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    Live,
    /// Cleanup has claimed it; submit must wait for `deleted` and recreate.
    Deleting,
    Deleted,
}

impl PoolState {
    /// The word stores and the API keep (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Live => "live",
            PoolState::Deleting => "deleting",
            PoolState::Deleted => "deleted",
        }
    }
}

/// A pool record, written with compare-and-set on `version` like a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub key: PoolKey,
    pub spec: PoolSpec,
    pub state: PoolState,
    pub version: u64,
    /// The worker count last asked of the fleet (for display: scaling
    /// starts from what the fleet reports, [`crate::ports::Fleet::group`]).
    pub target: u32,
    /// Bumped each time the pool is revived after cleanup; part of every
    /// resource name ([`Pool::group_key`]), so a revived pool never reuses
    /// a queue name SQS still holds (60 s) or a group name Auto Scaling
    /// still deletes (minutes).
    #[serde(default)]
    pub generation: u32,
    /// Whether this generation's queue and group were created; submit skips
    /// the create calls when they were (reconciliation recreates drift).
    #[serde(default)]
    pub created: bool,
    /// Since when cleanup has seen no active job in the pool.
    pub idle_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What scaling saw, oldest first, at most [`SAMPLES_KEPT`]: the chart
    /// of `studio ui`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<PoolSample>,
    /// Why the pool's machines do not start, as the cloud last said (a
    /// failed launch: a quota, no capacity, a bid under the market), and
    /// since when; cleared once the machines asked for are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_trouble: Option<LaunchTrouble>,
}

/// A failed launch the fleet reported for a pool that waits for machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTrouble {
    pub since: Timestamp,
    pub reason: String,
    /// A machine's bootstrap failed (read from its console as it was
    /// retired): held until a machine of the pool runs a job, since the
    /// group's launches themselves succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap: bool,
}

/// The prefix of every line the worker bootstrap writes about its own
/// failure (`infra/worker-bootstrap.sh`), on the machine's console.
pub const BOOTSTRAP_SAYS: &str = "studio-bootstrap: ";

impl LaunchTrouble {
    /// The last failure a bootstrap wrote in `console` (a machine's console
    /// or serial output), without terminal escapes, at most 300 characters.
    pub fn bootstrap_said(console: &str) -> Option<String> {
        let line = console
            .lines()
            .rev()
            .find_map(|l| l.split_once(BOOTSTRAP_SAYS).map(|(_, said)| said))?;
        // Terminal colours (`ESC [ ... letter`) and other controls out.
        let mut clean = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else if !c.is_control() && clean.chars().count() < 300 {
                clean.push(c);
            }
        }
        let clean = clean.trim();
        (!clean.is_empty()).then(|| clean.to_string())
    }
}

/// How many [`PoolSample`]s a pool keeps: two hours at the AWS schedule's
/// one a minute. Each is about 35 bytes of the record (an array).
pub const SAMPLES_KEPT: usize = 120;

/// One look at a pool by scaling. Stored as an array
/// `[at, target, actual, visible, in_flight]` to keep the record small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "(Timestamp, u32, u32, u64, u64)",
    into = "(Timestamp, u32, u32, u64, u64)"
)]
pub struct PoolSample {
    pub at: Timestamp,
    /// The size asked of the group.
    pub target: u32,
    /// The machines the group had (not terminated).
    pub actual: u32,
    /// Work waiting in the queue.
    pub visible: u64,
    /// Work received or running.
    pub in_flight: u64,
}

impl From<(Timestamp, u32, u32, u64, u64)> for PoolSample {
    fn from((at, target, actual, visible, in_flight): (Timestamp, u32, u32, u64, u64)) -> Self {
        PoolSample {
            at,
            target,
            actual,
            visible,
            in_flight,
        }
    }
}

impl From<PoolSample> for (Timestamp, u32, u32, u64, u64) {
    fn from(s: PoolSample) -> Self {
        (s.at, s.target, s.actual, s.visible, s.in_flight)
    }
}

impl Pool {
    /// Keeps `s` unless the last sample is less than `every` older;
    /// drops the oldest beyond [`SAMPLES_KEPT`]. Whether it was kept.
    pub fn record_sample(&mut self, s: PoolSample, every: std::time::Duration) -> bool {
        if self
            .samples
            .last()
            .is_some_and(|l| s.at.since(l.at) < every)
        {
            return false;
        }
        self.samples.push(s);
        let over = self.samples.len().saturating_sub(SAMPLES_KEPT);
        self.samples.drain(..over);
        true
    }

    pub fn new(spec: PoolSpec, at: Timestamp) -> Pool {
        Pool {
            key: spec.key(),
            spec,
            state: PoolState::Live,
            version: 0,
            target: 0,
            generation: 0,
            created: false,
            idle_since: None,
            created_at: at,
            updated_at: at,
            samples: Vec::new(),
            launch_trouble: None,
        }
    }

    /// The key this generation's group, template and queue are named by:
    /// the pool key itself for generation 0, `<key>-g<n>` after that.
    pub fn group_key(&self) -> PoolKey {
        group_key(&self.key, self.generation)
    }
}

/// See [`Pool::group_key`].
pub fn group_key(key: &PoolKey, generation: u32) -> PoolKey {
    if generation == 0 {
        return key.clone();
    }
    PoolKey::new(format!("{key}-g{generation}")).expect("a pool key with a generation is valid")
}

/// The pool key and generation of a group key (inverse of [`group_key`]).
/// Pool keys end in a 10-digit hex hash, so `-g<n>` is unambiguous.
pub fn split_group_key(gk: &PoolKey) -> (PoolKey, u32) {
    let s = gk.as_str();
    if let Some((base, g)) = s.rsplit_once("-g") {
        if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty() {
            if let (Ok(k), Ok(n)) = (PoolKey::new(base), g.parse::<u32>()) {
                return (k, n);
            }
        }
    }
    (gk.clone(), 0)
}

/// The work queue name of a pool in a deployment whose names start with `prefix`.
pub fn queue_name(prefix: &str, key: &PoolKey) -> String {
    format!("{prefix}-work-{key}")
}

/// How much work a queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and leased, not yet acked.
    pub in_flight: u64,
}

impl QueueDepth {
    pub fn total(self) -> u64 {
        self.visible + self.in_flight
    }
}

/// The worker count a pool should have.
///
/// `Fixed(n)` keeps n. `Auto` starts at one worker as soon as there is work
/// and adds one per call while work is waiting, never more than the work
/// there is nor more than `max_auto`; it never shrinks a busy pool (idle
/// workers are retired by cleanup or by their own idle timeout).
pub fn desired_workers(
    policy: WorkerPolicy,
    depth: QueueDepth,
    current: u32,
    max_auto: u32,
) -> u32 {
    match policy {
        WorkerPolicy::Fixed(n) => n,
        WorkerPolicy::Auto => {
            let work = depth.total().min(u32::MAX as u64) as u32;
            let keep = current.min(max_auto.max(1));
            if depth.visible > 0 {
                (current + 1).min(work).min(max_auto.max(1)).max(keep)
            } else {
                keep
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_said_its_last_failure_line_clean() {
        let console = "boot\r\ncloud-init[1]: studio-bootstrap: first\r\nnoise\r\ncloud-init[1]: studio-bootstrap: line 9: `test -x x` failed (exit 1)\x1b[0m\r\n[  OK  ] done\r\n";
        assert_eq!(
            LaunchTrouble::bootstrap_said(console).as_deref(),
            Some("line 9: `test -x x` failed (exit 1)")
        );
        assert_eq!(LaunchTrouble::bootstrap_said("Linux version 6.1\n"), None);
        assert_eq!(
            LaunchTrouble::bootstrap_said("studio-bootstrap:    \n"),
            None
        );
        let long = format!("studio-bootstrap: {}", "x".repeat(1000));
        assert_eq!(LaunchTrouble::bootstrap_said(&long).unwrap().len(), 300);
    }
    use crate::contract::tests::sample;

    fn depth(visible: u64, in_flight: u64) -> QueueDepth {
        QueueDepth { visible, in_flight }
    }

    #[test]
    fn auto_starts_at_one_and_grows_while_work_waits_up_to_the_cap() {
        use WorkerPolicy::Auto;
        assert_eq!(desired_workers(Auto, depth(0, 0), 0, 4), 0);
        assert_eq!(desired_workers(Auto, depth(5, 0), 0, 4), 1);
        assert_eq!(desired_workers(Auto, depth(4, 1), 1, 4), 2);
        assert_eq!(desired_workers(Auto, depth(3, 2), 2, 4), 3);
        assert_eq!(desired_workers(Auto, depth(1, 3), 4, 4), 4, "capped");
        assert_eq!(
            desired_workers(Auto, depth(1, 0), 1, 4),
            1,
            "no more than the work"
        );
        assert_eq!(desired_workers(Auto, depth(0, 1), 3, 4), 3, "never shrinks");
        assert_eq!(desired_workers(Auto, depth(9, 0), 6, 4), 4, "cap lowered");
    }

    #[test]
    fn group_keys_carry_the_generation_and_split_back() {
        let k = PoolKey::new("ec2spot-8c-1g-0a1b2c3d4e").unwrap();
        assert_eq!(group_key(&k, 0), k);
        let g3 = group_key(&k, 3);
        assert_eq!(g3.as_str(), "ec2spot-8c-1g-0a1b2c3d4e-g3");
        assert_eq!(split_group_key(&g3), (k.clone(), 3));
        assert_eq!(split_group_key(&k), (k.clone(), 0));
        // A pool whose count of GPUs reads like a generation is not split.
        let odd = PoolKey::new("local-1c-0g-abcdef0123").unwrap();
        assert_eq!(split_group_key(&odd), (odd.clone(), 0));
    }

    #[test]
    fn fixed_keeps_its_size() {
        let p = WorkerPolicy::Fixed(3);
        assert_eq!(desired_workers(p, depth(0, 0), 0, 1), 3);
        assert_eq!(desired_workers(p, depth(50, 0), 3, 1), 3);
    }

    #[test]
    fn equal_requests_share_a_pool_and_different_ones_do_not() {
        let plan = Plan::local(&Default::default());
        let mut a = sample();
        a.resources = ResourceRequest::parse(2, 0, Some("16g"), None).unwrap();
        let mut b = sample();
        b.resources = ResourceRequest::parse(2, 0, Some("16GiB"), None).unwrap();
        b.entrypoint = "other.py".into();
        let ka = PoolSpec::for_job(&a, &plan).key();
        assert_eq!(ka, PoolSpec::for_job(&b, &plan).key());
        assert!(ka.as_str().starts_with("local-2c-0g-"), "{ka}");
        b.num_workers = Some(3);
        assert_ne!(ka, PoolSpec::for_job(&b, &plan).key());
        b.num_workers = None;
        b.resources.ram_mib = Some(8192);
        assert_ne!(ka, PoolSpec::for_job(&b, &plan).key());
    }
}
