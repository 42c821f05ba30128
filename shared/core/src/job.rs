//! The job record and its state machine.
//!
//! ```text
//! queued ──► running ──► finished | failed
//!   │                          ▲
//!   └──── (work item lost) ────┘
//!   │          │  ▲
//!   │          ▼  │ (attempt + 1)
//!   │      interrupted ──► queued
//!   └──────────┴──► cancelled
//! ```
//! Terminal states never change. Every change goes through [`Job::transition`]
//! (or one of the named helpers built on it), which appends a [`JobEvent`]
//! saying when, who and why; stores write the result with a compare-and-set
//! on [`Job::version`], so two racing writers cannot both win.

use crate::clock::Timestamp;
use crate::contract::SubmitJob;
use crate::ids::{InstanceId, JobId, PoolKey};
use crate::outputs::OutputsRef;
use crate::plan::Plan;
use crate::resources::Market;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Interrupted,
    Finished,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Interrupted,
        JobState::Finished,
        JobState::Failed,
        JobState::Cancelled,
    ];
    /// States a job can still leave: the pool is busy while any job is in one.
    pub const ACTIVE: [JobState; 3] = [JobState::Queued, JobState::Running, JobState::Interrupted];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled
        )
    }

    /// The one table of legal moves.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Running, Finished)
                | (Running, Failed)
                | (Running, Interrupted)
                | (Running, Cancelled)
                | (Interrupted, Queued)
                | (Queued, Failed)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Interrupted => "interrupted",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state '{s}'"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("job {job} cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub job: JobId,
    pub from: JobState,
    pub to: JobState,
}

/// One change of state: when, who, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at: Timestamp,
    pub from: Option<JobState>,
    pub to: JobState,
    pub by: String,
    pub reason: String,
}

/// One run of the job on one machine: what it ran on and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub instance: InstanceId,
    pub machine: String,
    pub market: Market,
    /// Price of the machine while this attempt ran, millionths of USD per hour.
    pub price_micro_usd_per_hour: u64,
    /// Whether that price is a spot price (false: a spot machine priced at
    /// on-demand, for want of a spot price when it was planned).
    #[serde(default)]
    pub spot_price_known: bool,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// The state the attempt ended in (`finished`, `failed`, `interrupted`, `cancelled`).
    pub outcome: Option<JobState>,
    pub exit_code: Option<i32>,
    /// When the worker saw the script's processes gone and its last output
    /// shipped to the log. A cancelled attempt ends (`ended_at`) before its
    /// script does (it has a SIGTERM grace); followers wait for this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_ended_at: Option<Timestamp>,
    /// The machine's zone, as its metadata service says (once known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The cloud's unique id of the machine (GCE's numeric instance id),
    /// as its metadata service says (once known): GCE reuses the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_uid: Option<String>,
    /// What the attempt left behind (its output manifest), once uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<OutputsRef>,
}

impl Attempt {
    /// What the machine cost while this attempt held it, in millionths of
    /// USD: its hourly price from claim to end (or to `now` while running).
    pub fn cost_micro_usd(&self, now: Timestamp) -> u64 {
        let end = self.ended_at.unwrap_or(now);
        let ms = end.0.saturating_sub(self.started_at.0).max(0) as u128;
        (u128::from(self.price_micro_usd_per_hour) * ms / 3_600_000) as u64
    }

    /// Where the price comes from, for people reading a bill.
    pub fn price_basis(&self) -> &'static str {
        match self.market {
            // The price the plan chose the machine at; the market moves.
            Market::Spot if self.spot_price_known => "spot price when planned",
            // Said as it is: ranked and counted at on-demand.
            Market::Spot => {
                "on-demand list price (no spot price known when planned; spot bills less)"
            }
            Market::OnDemand => "on-demand list price",
            Market::Local => "local: free",
        }
    }
}

/// Millionths of USD as `$1.2345`.
pub fn usd(micro: u64) -> String {
    format!("${}.{:04}", micro / 1_000_000, (micro % 1_000_000) / 100)
}

