//! The simulation's time: a queue of events by time (ties in the order
//! they were scheduled), and a clock the handlers read that jumps from one
//! event to the next. Nothing sleeps.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use studio_core::clock::{Clock, Timestamp};
use studio_core::handlers::InstanceEvent;
use studio_core::ids::InstanceId;

/// What happens at a time.
#[derive(Debug, Clone)]
pub enum Event {
    /// Workload job `n` is submitted.
    Arrive(usize),
    /// The `scale-on-queue-depth` schedule (every minute).
    ScaleTick,
    /// The `cleanup-empty-group` schedule (every 5 minutes).
    CleanupTick,
    /// A machine finished booting: its worker starts.
    Booted(InstanceId),
    /// The worker receives from its queue (its token must still be current).
    Poll(InstanceId, u64),
    /// The worker's long poll ended empty.
    PollTimeout(InstanceId, u64),
    /// The worker's heartbeat writes the record.
    Beat(InstanceId, u64),
    /// The running script ends.
    ScriptEnd(InstanceId, u64),
    /// The worker tells the fleet it lives (every 5 minutes).
    Seen(InstanceId),
    /// The cloud decided to reclaim the machine: its notice is out.
    Notice(InstanceId),
    /// The worker reads the notice on its metadata service.
    WorkerNotice(InstanceId),
    /// An EC2 rebalance recommendation for the machine.
    Rebalance(InstanceId),
    /// The cloud takes the machine.
    Reclaim(InstanceId),
    /// The machine is terminated (by its group, its worker, a reclaim).
    Terminated(InstanceId),
    /// An instance event reaches `handle-spot-interruption`.
    Deliver(Box<InstanceEvent>),
}

struct Entry {
    at: i64,
    seq: u64,
    event: Event,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: the heap pops the earliest, then the first scheduled.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue, shared by the engine and the fleet.
#[derive(Default)]
pub struct Sched {
    heap: Mutex<(BinaryHeap<Entry>, u64)>,
}

impl Sched {
    pub fn push(&self, at: Timestamp, event: Event) {
        let mut h = self.heap.lock().expect("sched lock");
        let seq = h.1;
        h.1 += 1;
        h.0.push(Entry {
            at: at.0,
            seq,
            event,
        });
    }

    pub fn pop(&self) -> Option<(Timestamp, Event)> {
        let mut h = self.heap.lock().expect("sched lock");
        h.0.pop().map(|e| (Timestamp(e.at), e.event))
    }
}

/// The simulated clock: set by the engine to each event's time.
#[derive(Debug, Clone)]
pub struct SimClock(Arc<AtomicI64>);

impl SimClock {
    pub fn new(at: Timestamp) -> SimClock {
        SimClock(Arc::new(AtomicI64::new(at.0)))
    }
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, AtomicOrdering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(AtomicOrdering::SeqCst))
    }
}
