//! The job store and the work queues of the simulation, in memory, with
//! the semantics of the real ones (DynamoDB's compare-and-set, SQS's
//! leases, redelivery, redrive after five receives, depth counters that
//! lag, a deleted queue's name held for 60 s), and a [`Meter`] that counts
//! every call the handlers and the worker make through them.

use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use studio_core::clock::Clock;
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::pool::{Pool, PoolState, QueueDepth};
use studio_core::ports::{
    dead_letter_queue, listing_key, Created, JobPage, JobQuery, JobStore, PortError, Received,
    WorkQueue,
};

/// The cloud service a call is billed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Sqs,
    DynamoDb,
    /// EC2 and Auto Scaling (or Compute Engine): free API calls.
    Fleet,
}

/// Calls through the ports, by service and by (phase, operation): the
/// phase is the handler or worker rule the engine was running.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub by_service: BTreeMap<Service, u64>,
    pub by_phase: BTreeMap<(&'static str, &'static str), u64>,
    /// DynamoDB read and write request units.
    pub rru: u64,
    pub wru: u64,
    /// Lambda invocations (submit per message, schedules, events).
    pub lambda: u64,
}

/// The running counts: keyed by the address of the phase's and the
/// operation's names (every one a literal), not by comparing their text,
/// as they are bumped tens of millions of times in a large run.
#[derive(Debug, Default)]
struct Tally {
    phase: &'static str,
    services: [u64; 3],
    ops: HashMap<(usize, usize), (&'static str, &'static str, u64)>,
    rru: u64,
    wru: u64,
    lambda: u64,
}

#[derive(Debug, Default)]
pub struct Meter(Mutex<Tally>);

fn slot(s: Service) -> usize {
    match s {
        Service::Sqs => 0,
        Service::DynamoDb => 1,
        Service::Fleet => 2,
    }
}

impl Meter {
    pub fn set_phase(&self, phase: &'static str) {
        self.0.lock().expect("meter").phase = phase;
    }
    pub fn call(&self, service: Service, op: &'static str) {
        self.calls(service, op, 1);
    }
    pub fn calls(&self, service: Service, op: &'static str, n: u64) {
        let mut c = self.0.lock().expect("meter");
        c.services[slot(service)] += n;
        let phase = c.phase;
        let key = (phase.as_ptr() as usize, op.as_ptr() as usize);
        c.ops.entry(key).or_insert((phase, op, 0)).2 += n;
    }
    pub fn units(&self, rru: u64, wru: u64) {
        let mut c = self.0.lock().expect("meter");
        c.rru += rru;
        c.wru += wru;
    }
    pub fn lambda(&self) {
        self.0.lock().expect("meter").lambda += 1;
    }
    /// A long poll that a message ended early was counted when it began.
    pub fn uncount_receive(&self) {
        let mut c = self.0.lock().expect("meter");
        c.services[slot(Service::Sqs)] = c.services[slot(Service::Sqs)].saturating_sub(1);
        if let Some(e) = c
            .ops
            .values_mut()
            .find(|(p, o, _)| *p == "worker" && *o == "ReceiveMessage")
        {
            e.2 = e.2.saturating_sub(1);
        }
    }
    pub fn snapshot(&self) -> Counts {
        let c = self.0.lock().expect("meter");
        let mut by_phase = BTreeMap::new();
        for (phase, op, n) in c.ops.values() {
            *by_phase.entry((*phase, *op)).or_default() += n;
        }
        Counts {
            by_service: [Service::Sqs, Service::DynamoDb, Service::Fleet]
                .into_iter()
                .map(|s| (s, c.services[slot(s)]))
                .collect(),
            by_phase,
            rru: c.rru,
            wru: c.wru,
            lambda: c.lambda,
        }
    }
}