/// Jobs' costs summed by `key` (`None`: one line, `total`), largest first:
/// `(key, jobs, cost in millionths of USD)`.
pub fn cost_by<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    key: impl Fn(&Job) -> String,
    now: Timestamp,
) -> Vec<(String, u32, u64)> {
    let mut sums: std::collections::BTreeMap<String, (u32, u64)> = Default::default();
    for j in jobs {
        let e = sums.entry(key(j)).or_default();
        e.0 += 1;
        e.1 += j.cost_micro_usd(now);
    }
    let mut rows: Vec<(String, u32, u64)> = sums.into_iter().map(|(k, (n, c))| (k, n, c)).collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// A job: the request, where it stands, and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: SubmitJob,
    pub plan: Plan,
    pub pool: PoolKey,
    pub state: JobState,
    /// The current attempt, from 1.
    pub attempt: u32,
    /// Bumped by the store on every write; the compare-and-set key.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The machine running the current attempt.
    pub instance: Option<InstanceId>,
    /// The queue message the current attempt was claimed with.
    pub claimed_message: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the job ended (failed, cancelled) or was last interrupted.
    pub reason: Option<String>,
    pub attempts: Vec<Attempt>,
    pub events: Vec<JobEvent>,
    /// The last lines the script printed, recorded when it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_lines: Vec<String>,
    /// Written by the worker from claim to end of the current attempt
    /// (workspace download, environment build, run, last upload). The
    /// job record is the lock: an attempt whose heartbeat is older than
    /// the deployment's bound is lost, whatever any queue says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<Timestamp>,
    /// When the cloud warned that the current attempt's machine will be
    /// reclaimed (spot warning); its worker is saving and handing back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_at: Option<Timestamp>,
    /// The checkpoint the next attempt resumes from, if any was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRef>,
    /// How many times the sweep sent a dead-lettered work item again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub items_resent: u32,
    /// What the script last reported of its progress, 0 to 1 (a line
    /// `STUDIO_PROGRESS=0.42` in its output, or `progress.json` in its
    /// checkpoint directory); written with the heartbeat, so it costs no
    /// write of its own. Kept across attempts: a resumed script goes on
    /// from its checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A saved checkpoint: which attempt wrote it and its content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub attempt: u32,
    /// SHA-256 of the tarball, hex; checked when it is restored.
    pub sha256: String,
    pub bytes: u64,
}

impl Job {
    /// A new job, `queued`, attempt 1.
    pub fn new(
        id: JobId,
        spec: SubmitJob,
        plan: Plan,
        pool: PoolKey,
        at: Timestamp,
        by: &str,
    ) -> Job {
        Job {
            id,
            spec,
            plan: plan.for_record(),
            pool,
            state: JobState::Queued,
            attempt: 1,
            version: 0,
            created_at: at,
            updated_at: at,
            instance: None,
            claimed_message: None,
            exit_code: None,
            reason: None,
            attempts: Vec::new(),
            events: vec![JobEvent {
                at,
                from: None,
                to: JobState::Queued,
                by: by.to_string(),
                reason: "submitted".into(),
            }],
            last_lines: Vec::new(),
            heartbeat_at: None,
            warned_at: None,
            checkpoint: None,
            items_resent: 0,
            progress: None,
        }
    }

    /// Whether the current attempt runs on `instance` as attempt `attempt`.
    pub fn runs(&self, attempt: u32, instance: &InstanceId) -> bool {
        self.state == JobState::Running
            && self.attempt == attempt
            && self.instance.as_ref() == Some(instance)
    }

    /// The job's cost so far, in millionths of USD: the sum of its attempts.
    pub fn cost_micro_usd(&self, now: Timestamp) -> u64 {
        self.attempts.iter().map(|a| a.cost_micro_usd(now)).sum()
    }

