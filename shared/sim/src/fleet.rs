//! The simulated fleet: worker groups whose machines boot after a delay,
//! cost their price per second from launch to termination, and, on spot,
//! are reclaimed by the market's random process. It implements the same
//! [`Fleet`] port as the Auto Scaling, managed-instance-group and process
//! fleets, with their behaviours: desired capacity converged at once,
//! scale-in sparing protected machines, a reclaimed machine replaced, and a
//! deleted group's name held while it is pending delete.

use crate::market::Market;
use crate::mem::{Meter, Service};
use crate::rng::Rng;
use crate::sched::{Event, Sched};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use studio_core::clock::{Clock, Timestamp};
use studio_core::contract::SubmitJob;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::plan::{Plan, PlanError, Planner};
use studio_core::pool::PoolSpec;
use studio_core::ports::{Fleet, GroupStatus, Instance, InstanceState, PortError};
use studio_core::resources::{Cloud, Market as Buy};

/// Which of a pool's machine types a launch takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The first (the cheapest): one type, as a one-type group launches.
    Cheapest,
    /// The type least often reclaimed, then the cheapest (Auto Scaling's
    /// `price-capacity-optimized` over the pool's diversified types).
    CapacityOptimized,
}

/// How the fleet behaves under a policy.
#[derive(Debug, Clone, Copy)]
pub struct FleetRules {
    pub allocation: Allocation,
    /// Raises wait for a queue-depth alarm that must stand this long
    /// (`studioml` 2017: a CloudWatch alarm over 300 s); `None`: at once.
    pub alarm: Option<Duration>,
    /// How long a deleted group's name stays taken.
    pub pending_delete: Duration,
}

/// Prices the planner saw, by machine type: on-demand and, where the plan
/// knows one, spot (millionths of USD an hour).
#[derive(Debug, Default)]
pub struct Prices(Mutex<HashMap<String, (u64, Option<u64>)>>);

/// The planner of the real backends, wrapped: it records the prices of
/// every candidate, and under a one-type policy keeps only the first.
pub struct SimPlanner {
    pub inner: Arc<dyn Planner>,
    pub prices: Arc<Prices>,
    pub one_type: bool,
}

impl Planner for SimPlanner {
    fn plan(&self, job: &SubmitJob) -> Result<Plan, PlanError> {
        let mut plan = self.inner.plan(job)?;
        {
            let mut p = self.prices.0.lock().expect("prices");
            for c in &plan.candidates {
                let spot = c.spot_price_known.then_some(c.price_micro_usd_per_hour);
                p.insert(c.machine.clone(), (c.on_demand_micro_usd_per_hour, spot));
            }
            p.entry(plan.machine.clone()).or_insert((
                plan.on_demand_micro_usd_per_hour,
                plan.spot_price_known
                    .then_some(plan.price_micro_usd_per_hour),
            ));
        }
        if self.one_type {
            plan.machine_types.truncate(1);
            plan.candidates.truncate(1);
        }
        Ok(plan)
    }
}

/// One simulated machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub id: InstanceId,
    pub group: PoolKey,
    pub cloud: Cloud,
    pub machine: String,
    pub spot: bool,
    pub gpus: u32,
    /// The instance's price an hour, millionths of USD.
    pub price: u64,
    pub launched_at: Timestamp,
    pub booted: bool,
    pub protected: bool,
    pub seen_at: Option<Timestamp>,
    pub terminated_at: Option<Timestamp>,
    /// Taken back by the spot market (not by its group or worker).
    pub reclaimed: bool,
}

/// What a machine costs an hour beside its instance price, in millionths
/// of USD, never discounted: its root volume (gp3, $0.08 a GB-month: 30 GiB,
/// 60 with GPUs, as the launch template asks) and its public IPv4 address
/// ($0.005 an hour since 2024-02-01; default-VPC subnets give one).
fn overhead_micro_per_hour(gpus: u32) -> u64 {
    let disk_gib = if gpus > 0 { 60 } else { 30 };
    // 0.08 $/GB-month over 730 hours.
    disk_gib * 80_000 / 730 + 5_000
}

impl Machine {
    /// What it cost, millionths of USD: per second from launch, at least a
    /// minute (EC2's Linux billing); nothing for a spot machine the market
    /// took back within its first hour (EC2: "no charge").
    pub fn cost(&self, now: Timestamp) -> u64 {
        let ms = self
            .terminated_at
            .unwrap_or(now)
            .since(self.launched_at)
            .as_millis()
            .max(60_000);
        let price = if self.reclaimed && self.spot && ms < 3_600_000 {
            0
        } else {
            self.price
        };
        (u128::from(price + overhead_micro_per_hour(self.gpus)) * ms / 3_600_000) as u64
    }
}