/// Read units of `bytes` read strongly (4 KB each), write units (1 KB each).
fn rru(bytes: u64) -> u64 {
    bytes.div_ceil(4096).max(1)
}
/// An index query's units: eventually consistent, half a strong read's.
fn eventual_rru(bytes: u64) -> u64 {
    bytes.div_ceil(8192).max(1)
}
fn wru(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

struct Stored {
    job: Job,
    /// The record's size, recomputed when its events or attempts change.
    bytes: u64,
    shape: (usize, usize),
}

fn shape(j: &Job) -> (usize, usize) {
    (j.events.len(), j.attempts.len())
}

/// The item's size: the record, and the key and index attributes beside
/// it (about 200 bytes in the DynamoDB adapter).
fn size_of(j: &Job) -> u64 {
    serde_json::to_vec(j).map_or(2048, |v| v.len() as u64) + 200
}

/// Write units of a job write, its indexes included: `by-pool-state`
/// always, `by-instance` once the job has a machine, `by-created` when the
/// job is created; an index whose key changes is written twice (the old
/// entry deleted, the new put).
fn job_write_units(bytes: u64, old: Option<&Job>, new: &Job) -> u64 {
    let w = wru(bytes);
    let mut units = w * 2;
    if new.instance.is_some() {
        units += w;
    }
    match old {
        None => units += 1,
        Some(o) => {
            if o.state != new.state || o.pool != new.pool {
                units += w;
            }
            if o.instance != new.instance && o.instance.is_some() {
                units += w;
            }
        }
    }
    units
}

/// A pool record's size: its samples are most of it.
fn pool_bytes(p: &Pool) -> u64 {
    600 + p.samples.len() as u64 * 40
}

#[derive(Default)]
struct StoreInner {
    jobs: HashMap<JobId, Stored>,
    pools: BTreeMap<PoolKey, Pool>,
    by_pool: HashMap<PoolKey, BTreeMap<String, JobId>>,
    active: HashMap<PoolKey, BTreeMap<String, JobId>>,
    on_instance: HashMap<InstanceId, BTreeSet<JobId>>,
    open: usize,
}

impl StoreInner {
    fn index(&mut self, j: &Job, old: Option<&Job>) {
        let key = listing_key(j);
        if let Some(o) = old.filter(|o| o.pool != j.pool) {
            if let Some(m) = self.by_pool.get_mut(&o.pool) {
                m.remove(&key);
            }
            if let Some(m) = self.active.get_mut(&o.pool) {
                m.remove(&key);
            }
        }
        self.by_pool
            .entry(j.pool.clone())
            .or_default()
            .insert(key.clone(), j.id.clone());
        let active = self.active.entry(j.pool.clone()).or_default();
        if JobState::ACTIVE.contains(&j.state) {
            active.insert(key, j.id.clone());
        } else {
            active.remove(&key);
        }
        if let Some(i) = &j.instance {
            self.on_instance
                .entry(i.clone())
                .or_default()
                .insert(j.id.clone());
        }
        match (old.map(|o| !o.state.is_terminal()), !j.state.is_terminal()) {
            (None | Some(false), true) => self.open += 1,
            (Some(true), false) => self.open -= 1,
            _ => {}
        }
    }
}

/// DynamoDB's job table, in memory.
pub struct MemStore {
    inner: Mutex<StoreInner>,
    meter: Arc<Meter>,
}

impl MemStore {
    pub fn new(meter: Arc<Meter>) -> MemStore {
        MemStore {
            inner: Mutex::new(StoreInner::default()),
            meter,
        }
    }

    /// Jobs not in a terminal state.
    pub fn open_jobs(&self) -> usize {
        self.inner.lock().expect("store").open
    }

    /// Pools not yet deleted by cleanup.
    pub fn pools_left(&self) -> usize {
        self.lock()
            .pools
            .values()
            .filter(|p| p.state != PoolState::Deleted)
            .count()
    }

    /// Every job, in id order (for the report).
    pub fn all_jobs(&self) -> Vec<Job> {
        let inner = self.inner.lock().expect("store");
        let mut v: Vec<Job> = inner.jobs.values().map(|s| s.job.clone()).collect();
        v.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().expect("store")
    }
}

#[async_trait]
impl JobStore for MemStore {
    async fn create_job(&self, job: &Job) -> Result<Created<Job>, PortError> {
        self.meter.call(Service::DynamoDb, "PutItem");
        let mut s = self.lock();
        if let Some(e) = s.jobs.get(&job.id) {
            // The condition failed: the table's write is charged.
            self.meter.units(0, wru(e.bytes));
            return Ok(Created::Existing(e.job.clone()));
        }
        let bytes = size_of(job);
        self.meter.units(0, job_write_units(bytes, None, job));
        s.index(job, None);
        s.jobs.insert(
            job.id.clone(),
            Stored {
                job: job.clone(),
                bytes,
                shape: shape(job),
            },
        );
        Ok(Created::New(job.clone()))
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, PortError> {
        self.meter.call(Service::DynamoDb, "GetItem");
        let s = self.lock();
        let got = s.jobs.get(id);
        self.meter.units(got.map_or(1, |g| rru(g.bytes)), 0);
        Ok(got.map(|g| g.job.clone()))
    }

    async fn update_job(&self, job: &Job) -> Result<Job, PortError> {
        self.update_job_owned(job.clone()).await
    }

    async fn update_job_owned(&self, mut new: Job) -> Result<Job, PortError> {
        self.meter.call(Service::DynamoDb, "PutItem");
        let mut s = self.lock();
        let Some(stored) = s.jobs.get(&new.id) else {
            self.meter.units(0, 1);
            return Err(PortError::NotFound(format!("job {}", new.id)));
        };
        if stored.job.version != new.version {
            // A failed condition still costs the write, and the adapter
            // reads the record again.
            self.meter.call(Service::DynamoDb, "GetItem");
            self.meter.units(rru(stored.bytes), wru(stored.bytes));
            return Err(PortError::Conflict);
        }
        new.version += 1;
        let bytes = if shape(&new) == stored.shape {
            stored.bytes
        } else {
            size_of(&new)
        };
        // A put costs the larger of the old and the new item.
        self.meter.units(
            0,
            job_write_units(bytes.max(stored.bytes), Some(&stored.job), &new),
        );
        // Most writes are heartbeats: the indexes change only with the
        // state, the pool or the machine.
        let reindex = (stored.job.state, &stored.job.pool, &stored.job.instance)
            != (new.state, &new.pool, &new.instance);
        let shape = shape(&new);
        let out = new.clone();
        let old = s.jobs.insert(
            new.id.clone(),
            Stored {
                job: new,
                bytes,
                shape,
            },
        );
        if let (true, Some(old)) = (reindex, old) {
            s.index(&out, Some(&old.job));
        }
        Ok(out)
    }

    async fn list_jobs(
        &self,
        pool: Option<&PoolKey>,
        states: &[JobState],
    ) -> Result<Vec<Job>, PortError> {
        // The adapter queries the pool-and-state index once per state.
        self.meter
            .calls(Service::DynamoDb, "Query", states.len().max(1) as u64);
        let s = self.lock();
        let wanted = |j: &Job| states.is_empty() || states.contains(&j.state);
        let only_active =
            !states.is_empty() && states.iter().all(|st| JobState::ACTIVE.contains(st));
        let mut out = Vec::new();
        let mut bytes = 0;
        match pool {
            Some(p) => {
                let index = if only_active {
                    s.active.get(p)
                } else {
                    s.by_pool.get(p)
                };
                for id in index.into_iter().flat_map(|m| m.values().rev()) {
                    let st = &s.jobs[id];
                    if wanted(&st.job) {
                        bytes += st.bytes;
                        out.push(st.job.clone());
                    }
                }
            }
            None => {
                let mut all: Vec<&Stored> = s.jobs.values().filter(|st| wanted(&st.job)).collect();
                all.sort_by_key(|st| std::cmp::Reverse(listing_key(&st.job)));
                for st in all {
                    bytes += st.bytes;
                    out.push(st.job.clone());
                }
            }
        }
        self.meter.units(eventual_rru(bytes), 0);
        Ok(out)
    }

    async fn page_jobs(&self, q: &JobQuery) -> Result<JobPage, PortError> {
        let jobs = self.list_jobs(q.pool.as_ref(), &[]).await?;
        let mut page: Vec<Job> = jobs
            .into_iter()
            .filter(|j| q.matches(j))
            .filter(|j| q.before.as_ref().is_none_or(|b| listing_key(j) < *b))
            .collect();
        let limit = q.limit.max(1) as usize;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().map(listing_key)).flatten();
        Ok(JobPage { jobs: page, next })
    }

    async fn jobs_on_instance(&self, instance: &InstanceId) -> Result<Vec<Job>, PortError> {
        self.meter.call(Service::DynamoDb, "Query");
        let s = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        for id in s.on_instance.get(instance).into_iter().flatten() {
            let st = &s.jobs[id];
            if st.job.instance.as_ref() == Some(instance) {
                bytes += st.bytes;
                // The index holds keys: each job is then read whole, strongly.
                self.meter.call(Service::DynamoDb, "GetItem");
                self.meter.units(rru(st.bytes), 0);
                out.push(st.job.clone());
            }
        }
        self.meter.units(eventual_rru(bytes), 0);
        Ok(out)
    }

    async fn get_pool(&self, key: &PoolKey) -> Result<Option<Pool>, PortError> {
        self.meter.call(Service::DynamoDb, "GetItem");
        let p = self.lock().pools.get(key).cloned();
        self.meter.units(rru(p.as_ref().map_or(1, pool_bytes)), 0);
        Ok(p)
    }

    async fn create_pool(&self, pool: &Pool) -> Result<Created<Pool>, PortError> {
        self.meter.call(Service::DynamoDb, "PutItem");
        self.meter.units(0, wru(pool_bytes(pool)));
        let mut s = self.lock();
        if let Some(p) = s.pools.get(&pool.key) {
            return Ok(Created::Existing(p.clone()));
        }
        s.pools.insert(pool.key.clone(), pool.clone());
        Ok(Created::New(pool.clone()))
    }

    async fn update_pool(&self, pool: &Pool) -> Result<Pool, PortError> {
        self.meter.call(Service::DynamoDb, "PutItem");
        self.meter.units(0, wru(pool_bytes(pool)));
        let mut s = self.lock();
        match s.pools.get(&pool.key) {
            None => Err(PortError::NotFound(format!("pool {}", pool.key))),
            Some(p) if p.version != pool.version => Err(PortError::Conflict),
            Some(_) => {
                let mut new = pool.clone();
                new.version += 1;
                s.pools.insert(new.key.clone(), new.clone());
                Ok(new)
            }
        }
    }

    async fn live_pools(&self) -> Result<Vec<Pool>, PortError> {
        self.meter.call(Service::DynamoDb, "Scan");
        let s = self.lock();
        // A strongly consistent scan over every pool record, deleted ones too.
        let scanned: u64 = s.pools.values().map(pool_bytes).sum();
        self.meter.units(rru(scanned), 0);
        Ok(s.pools
            .values()
            .filter(|p| p.state != PoolState::Deleted)
            .cloned()
            .collect())
    }
}

/// SQS's maxReceiveCount in the deployed template.
pub const MAX_RECEIVES: u32 = 5;

#[derive(Debug, Clone)]
struct Msg {
    id: String,
    body: String,
    receive_count: u32,
}

#[derive(Default)]
struct Q {
    visible: VecDeque<Msg>,
    delayed: BTreeMap<(i64, u64), Msg>,
    leased: HashMap<String, (Msg, i64)>,
    /// (time, depth) at each change, oldest first: what a lagging
    /// counter reports.
    history: VecDeque<(i64, QueueDepth)>,
}

impl Q {
    fn now_depth(&self) -> QueueDepth {
        QueueDepth {
            visible: (self.visible.len() + self.delayed.len()) as u64,
            in_flight: self.leased.len() as u64,
        }
    }
    fn record(&mut self, now: i64) {
        let d = self.now_depth();
        if self.history.back().is_none_or(|(_, last)| *last != d) {
            self.history.push_back((now, d));
        }
    }
    /// Delayed messages due and leases lapsed become visible again.
    fn settle(&mut self, now: i64) {
        while let Some(e) = self.delayed.first_entry() {
            if e.key().0 > now {
                break;
            }
            let m = e.remove();
            self.visible.push_back(m);
        }
        if self.leased.values().any(|(_, d)| *d <= now) {
            let mut lapsed: Vec<(String, i64)> = self
                .leased
                .iter()
                .filter(|(_, (_, d))| *d <= now)
                .map(|(r, (_, d))| (r.clone(), *d))
                .collect();
            lapsed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            for (r, _) in lapsed {
                if let Some((m, _)) = self.leased.remove(&r) {
                    self.visible.push_back(m);
                }
            }
        }
    }
}

#[derive(Default)]
struct QInner {
    queues: HashMap<String, Q>,
    deleted: HashMap<String, i64>,
    next: u64,
    sent: Vec<(String, usize)>,
}

/// SQS, in memory.
pub struct MemQueue {
    inner: Mutex<QInner>,
    clock: Arc<dyn Clock>,
    meter: Arc<Meter>,
    /// How far behind the depth counters are (SQS: "approximately", up to a minute).
    pub lag: Duration,
    /// How long a deleted queue's name cannot be used (SQS: 60 s).
    pub name_hold: Duration,
}

impl MemQueue {
    pub fn new(clock: Arc<dyn Clock>, meter: Arc<Meter>) -> MemQueue {
        MemQueue {
            inner: Mutex::new(QInner::default()),
            clock,
            meter,
            lag: Duration::from_secs(60),
            name_hold: Duration::from_secs(60),
        }
    }

    /// Queues sent to since the last call, and how many messages each got.
    pub fn take_sent(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut self.inner.lock().expect("queue").sent)
    }

    fn now(&self) -> i64 {
        self.clock.now().0
    }
}