    /// The script and its arguments, as typed.
    pub fn command_line(&self) -> String {
        std::iter::once(self.spec.entrypoint.as_str())
            .chain(self.spec.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// When the job ended: its last write, once it is terminal.
    pub fn ended_at(&self) -> Option<Timestamp> {
        self.state.is_terminal().then_some(self.updated_at)
    }

    /// How long it has run: from its first attempt's start to its end (or
    /// `now`); zero before any attempt started.
    pub fn runtime(&self, now: Timestamp) -> std::time::Duration {
        self.attempts
            .first()
            .map_or(std::time::Duration::ZERO, |a| {
                self.ended_at().unwrap_or(now).since(a.started_at)
            })
    }

    /// When the current attempt last showed life: its heartbeat, or its claim.
    pub fn last_beat(&self) -> Timestamp {
        self.heartbeat_at.unwrap_or(self.updated_at)
    }

    /// Moves to `to` if the state machine allows it, recording the event.
    ///
    /// # Errors
    /// [`InvalidTransition`] when the move is not legal from the current state.
    pub fn transition(
        &mut self,
        to: JobState,
        at: Timestamp,
        by: &str,
        reason: &str,
    ) -> Result<(), InvalidTransition> {
        if !self.state.can_become(to) {
            return Err(InvalidTransition {
                job: self.id.clone(),
                from: self.state,
                to,
            });
        }
        if self.state == JobState::Running {
            if let Some(a) = self
                .attempts
                .iter_mut()
                .rev()
                .find(|a| a.number == self.attempt)
            {
                a.ended_at = Some(at);
                a.outcome = Some(to);
            }
        }
        self.events.push(JobEvent {
            at,
            from: Some(self.state),
            to,
            by: by.to_string(),
            reason: reason.to_string(),
        });
        self.state = to;
        self.updated_at = at;
        Ok(())
    }

    /// `queued → running` on `instance`, starting a new [`Attempt`].
    ///
    /// # Errors
    /// [`InvalidTransition`] unless the job is queued.
    pub fn claim(
        &mut self,
        instance: &InstanceId,
        message_id: &str,
        at: Timestamp,
    ) -> Result<(), InvalidTransition> {
        self.transition(
            JobState::Running,
            at,
            &format!("worker:{instance}"),
            &format!("attempt {} claimed", self.attempt),
        )?;
        self.instance = Some(instance.clone());
        self.claimed_message = Some(message_id.to_string());
        self.heartbeat_at = Some(at);
        self.warned_at = None;
        self.attempts.push(Attempt {
            number: self.attempt,
            instance: instance.clone(),
            machine: self.plan.machine.clone(),
            market: self.plan.market,
            price_micro_usd_per_hour: self.plan.price_micro_usd_per_hour,
            spot_price_known: self.plan.spot_price_known,
            started_at: at,
            ended_at: None,
            outcome: None,
            exit_code: None,
            script_ended_at: None,
            zone: None,
            machine_uid: None,
            outputs: None,
        });
        Ok(())
    }

    /// `running → finished | failed` with the script's exit code.
    ///
    /// # Errors
    /// [`InvalidTransition`] unless the job is running.
    pub fn complete(
        &mut self,
        exit_code: Option<i32>,
        failure: Option<String>,
        at: Timestamp,
        by: &str,
    ) -> Result<(), InvalidTransition> {
        let (to, reason) = match (&failure, exit_code) {
            (None, Some(0)) => (JobState::Finished, "exit code 0".to_string()),
            (Some(why), _) => (JobState::Failed, why.clone()),
            (None, Some(c)) => (JobState::Failed, format!("exit code {c}")),
            (None, None) => (JobState::Failed, "no exit code".to_string()),
        };
        self.transition(to, at, by, &reason)?;
        if let Some(a) = self
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.number == self.attempt)
        {
            a.exit_code = exit_code;
        }
        self.exit_code = exit_code;
        // A finished job keeps no stale reason from an earlier interruption.
        self.reason = (to == JobState::Failed).then_some(reason);
        Ok(())
    }

    /// `running → interrupted`: the machine went away or the lease lapsed.
    ///
    /// # Errors
    /// [`InvalidTransition`] unless the job is running.
    pub fn interrupt(
        &mut self,
        at: Timestamp,
        by: &str,
        reason: &str,
    ) -> Result<(), InvalidTransition> {
        self.transition(JobState::Interrupted, at, by, reason)?;
        self.reason = Some(reason.to_string());
        Ok(())
    }

    /// `interrupted → queued` as the next attempt.
    ///
    /// # Errors
    /// [`InvalidTransition`] unless the job is interrupted.
    pub fn requeue(&mut self, at: Timestamp, by: &str) -> Result<(), InvalidTransition> {
        let next = self.attempt + 1;
        self.transition(
            JobState::Queued,
            at,
            by,
            &format!("queued for attempt {next}"),
        )?;
        self.attempt = next;
        self.instance = None;
        self.claimed_message = None;
        self.heartbeat_at = None;
        self.warned_at = None;
        Ok(())
    }

    /// `queued | running → cancelled`.
    ///
    /// # Errors
    /// [`InvalidTransition`] from any other state.
    /// `queued → failed`: the job can never start (its work item was lost
    /// more often than the sweep resends it).
    ///
    /// # Errors
    /// [`InvalidTransition`] unless the job is queued.
    pub fn fail_queued(
        &mut self,
        at: Timestamp,
        by: &str,
        reason: &str,
    ) -> Result<(), InvalidTransition> {
        self.transition(JobState::Failed, at, by, reason)?;
        self.reason = Some(reason.to_string());
        Ok(())
    }

    pub fn cancel(
        &mut self,
        at: Timestamp,
        by: &str,
        reason: &str,
    ) -> Result<(), InvalidTransition> {
        self.transition(JobState::Cancelled, at, by, reason)?;
        self.reason = Some(reason.to_string());
        Ok(())
    }

    /// How many times the job has been interrupted.
    pub fn interruptions(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.outcome == Some(JobState::Interrupted))
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::tests::sample;

    fn job() -> Job {
        Job::new(
            JobId::new("j1").unwrap(),
            sample(),
            Plan::local(&Default::default()),
            PoolKey::new("p").unwrap(),
            Timestamp(1000),
            "test",
        )
    }

    /// `job()` on a machine at `price`/h: attempt 1 from t=0 to 30 min
    /// (interrupted), attempt 2 from 40 min, running.
    fn priced(price: u64, pool: &str) -> Job {
        let mut j = job();
        j.pool = PoolKey::new(pool).unwrap();
        j.plan.price_micro_usd_per_hour = price;
        j.plan.market = Market::Spot;
        let w = InstanceId::new("w-1").unwrap();
        let min = |m: i64| Timestamp(m * 60_000);
        j.claim(&w, "m1", min(0)).unwrap();
        j.interrupt(min(30), "t", "spot").unwrap();
        j.requeue(min(31), "t").unwrap();
        j.claim(&w, "m2", min(40)).unwrap();
        j
    }

    #[test]
    fn cost_is_price_times_time_per_attempt_and_stops_at_the_end() {
        let min = |m: i64| Timestamp(m * 60_000);
        let mut j = priced(1_200_000, "p"); // $1.20/h: 2 cents a minute
        assert_eq!(j.attempts[0].cost_micro_usd(min(100)), 600_000, "30 min");
        assert_eq!(
            j.attempts[1].cost_micro_usd(min(50)),
            200_000,
            "10 min so far"
        );
        assert_eq!(j.cost_micro_usd(min(50)), 800_000);
        j.complete(Some(0), None, min(55), "t").unwrap();
        assert_eq!(j.cost_micro_usd(min(500)), 900_000, "ended at 55 min");
        assert_eq!(usd(j.cost_micro_usd(min(500))), "$0.9000");
        assert!(j.attempts[0]
            .price_basis()
            .starts_with("on-demand list price (no spot price known"));
        let mut known = job();
        known.plan.market = Market::Spot;
        known.plan.spot_price_known = true;
        known
            .claim(&InstanceId::new("w").unwrap(), "m", min(0))
            .unwrap();
        assert_eq!(known.attempts[0].price_basis(), "spot price when planned");
        // A local job is free.
        let mut l = job();
        l.claim(&InstanceId::new("w").unwrap(), "m", min(0))
            .unwrap();
        assert_eq!(l.cost_micro_usd(min(600)), 0);
    }

    #[test]
    fn costs_sum_by_key_largest_first() {
        let now = Timestamp(60 * 60_000);
        let a = priced(1_200_000, "pool-a"); // 30 + 20 min at $1.20
        let b = priced(600_000, "pool-a"); // 30 + 20 min at $0.60
        let c = priced(3_000_000, "pool-b"); // 30 + 20 min at $3.00
        let rows = cost_by([&a, &b, &c], |j| j.pool.to_string(), now);
        assert_eq!(
            rows,
            vec![
                ("pool-b".to_string(), 1, 2_500_000),
                ("pool-a".to_string(), 2, 1_500_000),
            ]
        );
        let total = cost_by([&a, &b, &c], |_| "total".into(), now);
        assert_eq!(total, vec![("total".to_string(), 3, 4_000_000)]);
    }

    fn in_state(s: JobState) -> Job {
        use JobState::*;
        let mut j = job();
        let w = InstanceId::new("w-1").unwrap();
        let t = Timestamp(2000);
        match s {
            Queued => {}
            Running => j.claim(&w, "m1", t).unwrap(),
            Interrupted => {
                j.claim(&w, "m1", t).unwrap();
                j.interrupt(t, "t", "spot").unwrap();
            }
            Finished | Failed => {
                j.claim(&w, "m1", t).unwrap();
                j.complete(Some(if s == Finished { 0 } else { 3 }), None, t, "t")
                    .unwrap();
            }
            Cancelled => j.cancel(t, "t", "user").unwrap(),
        }
        assert_eq!(j.state, s);
        j
    }

    #[test]
    fn every_pair_of_states_is_legal_exactly_as_the_table_says() {
        use JobState::*;
        let legal = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Finished),
            (Running, Failed),
            (Running, Interrupted),
            (Running, Cancelled),
            (Interrupted, Queued),
            (Queued, Failed),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                let mut j = in_state(from);
                let events = j.events.len();
                let r = j.transition(to, Timestamp(3000), "test", "why");
                if legal.contains(&(from, to)) {
                    assert!(r.is_ok(), "{from} -> {to} should be legal");
                    assert_eq!(j.state, to);
                    assert_eq!(j.events.len(), events + 1);
                    let e = j.events.last().unwrap();
                    assert_eq!((e.from, e.to, e.at), (Some(from), to, Timestamp(3000)));
                } else {
                    assert_eq!(
                        r,
                        Err(InvalidTransition {
                            job: j.id.clone(),
                            from,
                            to
                        }),
                        "{from} -> {to} should be illegal"
                    );
                    assert_eq!(j.state, from, "an illegal move changes nothing");
                    assert_eq!(j.events.len(), events);
                }
            }
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for s in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!s.can_become(to), "{s} -> {to}");
            }
        }
    }

    #[test]
    fn attempts_record_machine_price_times_and_outcome() {
        let mut j = job();
        let w1 = InstanceId::new("w-1").unwrap();
        let w2 = InstanceId::new("w-2").unwrap();
        j.claim(&w1, "m1", Timestamp(10)).unwrap();
        j.interrupt(Timestamp(20), "interruption", "spot warning")
            .unwrap();
        j.requeue(Timestamp(21), "interruption").unwrap();
        assert_eq!(
            (j.state, j.attempt, j.instance.clone()),
            (JobState::Queued, 2, None)
        );
        j.claim(&w2, "m2", Timestamp(30)).unwrap();
        j.complete(Some(0), None, Timestamp(40), "worker").unwrap();
        assert_eq!(j.state, JobState::Finished);
        assert_eq!(j.attempts.len(), 2);
        let a1 = &j.attempts[0];
        assert_eq!(
            (
                a1.number,
                &a1.instance,
                a1.started_at,
                a1.ended_at,
                a1.outcome
            ),
            (
                1,
                &w1,
                Timestamp(10),
                Some(Timestamp(20)),
                Some(JobState::Interrupted)
            )
        );
        let a2 = &j.attempts[1];
        assert_eq!(
            (a2.number, a2.ended_at, a2.outcome, a2.exit_code),
            (2, Some(Timestamp(40)), Some(JobState::Finished), Some(0))
        );
        assert_eq!(a2.machine, "local");
        assert_eq!(j.interruptions(), 1);
    }

    #[test]
    fn a_non_zero_exit_fails_with_the_code_as_reason() {
        let mut j = in_state(JobState::Running);
        j.complete(Some(3), None, Timestamp(5), "w").unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.reason.as_deref(), Some("exit code 3"));
        assert_eq!(j.exit_code, Some(3));
    }
}
