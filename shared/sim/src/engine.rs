//! One policy's run: the event loop. Every control-plane step is the real
//! handler (`submit`, `scale`, `cleanup`, `handle_interruption`) and every
//! worker step the real rule (`claim_work`, `beat`, `finish`, `hand_back`,
//! `leaves_idle`, `leave`), called through the ports over the simulated
//! store, queue and fleet; only the script's run is simulated (its
//! duration and checkpoint interval).

use crate::fleet::{Allocation, FleetRules, Prices, SimFleet, SimPlanner};
use crate::market::Market;
use crate::mem::{Counts, MemQueue, MemStore, Meter, Service};
use crate::rng::Rng;
use crate::scenario::{Policy, Scenario};
use crate::sched::{Event, Sched, SimClock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use studio_core::clock::{Clock, Timestamp};
use studio_core::contract::{SubmitJob, WorkspaceRef};
use studio_core::handlers::{
    cleanup, handle_interruption, scale, submit, Ctx, HandlerError, InstanceEvent,
    InstanceEventKind, Settings,
};
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::Job;
use studio_core::plan::CatalogPlanner;
use studio_core::ports::{PortError, Received};
use studio_core::resources::{Cloud, WorkerPolicy};
use studio_core::worker::rules::{
    beat, claim_work, finish, hand_back, leave, leaves_idle, Claim, Placed, Seen,
};
use studio_core::worker::Cadence;

/// The simulation starts at 2027-01-04T00:00:00Z (a Monday).
pub const START: Timestamp = Timestamp(1_799_020_800_000);

/// The worker's settings on a cloud machine (its bootstrap's).
const CADENCE: Cadence = Cadence::CLOUD;
const LEASE: Duration = Duration::from_secs(120);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The template's submit and events queues: a failed message comes back after this.
const QUEUE_VISIBILITY: Duration = Duration::from_secs(360);

/// What one policy's run left.
pub struct Outcome {
    pub jobs: Vec<Job>,
    pub counts: Counts,
    pub bill: crate::fleet::Bill,
    /// Compute an interruption threw away (not carried by a checkpoint),
    /// milliseconds.
    pub work_lost_ms: i64,
    /// When each job arrived (by id), milliseconds from the start.
    pub arrivals: HashMap<JobId, i64>,
    pub ended_at: Timestamp,
}

struct Run {
    job: Job,
    base_ms: i64,
    started: Timestamp,
}

struct Worker {
    group: PoolKey,
    queue: String,
    fixed: bool,
    idle_since: Timestamp,
    token: u64,
    run: Option<Run>,
    draining: bool,
    waiting: bool,
}

struct Track {
    idx: usize,
    saved_ms: i64,
}

pub struct Engine<'a> {
    ctx: Ctx,
    store: Arc<MemStore>,
    queue: Arc<MemQueue>,
    fleet: Arc<SimFleet>,
    meter: Arc<Meter>,
    sched: Arc<Sched>,
    clock: SimClock,
    scenario: &'a Scenario,
    policy: &'a Policy,
    rng: Rng,
    workers: BTreeMap<InstanceId, Worker>,
    waiters: HashMap<String, VecDeque<InstanceId>>,
    tracks: HashMap<JobId, Track>,
    submitted: usize,
    lost_ms: i64,
    events: u64,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl<'a> Engine<'a> {
    pub fn new(scenario: &'a Scenario, index: usize) -> Engine<'a> {
        let policy = &scenario.policies[index];
        let clock = SimClock::new(START);
        let dyn_clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let meter = Arc::new(Meter::default());
        let sched = Arc::new(Sched::default());
        let prices = Arc::new(Prices::default());
        let market: Arc<Market> = Arc::new(scenario.market.clone());
        let store = Arc::new(MemStore::new(meter.clone()));
        let queue = Arc::new(MemQueue::new(dyn_clock.clone(), meter.clone()));
        // Every policy draws from the same streams (common random numbers):
        // its row never depends on which others run beside it, and two
        // policies differ by what they do, not by the dice.
        let fleet = Arc::new(SimFleet::new(
            dyn_clock.clone(),
            meter.clone(),
            sched.clone(),
            market,
            prices.clone(),
            FleetRules {
                allocation: if policy.one_type {
                    Allocation::Cheapest
                } else {
                    Allocation::CapacityOptimized
                },
                alarm: policy.alarm,
                pending_delete: Duration::from_secs(120),
            },
            Rng::stream(scenario.seed, 1),
        ));
        // The template's defaults, where the local backend's differ.
        let settings = Settings {
            pool_grace: Duration::from_secs(600),
            max_attempts: policy.max_attempts,
            max_auto_workers: scenario.max_workers,
            heartbeat_timeout: Duration::from_secs(120),
            ..Settings::default()
        };
        let ctx = Ctx {
            store: store.clone(),
            queue: queue.clone(),
            fleet: fleet.clone(),
            planner: Arc::new(SimPlanner {
                inner: Arc::new(CatalogPlanner::shipped()),
                prices,
                one_type: policy.one_type,
            }),
            clock: dyn_clock,
            settings,
        };
        Engine {
            ctx,
            store,
            queue,
            fleet,
            meter,
            sched,
            clock,
            scenario,
            policy,
            rng: Rng::stream(scenario.seed, 2),
            workers: BTreeMap::new(),
            waiters: HashMap::new(),
            tracks: HashMap::new(),
            submitted: 0,
            lost_ms: 0,
            events: 0,
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn at(&self, d: Duration) -> Timestamp {
        self.now().plus(d)
    }

    fn push(&self, at: Timestamp, e: Event) {
        self.sched.push(at, e);
    }

    /// Runs to the end: every job ended, every machine and pool gone.
    ///
    /// # Errors
    /// A job the handlers refused, or work left at the horizon.
    pub async fn run(mut self) -> Result<Outcome, String> {
        let n = self.scenario.jobs.len();
        for (i, j) in self.scenario.jobs.iter().enumerate() {
            self.push(
                START.plus(Duration::from_millis(j.arrive_ms.max(0) as u64)),
                Event::Arrive(i),
            );
        }
        self.push(START, Event::ScaleTick);
        self.push(START, Event::CleanupTick);
        for (id, after) in &self.scenario.reclaims {
            if let Ok(id) = InstanceId::new(id.clone()) {
                self.push(START.plus(*after), Event::Notice(id));
            }
        }
        let end = START.plus(self.scenario.horizon);
        while let Some((at, ev)) = self.sched.pop() {
            if at > end {
                return Err(format!(
                    "policy {}: {} of {n} jobs had not ended after {} simulated",
                    self.policy.name,
                    self.store.open_jobs() + (n - self.submitted),
                    humantime_secs(self.scenario.horizon)
                ));
            }
            self.clock.set(at);
            self.events += 1;
            self.handle(ev).await?;
            self.wake();
            // Done when every job ended and cleanup tore everything down.
            if self.submitted == n
                && self.store.open_jobs() == 0
                && self.fleet.live() == 0
                && self.store.pools_left() == 0
            {
                break;
            }
        }
        let arrivals = self
            .tracks
            .iter()
            .map(|(id, t)| (id.clone(), self.scenario.jobs[t.idx].arrive_ms))
            .collect();
        Ok(Outcome {
            jobs: self.store.all_jobs(),
            counts: self.meter.snapshot(),
            bill: self.fleet.bill(),
            work_lost_ms: self.lost_ms,
            arrivals,
            ended_at: self.now(),
        })
    }

    async fn handle(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Arrive(i) => self.arrive(i).await?,
            Event::ScaleTick => {
                self.meter.set_phase("scale");
                self.meter.lambda();
                let _ = scale(&self.ctx).await;
                self.push(self.at(Duration::from_secs(60)), Event::ScaleTick);
            }
            Event::CleanupTick => {
                self.meter.set_phase("cleanup");
                self.meter.lambda();
                let _ = cleanup(&self.ctx).await;
                self.push(self.at(Duration::from_secs(300)), Event::CleanupTick);
            }
            Event::Booted(id) => self.booted(id).await,
            Event::Poll(id, tok) => self.poll(&id, tok).await,
            Event::PollTimeout(id, tok) => self.poll_timeout(&id, tok).await,
            Event::Beat(id, tok) => self.beat(&id, tok).await,
            Event::ScriptEnd(id, tok) => self.script_end(&id, tok).await,
            Event::Seen(id) => {
                if let Some(w) = self.workers.get(&id) {
                    self.meter.set_phase("worker");
                    let _ = self.ctx.fleet.worker_seen(&w.group, &id, self.now()).await;
                    self.push(self.at(CADENCE.seen_every), Event::Seen(id));
                }
            }
            Event::Notice(id) => self.notice(id),
            Event::WorkerNotice(id) => self.preempted(&id, "spot instance-action: terminate").await,
            Event::Rebalance(id) => {
                if let Some(m) = self
                    .fleet
                    .machine(&id)
                    .filter(|m| m.terminated_at.is_none())
                {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.draining = true;
                    }
                    if !is_gce(m.cloud) {
                        let d = self.delivery();
                        let at = self.at(d);
                        self.push(
                            at,
                            Event::Deliver(self.instance_event(&id, InstanceEventKind::Rebalance)),
                        );
                    }
                }
            }
            Event::Reclaim(id) => {
                let cloud = self.fleet.machine(&id).map(|m| m.cloud);
                if self.fleet.reclaim(&id) && cloud.is_some_and(is_gce) {
                    // GCE: the preemption's audit log, through the sink and a push.
                    let d = Duration::from_secs_f64(self.rng.range(30.0, 90.0));
                    let at = self.at(d);
                    let kind = InstanceEventKind::Gone {
                        state: "preempted".into(),
                    };
                    self.push(at, Event::Deliver(self.instance_event(&id, kind)));
                }
            }
            Event::Terminated(id) => {
                if let Some(w) = self.workers.remove(&id) {
                    self.forget_waiter(&id, &w.queue);
                    if let Some(run) = &w.run {
                        self.account_loss(run);
                    }
                }
                // EC2: the template's rule matches `shutting-down` and
                // `terminated`, each its own event.
                if self.fleet.machine(&id).is_some_and(|m| !is_gce(m.cloud)) {
                    for state in ["shutting-down", "terminated"] {
                        let d = self.delivery();
                        let at = self.at(d);
                        let kind = InstanceEventKind::Gone {
                            state: state.into(),
                        };
                        self.push(at, Event::Deliver(self.instance_event(&id, kind)));
                    }
                }
            }
            Event::Deliver(e) => {
                self.meter.set_phase("interruption");
                self.meter.lambda();
                // EventBridge to the events queue, received and deleted by
                // the function's poller.
                self.meter
                    .calls(Service::Sqs, "SendMessage+ReceiveMessage+DeleteMessage", 3);
                if handle_interruption(&self.ctx, &e).await.is_err() {
                    self.push(self.at(QUEUE_VISIBILITY), Event::Deliver(e));
                }
            }
        }
        Ok(())
    }

    /// EventBridge to SQS to the function: a few seconds.
    fn delivery(&mut self) -> Duration {
        Duration::from_secs_f64(self.rng.range(1.0, 6.0))
    }

    fn instance_event(&self, id: &InstanceId, kind: InstanceEventKind) -> Box<InstanceEvent> {
        Box::new(InstanceEvent {
            event_id: format!("ev-{}-{}", id, self.events),
            instance: id.clone(),
            kind,
            machine_uid: None,
            at: Some(self.now()),
        })
    }

    async fn arrive(&mut self, i: usize) -> Result<(), String> {
        let j = &self.scenario.jobs[i];
        let cloud = match j.cloud {
            Cloud::Ec2spot if self.policy.on_demand => Cloud::Ec2,
            Cloud::Gcspot if self.policy.on_demand => Cloud::Gcloud,
            c => c,
        };
        let id = JobId::new(format!("job-{i:06}")).expect("a valid job id");
        let mut spec = SubmitJob::new(cloud, j.request()?, "sim");
        spec.job_id = Some(id.clone());
        spec.fallback_on_demand = self.policy.fallback;
        spec.entrypoint = "train.py".into();
        spec.workspace = WorkspaceRef {
            sha256: "0".repeat(64),
            bytes: 1,
        };
        self.meter.set_phase("submit");
        self.meter.lambda();
        self.meter
            .calls(Service::Sqs, "SendMessage+ReceiveMessage+DeleteMessage", 3);
        match submit(&self.ctx, &format!("submit-{i}"), &spec.to_json()).await {
            Ok(_) => {
                self.tracks.insert(
                    id,
                    Track {
                        idx: i,
                        saved_ms: 0,
                    },
                );
                self.submitted += 1;
            }
            Err(e) if e.is_retryable() => {
                // The submit queue's visibility timeout, then again.
                self.push(self.at(QUEUE_VISIBILITY), Event::Arrive(i));
            }
            Err(e) => return Err(format!("workload job {i}: refused: {e}")),
        }
        Ok(())
    }

    async fn booted(&mut self, id: InstanceId) {
        if !self.fleet.booted(&id) {
            return;
        }
        let Some(m) = self.fleet.machine(&id) else {
            return;
        };
        self.meter.set_phase("worker");
        let (pool_key, _) = studio_core::pool::split_group_key(&m.group);
        let fixed = matches!(
            self.ctx.store.get_pool(&pool_key).await,
            Ok(Some(p)) if matches!(p.spec.policy, WorkerPolicy::Fixed(_))
        );
        let queue = self.ctx.settings.work_queue(&m.group);
        self.workers.insert(
            id.clone(),
            Worker {
                group: m.group.clone(),
                queue,
                fixed,
                idle_since: self.now(),
                token: 0,
                run: None,
                draining: false,
                waiting: false,
            },
        );
        self.push(self.now(), Event::Poll(id.clone(), 0));
        self.push(self.at(CADENCE.seen_every), Event::Seen(id));
    }

    fn current(&self, id: &InstanceId, tok: u64) -> bool {
        self.workers.get(id).is_some_and(|w| w.token == tok)
    }

    async fn poll(&mut self, id: &InstanceId, tok: u64) {
        if !self.current(id, tok) {
            return;
        }
        let now = self.now();
        let w = &self.workers[id];
        if w.run.is_some() || w.waiting {
            return;
        }
        if w.draining {
            let idle_for = now.since(w.idle_since);
            if idle_for >= IDLE_TIMEOUT {
                self.leave(id).await;
            } else {
                self.push(
                    w.idle_since.plus(IDLE_TIMEOUT),
                    Event::Poll(id.clone(), tok),
                );
            }
            return;
        }
        self.meter.set_phase("worker");
        let queue = w.queue.clone();
        match self
            .ctx
            .queue
            .receive(&queue, 1, LEASE, CADENCE.poll_wait)
            .await
        {
            Err(PortError::NotFound(_)) => {
                // The pool is gone; its group's deletion ends the machine.
                self.workers.remove(id);
            }
            Err(_) => self.push(
                self.at(Duration::from_secs(1)),
                Event::Poll(id.clone(), tok),
            ),
            Ok(msgs) if msgs.is_empty() => {
                if let Some(w) = self.workers.get_mut(id) {
                    w.waiting = true;
                }
                self.waiters.entry(queue).or_default().push_back(id.clone());
                self.push(
                    self.at(CADENCE.poll_wait),
                    Event::PollTimeout(id.clone(), tok),
                );
            }
            Ok(msgs) => {
                for msg in msgs {
                    self.item(id, &queue, msg).await;
                }
            }
        }
    }

    async fn poll_timeout(&mut self, id: &InstanceId, tok: u64) {
        if !self.current(id, tok) || !self.workers[id].waiting {
            return;
        }
        let now = self.now();
        let (queue, fixed, idle_for) = {
            let w = self.workers.get_mut(id).expect("checked");
            w.waiting = false;
            (w.queue.clone(), w.fixed, now.since(w.idle_since))
        };
        self.forget_waiter(id, &queue);
        self.meter.set_phase("worker");
        if leaves_idle(&self.ctx, &queue, fixed, idle_for, IDLE_TIMEOUT).await {
            self.leave(id).await;
        } else {
            self.push(now, Event::Poll(id.clone(), tok));
        }
    }

    async fn leave(&mut self, id: &InstanceId) {
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        self.forget_waiter(id, &w.queue);
        self.meter.set_phase("worker");
        let _ = leave(&self.ctx, &w.group, id).await;
    }

    fn forget_waiter(&mut self, id: &InstanceId, queue: &str) {
        if let Some(q) = self.waiters.get_mut(queue) {
            q.retain(|x| x != id);
        }
    }

    /// Messages sent wake the workers long-polling their queue, one each.
    fn wake(&mut self) {
        for (queue, n) in self.queue.take_sent() {
            for _ in 0..n {
                let Some(id) = self.waiters.get_mut(&queue).and_then(VecDeque::pop_front) else {
                    break;
                };
                if let Some(w) = self.workers.get_mut(&id).filter(|w| w.waiting) {
                    w.waiting = false;
                    w.token += 1;
                    let tok = w.token;
                    // The long poll that brings it is the one already counted.
                    self.meter.uncount_receive();
                    self.sched.push(self.clock.now(), Event::Poll(id, tok));
                }
            }
        }
    }

    async fn item(&mut self, id: &InstanceId, queue: &str, msg: Received) {
        let now = self.now();
        let tok = self.workers[id].token;
        match claim_work(&self.ctx, id, &msg).await {
            Err(HandlerError::BadInput(e)) => {
                let _ = self
                    .ctx
                    .queue
                    .dead_letter(queue, &msg, &e.to_string())
                    .await;
                self.push(now, Event::Poll(id.clone(), tok));
            }
            Err(_) => {
                let _ = self
                    .ctx
                    .queue
                    .release(queue, &msg.receipt, Duration::from_secs(5))
                    .await;
                self.push(now, Event::Poll(id.clone(), tok));
            }
            Ok(Claim::Drop(_)) => {
                let _ = self.ctx.queue.ack(queue, &msg.receipt).await;
                if let Some(w) = self.workers.get_mut(id) {
                    w.idle_since = now;
                }
                self.push(now, Event::Poll(id.clone(), tok));
            }
            Ok(Claim::Run(job)) => {
                let _ = self.ctx.queue.ack(queue, &msg.receipt).await;
                let group = self.workers[id].group.clone();
                let _ = self.ctx.fleet.protect(&group, id, true).await;
                let Some(t) = self.tracks.get(&job.id) else {
                    return;
                };
                let j = &self.scenario.jobs[t.idx];
                let base_ms = if self.policy.resume { t.saved_ms } else { 0 };
                let ends = now.plus(self.scenario.setup).plus(Duration::from_millis(
                    (j.duration_ms - base_ms).max(0) as u64,
                ));
                let Some(w) = self.workers.get_mut(id) else {
                    return;
                };
                w.token += 1;
                let tok = w.token;
                w.run = Some(Run {
                    job: *job,
                    base_ms,
                    started: now,
                });
                self.push(now.plus(CADENCE.beat_every), Event::Beat(id.clone(), tok));
                self.push(ends, Event::ScriptEnd(id.clone(), tok));
            }
        }
    }

    async fn beat(&mut self, id: &InstanceId, tok: u64) {
        if !self.current(id, tok) {
            return;
        }
        let Some(run) = &self.workers[id].run else {
            return;
        };
        let (job, attempt) = (run.job.id.clone(), run.job.attempt);
        self.meter.set_phase("worker");
        // The heartbeat looks every 5 s and writes every 30 s: the looks
        // between two writes are counted, not run (only a cancel, which a
        // simulation never issues, would change what they see).
        let looks = CADENCE.beat_every.as_secs() / CADENCE.heartbeat.as_secs().max(1);
        self.meter
            .calls(Service::DynamoDb, "GetItem", looks.saturating_sub(1));
        self.meter.units(looks.saturating_sub(1), 0);
        match beat(&self.ctx, &job, attempt, id, true, &Placed::default(), None).await {
            Ok(Seen::Ours) | Err(_) => {
                self.push(self.at(CADENCE.beat_every), Event::Beat(id.clone(), tok))
            }
            Ok(Seen::Warned) => self.preempted(id, "spot interruption warning").await,
            Ok(Seen::Cancelled | Seen::Lost) => self.stop_run(id).await,
        }
    }

    /// The attempt was taken away: the script is stopped, the machine free.
    async fn stop_run(&mut self, id: &InstanceId) {
        if let Some(run) = self.take_run(id) {
            self.account_loss(&run);
            self.free(id).await;
        }
    }

    async fn script_end(&mut self, id: &InstanceId, tok: u64) {
        if !self.current(id, tok) {
            return;
        }
        let Some(run) = self.take_run(id) else { return };
        self.meter.set_phase("worker");
        let (job, attempt) = (&run.job.id, run.job.attempt);
        finish(&self.ctx, job, attempt, id, Some(0), None, Vec::new()).await;
        self.free(id).await;
    }

    /// The worker's attempt ends now: its events lapse, it is idle from now.
    fn take_run(&mut self, id: &InstanceId) -> Option<Run> {
        let now = self.now();
        let w = self.workers.get_mut(id)?;
        let run = w.run.take()?;
        w.token += 1;
        w.idle_since = now;
        Some(run)
    }

    /// The machine is free again (its scale-in protection lifted) and its
    /// worker polls.
    async fn free(&mut self, id: &InstanceId) {
        let Some((group, tok)) = self.workers.get(id).map(|w| (w.group.clone(), w.token)) else {
            return;
        };
        let _ = self.ctx.fleet.protect(&group, id, false).await;
        self.push(self.now(), Event::Poll(id.clone(), tok));
    }

    fn notice(&mut self, id: InstanceId) {
        let Some(m) = self
            .fleet
            .machine(&id)
            .filter(|m| m.terminated_at.is_none())
        else {
            return;
        };
        let sees = Duration::from_secs_f64(self.rng.range(0.0, CADENCE.notice_every.as_secs_f64()));
        self.push(self.at(sees), Event::WorkerNotice(id.clone()));
        if !is_gce(m.cloud) {
            let d = self.delivery();
            let at = self.at(d);
            self.push(
                at,
                Event::Deliver(self.instance_event(&id, InstanceEventKind::SpotWarning)),
            );
        }
        self.push(self.at(Market::notice(m.cloud)), Event::Reclaim(id));
    }

    /// The machine is going: the worker stops the script, the checkpoint
    /// it saved is kept, the job is handed back, the worker leaves.
    async fn preempted(&mut self, id: &InstanceId, why: &str) {
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        self.forget_waiter(id, &w.queue);
        if let Some(run) = &w.run {
            self.account_loss(run);
            self.meter.set_phase("worker");
            hand_back(
                &self.ctx,
                &run.job,
                run.job.attempt,
                why,
                &format!("worker:{id}"),
            )
            .await;
        }
    }

    /// An attempt ends early at `now`: what its script computed beyond the
    /// last checkpoint is lost (all of it when the policy does not resume).
    fn account_loss(&mut self, run: &Run) {
        let now = self.now();
        let Some(t) = self.tracks.get_mut(&run.job.id) else {
            return;
        };
        let j = &self.scenario.jobs[t.idx];
        let elapsed = ms(now.since(run.started));
        let progress =
            (run.base_ms + (elapsed - ms(self.scenario.setup)).max(0)).min(j.duration_ms);
        let saved = match (self.policy.resume, j.checkpoint_ms) {
            (true, Some(c)) if c > 0 => (progress / c * c).max(run.base_ms),
            (true, _) => run.base_ms,
            (false, _) => 0,
        };
        self.lost_ms += elapsed - (saved - run.base_ms).max(0);
        t.saved_ms = saved;
    }
}

fn is_gce(c: Cloud) -> bool {
    matches!(c, Cloud::Gcloud | Cloud::Gcspot)
}

fn humantime_secs(d: Duration) -> String {
    format!("{} days", d.as_secs() / 86_400)
}