fn missing(queue: &str) -> PortError {
    PortError::NotFound(format!("queue {queue}"))
}

#[async_trait]
impl WorkQueue for MemQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        self.meter.calls(Service::Sqs, "CreateQueue", 2);
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        for name in [queue.to_string(), dead_letter_queue(queue)] {
            if s.queues.contains_key(&name) {
                continue;
            }
            if let Some(at) = s
                .deleted
                .get(&name)
                .filter(|at| now - **at < self.name_hold.as_millis() as i64)
            {
                return Err(PortError::backend(
                    "sqs",
                    format!(
                        "AWS.SimpleQueueService.QueueDeletedRecently: {name} was deleted {} ms ago; wait 60 seconds",
                        now - at
                    ),
                ));
            }
            let mut q = Q::default();
            q.record(now);
            s.queues.insert(name, q);
        }
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        self.meter.calls(Service::Sqs, "DeleteQueue", 2);
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        for name in [queue.to_string(), dead_letter_queue(queue)] {
            if s.queues.remove(&name).is_some() {
                s.deleted.insert(name, now);
            }
        }
        Ok(())
    }

    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        self.meter.calls(
            Service::Sqs,
            "SendMessageBatch",
            bodies.len().div_ceil(10).max(1) as u64,
        );
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let first = s.next;
        s.next += bodies.len() as u64;
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        for (i, b) in bodies.iter().enumerate() {
            q.visible.push_back(Msg {
                id: format!("msg-{}", first + i as u64),
                body: b.clone(),
                receive_count: 0,
            });
        }
        q.record(now);
        s.sent.push((queue.to_string(), bodies.len()));
        Ok(())
    }

    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        _wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        self.meter.call(Service::Sqs, "ReceiveMessage");
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let QInner { queues, next, .. } = &mut *s;
        let q = queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        q.settle(now);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        while out.len() < max.max(1) as usize {
            let Some(mut m) = q.visible.pop_front() else {
                break;
            };
            m.receive_count += 1;
            if m.receive_count > MAX_RECEIVES {
                dead.push(m);
                continue;
            }
            let receipt = format!("rcpt-{next}");
            *next += 1;
            out.push(Received {
                message_id: m.id.clone(),
                receipt: receipt.clone(),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
            q.leased
                .insert(receipt, (m, now + lease.as_millis() as i64));
        }
        q.record(now);
        if !dead.is_empty() {
            if let Some(dlq) = queues.get_mut(&dead_letter_queue(queue)) {
                dlq.visible.extend(dead);
                dlq.record(now);
            }
        }
        Ok(out)
    }

    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        self.meter.call(Service::Sqs, "ChangeMessageVisibility");
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        match q.leased.get_mut(receipt) {
            Some((_, d)) => {
                *d = now + lease.as_millis() as i64;
                Ok(())
            }
            None => Err(PortError::NotFound(format!("receipt {receipt}"))),
        }
    }

    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.meter.call(Service::Sqs, "DeleteMessage");
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        q.leased.remove(receipt);
        q.record(now);
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.meter.call(Service::Sqs, "ChangeMessageVisibility");
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let seq = s.next;
        s.next += 1;
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        if let Some((m, _)) = q.leased.remove(receipt) {
            q.delayed.insert((now + delay.as_millis() as i64, seq), m);
        }
        q.record(now);
        Ok(())
    }

    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        _reason: &str,
    ) -> Result<(), PortError> {
        self.meter
            .calls(Service::Sqs, "SendMessage+DeleteMessage", 2);
        let now = self.now();
        let mut s = self.inner.lock().expect("queue");
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        let m = q.leased.remove(&msg.receipt).map(|(m, _)| m);
        q.record(now);
        if let (Some(m), Some(dlq)) = (m, s.queues.get_mut(&dead_letter_queue(queue))) {
            dlq.visible.push_back(m);
            dlq.record(now);
        }
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        self.meter.call(Service::Sqs, "GetQueueAttributes");
        let now = self.now();
        let cutoff = now - self.lag.as_millis() as i64;
        let mut s = self.inner.lock().expect("queue");
        let q = s.queues.get_mut(queue).ok_or_else(|| missing(queue))?;
        q.settle(now);
        q.record(now);
        // The newest state at least `lag` old; older ones are dropped.
        while q.history.len() > 1 && q.history[1].0 <= cutoff {
            q.history.pop_front();
        }
        Ok(match q.history.front() {
            Some((at, d)) if *at <= cutoff => *d,
            _ => QueueDepth::default(),
        })
    }
}