struct Group {
    spec: PoolSpec,
    desired: u32,
    /// Live machines, in launch order.
    machines: Vec<InstanceId>,
    deleting_since: Option<Timestamp>,
    /// Since when a raise has been asked for, and when last (alarm rule).
    alarm: Option<(Timestamp, Timestamp)>,
}

struct Inner {
    groups: BTreeMap<PoolKey, Group>,
    machines: BTreeMap<InstanceId, Machine>,
    next: u64,
    rng: Rng,
}

pub struct SimFleet {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    meter: Arc<Meter>,
    sched: Arc<Sched>,
    market: Arc<Market>,
    prices: Arc<Prices>,
    rules: FleetRules,
}

/// What the machines cost, millionths of USD.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bill {
    pub spot: u64,
    pub on_demand: u64,
    pub machines: u64,
}

impl SimFleet {
    pub fn new(
        clock: Arc<dyn Clock>,
        meter: Arc<Meter>,
        sched: Arc<Sched>,
        market: Arc<Market>,
        prices: Arc<Prices>,
        rules: FleetRules,
        rng: Rng,
    ) -> SimFleet {
        SimFleet {
            inner: Mutex::new(Inner {
                groups: BTreeMap::new(),
                machines: BTreeMap::new(),
                next: 1,
                rng,
            }),
            clock,
            meter,
            sched,
            market,
            prices,
            rules,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fleet")
    }

    pub fn machine(&self, id: &InstanceId) -> Option<Machine> {
        self.lock().machines.get(id).cloned()
    }

    /// Machines launched and not terminated.
    pub fn live(&self) -> usize {
        self.lock().groups.values().map(|g| g.machines.len()).sum()
    }

    /// The machine booted; `false` when it was terminated meanwhile.
    pub fn booted(&self, id: &InstanceId) -> bool {
        let mut s = self.lock();
        match s.machines.get_mut(id) {
            Some(m) if m.terminated_at.is_none() => {
                m.booted = true;
                true
            }
            _ => false,
        }
    }

    /// The cloud takes the machine back; its group launches another.
    pub fn reclaim(&self, id: &InstanceId) -> bool {
        let now = self.clock.now();
        let mut s = self.lock();
        let Some(group) = s
            .machines
            .get(id)
            .filter(|m| m.terminated_at.is_none())
            .map(|m| m.group.clone())
        else {
            return false;
        };
        if let Some(m) = s.machines.get_mut(id) {
            m.reclaimed = true;
        }
        self.end(&mut s, id, now);
        self.converge(&mut s, &group, now);
        true
    }

    /// The bill so far (machines still up are billed to now).
    pub fn bill(&self) -> Bill {
        let now = self.clock.now();
        let s = self.lock();
        let mut b = Bill::default();
        for m in s.machines.values() {
            let cost = m.cost(now);
            if m.spot {
                b.spot += cost;
            } else {
                b.on_demand += cost;
            }
            b.machines += 1;
        }
        b
    }

    fn end(&self, s: &mut Inner, id: &InstanceId, now: Timestamp) {
        let Some(m) = s.machines.get_mut(id).filter(|m| m.terminated_at.is_none()) else {
            return;
        };
        m.terminated_at = Some(now);
        let group = m.group.clone();
        if let Some(g) = s.groups.get_mut(&group) {
            g.machines.retain(|x| x != id);
        }
        self.sched.push(now, Event::Terminated(id.clone()));
    }

    fn launch(&self, s: &mut Inner, key: &PoolKey, now: Timestamp) {
        let Some(g) = s.groups.get(key) else { return };
        let (cloud, spot) = (g.spec.cloud, g.spec.market == Buy::Spot);
        let gpus = g.spec.resources.gpus;
        let prices = self.prices.0.lock().expect("prices");
        let price_of = |t: &String| {
            let (od, ps) = prices.get(t).copied().unwrap_or((0, None));
            self.market.price(cloud, t, od, ps, spot)
        };
        let machine = match self.rules.allocation {
            Allocation::Cheapest => g.spec.machine_types.first().cloned(),
            Allocation::CapacityOptimized => g
                .spec
                .machine_types
                .iter()
                .min_by_key(|t| (self.market.row(cloud, t).bucket, price_of(t)))
                .cloned(),
        }
        .unwrap_or_else(|| "unknown".into());
        let price = price_of(&machine);
        drop(prices);
        let id = InstanceId::new(format!("i-{:08x}", s.next)).expect("a valid instance id");
        s.next += 1;
        let gce = matches!(cloud, Cloud::Gcloud | Cloud::Gcspot);
        let boot = if gce {
            s.rng.range(40.0, 100.0)
        } else {
            s.rng.range(60.0, 150.0)
        };
        self.sched
            .push(now.plus(secs(boot)), Event::Booted(id.clone()));
        if spot {
            let hazard = self.market.hazard_per_s(cloud, &machine);
            let t = if hazard > 0.0 {
                s.rng.exp(1.0 / hazard)
            } else {
                f64::INFINITY
            };
            if t < 365.0 * 86_400.0 {
                let notice = now.plus(secs(t));
                self.sched.push(notice, Event::Notice(id.clone()));
                // EC2 sends a rebalance recommendation before every
                // reclaim, sometimes with the notice itself.
                if !gce && s.rng.unit() < self.market.rebalance_share {
                    let early = s.rng.range(0.0, 1800.0).min(t);
                    self.sched
                        .push(now.plus(secs(t - early)), Event::Rebalance(id.clone()));
                }
            }
        }
        s.machines.insert(
            id.clone(),
            Machine {
                id: id.clone(),
                group: key.clone(),
                cloud,
                machine,
                spot,
                gpus,
                price,
                launched_at: now,
                booted: false,
                protected: false,
                seen_at: None,
                terminated_at: None,
                reclaimed: false,
            },
        );
        if let Some(g) = s.groups.get_mut(key) {
            g.machines.push(id);
        }
    }

    /// Launches or terminates until the group holds its desired capacity;
    /// scale-in takes unprotected machines, those still booting first,
    /// then the newest.
    fn converge(&self, s: &mut Inner, key: &PoolKey, now: Timestamp) {
        let Some(g) = s.groups.get(key) else { return };
        if g.deleting_since.is_some() {
            return;
        }
        let (have, want) = (g.machines.len() as u32, g.desired);
        if have > want {
            let mut spare: Vec<(bool, Timestamp, InstanceId)> = g
                .machines
                .iter()
                .filter_map(|id| s.machines.get(id))
                .filter(|m| !m.protected)
                .map(|m| (m.booted, m.launched_at, m.id.clone()))
                .collect();
            // Still booting first, then the newest.
            spare.sort_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(b.1.cmp(&a.1))
                    .then(a.2.as_str().cmp(b.2.as_str()))
            });
            for (_, _, id) in spare.into_iter().take((have - want) as usize) {
                self.end(s, &id, now);
            }
        }
        for _ in have..want {
            self.launch(s, key, now);
        }
    }

    /// The live machines of a group, in launch order (none if it is gone).
    fn group_machines<'a>(s: &'a Inner, key: &PoolKey) -> impl Iterator<Item = &'a Machine> {
        s.groups
            .get(key)
            .into_iter()
            .flat_map(|g| g.machines.iter())
            .filter_map(|id| s.machines.get(id))
    }

    fn group_mut<'a>(s: &'a mut Inner, key: &PoolKey) -> Result<&'a mut Group, PortError> {
        s.groups
            .get_mut(key)
            .filter(|g| g.deleting_since.is_none())
            .ok_or_else(|| PortError::NotFound(format!("group {key}")))
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_millis((s.max(0.0) * 1000.0).round() as u64)
}

#[async_trait]
impl Fleet for SimFleet {
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        self.meter.calls(
            Service::Fleet,
            "CreateLaunchTemplate+CreateAutoScalingGroup",
            2,
        );
        let now = self.clock.now();
        let mut s = self.lock();
        if let Some(g) = s.groups.get(key) {
            match g.deleting_since {
                None => return Ok(()),
                Some(at) if now.since(at) < self.rules.pending_delete => {
                    return Err(PortError::backend(
                        "autoscaling",
                        format!("AlreadyExists: group {key} is pending delete"),
                    ))
                }
                Some(_) => {}
            }
        }
        s.groups.insert(
            key.clone(),
            Group {
                spec: spec.clone(),
                desired: 0,
                machines: Vec::new(),
                deleting_since: None,
                alarm: None,
            },
        );
        Ok(())
    }

    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        self.meter.call(Service::Fleet, "DescribeAutoScalingGroups");
        let s = self.lock();
        Ok(s.groups
            .get(key)
            .filter(|g| g.deleting_since.is_none())
            .map(|g| GroupStatus {
                desired: g.desired,
                max: None,
            }))
    }

    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        _max: Option<u32>,
    ) -> Result<(), PortError> {
        self.meter.call(Service::Fleet, "SetDesiredCapacity");
        let now = self.clock.now();
        let mut s = self.lock();
        let alarm = self.rules.alarm;
        let g = Self::group_mut(&mut s, key)?;
        if let Some(period) = alarm {
            if target > g.desired {
                // The alarm counts from the first ask of a run of asks a
                // minute or less apart.
                let since = match g.alarm {
                    Some((since, last)) if now.since(last) <= Duration::from_secs(90) => since,
                    _ => now,
                };
                g.alarm = Some((since, now));
                if now.since(since) < period {
                    return Ok(());
                }
            }
            g.alarm = None;
        }
        g.desired = target;
        self.converge(&mut s, key, now);
        Ok(())
    }

    async fn protect(&self, key: &PoolKey, id: &InstanceId, busy: bool) -> Result<(), PortError> {
        self.meter.call(Service::Fleet, "SetInstanceProtection");
        let now = self.clock.now();
        let mut s = self.lock();
        match s.machines.get_mut(id).filter(|m| m.terminated_at.is_none()) {
            Some(m) => m.protected = busy,
            None => return Err(PortError::NotFound(format!("instance {id}"))),
        }
        if !busy {
            self.converge(&mut s, key, now);
        }
        Ok(())
    }

    async fn worker_seen(
        &self,
        _key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError> {
        self.meter.call(Service::Fleet, "CreateTags");
        if let Some(m) = self.lock().machines.get_mut(id) {
            m.seen_at = Some(at);
        }
        Ok(())
    }

    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        self.meter.call(Service::Fleet, "DescribeInstances");
        let s = self.lock();
        Ok(Self::group_machines(&s, key)
            .filter(|m| {
                m.booted && now.since(m.seen_at.unwrap_or(m.launched_at).max(m.launched_at)) > bound
            })
            .map(|m| m.id.clone())
            .collect())
    }

    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        self.meter.call(Service::Fleet, "DescribeAutoScalingGroups");
        let s = self.lock();
        Ok(Self::group_machines(&s, key)
            .map(|m| Instance {
                id: m.id.clone(),
                pool: key.clone(),
                state: if m.booted {
                    InstanceState::Running
                } else {
                    InstanceState::Pending
                },
                launched_at: m.launched_at,
            })
            .collect())
    }

    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        self.meter
            .call(Service::Fleet, "TerminateInstanceInAutoScalingGroup");
        let now = self.clock.now();
        let mut s = self.lock();
        let alive = s
            .machines
            .get(id)
            .is_some_and(|m| m.terminated_at.is_none() && m.group == *key);
        if !alive {
            return Err(PortError::NotFound(format!("instance {id} in group {key}")));
        }
        if decrement {
            let g = Self::group_mut(&mut s, key)?;
            g.desired = g.desired.saturating_sub(1);
        }
        self.end(&mut s, id, now);
        self.converge(&mut s, key, now);
        Ok(())
    }

    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        self.meter.calls(
            Service::Fleet,
            "DeleteAutoScalingGroup+DeleteLaunchTemplate",
            2,
        );
        let now = self.clock.now();
        let mut s = self.lock();
        let ids = match s.groups.get_mut(key) {
            Some(g) if g.deleting_since.is_none() => {
                g.deleting_since = Some(now);
                g.desired = 0;
                g.machines.clone()
            }
            _ => return Ok(()),
        };
        for id in ids {
            self.end(&mut s, &id, now);
        }
        Ok(())
    }

    async fn launch_trouble(&self, _key: &PoolKey) -> Result<Option<String>, PortError> {
        self.meter.call(Service::Fleet, "DescribeScalingActivities");
        Ok(None)
    }

    async fn silent_why(
        &self,
        _key: &PoolKey,
        _id: &InstanceId,
    ) -> Result<Option<String>, PortError> {
        self.meter.call(Service::Fleet, "GetConsoleOutput");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(price: u64, spot: bool, gpus: u32, ran_s: i64, reclaimed: bool) -> Machine {
        Machine {
            id: InstanceId::new("i-1").unwrap(),
            group: PoolKey::new("p").unwrap(),
            cloud: Cloud::Ec2spot,
            machine: "m7i.large".into(),
            spot,
            gpus,
            price,
            launched_at: Timestamp(0),
            booted: true,
            protected: false,
            seen_at: None,
            terminated_at: Some(Timestamp(ran_s * 1000)),
            reclaimed,
        }
    }

    #[test]
    fn a_machine_costs_its_price_and_its_disk_and_address_as_ec2_bills() {
        // $1/h for two hours, plus 30 GiB gp3 and an IPv4 address.
        let extra = overhead_micro_per_hour(0);
        assert_eq!(extra, 30 * 80_000 / 730 + 5_000);
        assert_eq!(
            machine(1_000_000, true, 0, 7200, false).cost(Timestamp(0)),
            2 * (1_000_000 + extra)
        );
        // At least a minute.
        assert_eq!(
            machine(3_600_000, false, 0, 10, false).cost(Timestamp(0)),
            (3_600_000 + extra) / 60
        );
        // Reclaimed by the market within its first hour: the instance is free.
        assert_eq!(
            machine(1_000_000, true, 0, 1800, true).cost(Timestamp(0)),
            extra / 2
        );
        assert_eq!(
            machine(1_000_000, true, 0, 3600, true).cost(Timestamp(0)),
            1_000_000 + extra
        );
        // A GPU machine's disk is 60 GiB.
        assert!(overhead_micro_per_hour(1) > overhead_micro_per_hour(0));
    }
}
