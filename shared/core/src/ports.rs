//! The ports: what the handlers need from a cloud, as traits. Adapters
//! (local SQLite and processes, AWS, GCP) implement them; handlers never
//! know which one they talk to.

use crate::clock::Timestamp;
use crate::contract::WorkspaceRef;
pub use crate::error::{BoxError, PortError};
use crate::ids::{InstanceId, JobId, PoolKey};
use crate::job::{CheckpointRef, Job, JobState};
use crate::pool::{Pool, PoolSpec, QueueDepth};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What [`InputSource::fetch`] brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub files: u64,
    pub bytes: u64,
}

/// Where a job's inputs (`s3://…`) come from, with the machine's own
/// credentials (an instance role on EC2, the web identity on GCE, the
/// user's locally).
#[async_trait]
pub trait InputSource: Send + Sync {
    /// Copies every object under `url` into `dest` (keys below the prefix
    /// keep their relative paths; a URL naming one object gives one file
    /// at `dest`'s name inside `dest`).
    ///
    /// # Errors
    /// Nothing there, access denied, a key that would leave `dest`, I/O.
    async fn fetch(&self, url: &str, dest: &std::path::Path) -> Result<Fetched, PortError>;
}

/// The result of an idempotent create.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    New(T),
    /// A record with that key was already there; this is it.
    Existing(T),
}

/// One page of a jobs listing ([`JobStore::page_jobs`]): newest first,
/// optionally one state, pool or owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub pool: Option<PoolKey>,
    pub owner: Option<String>,
    /// Only jobs older than this [`listing_key`] (the previous page's last).
    pub before: Option<String>,
    /// Most jobs on the page (at least 1).
    pub limit: u32,
}

impl JobQuery {
    /// Whether `job` passes the state, pool and owner filters.
    pub fn matches(&self, job: &Job) -> bool {
        self.state.is_none_or(|s| s == job.state)
            && self.pool.as_ref().is_none_or(|p| *p == job.pool)
            && self.owner.as_ref().is_none_or(|o| *o == job.spec.owner)
    }
}

/// A page of jobs; `next` is the [`listing_key`] to ask `before` for the
/// next page, `None` when this was the last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<String>,
}

/// The key listings are ordered by, newest last in byte order: the
/// creation time in milliseconds, 13 digits, `-`, then the id. Unique, so a
/// page boundary is exact; safe in a URL as it is (ids are letters,
/// digits, `-`, `_` and `.`), so it is also the API's page cursor.
pub fn listing_key(job: &Job) -> String {
    format!("{:013}-{}", job.created_at.0, job.id)
}

/// The creation time and id of a [`listing_key`]; `None` when `key` is not one.
pub fn parse_listing_key(key: &str) -> Option<(i64, &str)> {
    let (at, id) = (key.get(..13)?, key.get(13..)?.strip_prefix('-')?);
    (at.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty())
        .then(|| at.parse::<i64>().ok())
        .flatten()
        .filter(|_| JobId::new(id).is_ok())
        .map(|at| (at, id))
}

/// Merges pages of several listings (stores, or shards of one) that were
/// each asked for `limit` jobs `before` the same key: the newest `limit`
/// of them, and the key to continue from when any listing had more.
pub fn merge_pages(pages: Vec<JobPage>, limit: u32) -> JobPage {
    let more = pages.iter().any(|p| p.next.is_some());
    let mut jobs: Vec<Job> = pages.into_iter().flat_map(|p| p.jobs).collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(listing_key(j)));
    let limit = limit.max(1) as usize;
    let cut = jobs.len() > limit;
    jobs.truncate(limit);
    let next = (cut || more)
        .then(|| jobs.last().map(listing_key))
        .flatten();
    JobPage { jobs, next }
}

/// Job and pool records. Every update is a compare-and-set on `version`.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates the job unless one with its id exists.
    async fn create_job(&self, job: &Job) -> Result<Created<Job>, PortError>;
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, PortError>;
    /// Writes `job` if the stored version is still `job.version`, storing
    /// `job.version + 1`. Returns the stored job.
    ///
    /// # Errors
    /// [`PortError::Conflict`] when someone wrote in between.
    async fn update_job(&self, job: &Job) -> Result<Job, PortError>;
    /// [`JobStore::update_job`] of a job the caller gives up: a store that
    /// keeps records in memory (the simulation's) stores it without a copy.
    async fn update_job_owned(&self, job: Job) -> Result<Job, PortError> {
        self.update_job(&job).await
    }
    /// Jobs in `states` (all states when empty), optionally of one pool, newest first.
    async fn list_jobs(
        &self,
        pool: Option<&PoolKey>,
        states: &[JobState],
    ) -> Result<Vec<Job>, PortError>;
    /// One page of jobs, newest first, through an index (never a scan of
    /// every job): what `studio ui` lists.
    async fn page_jobs(&self, q: &JobQuery) -> Result<JobPage, PortError>;
    /// Jobs whose current attempt runs on `instance`.
    async fn jobs_on_instance(&self, instance: &InstanceId) -> Result<Vec<Job>, PortError>;

    async fn get_pool(&self, key: &PoolKey) -> Result<Option<Pool>, PortError>;
    /// Creates the pool unless it exists.
    async fn create_pool(&self, pool: &Pool) -> Result<Created<Pool>, PortError>;
    /// Compare-and-set on `pool.version`, like [`JobStore::update_job`].
    async fn update_pool(&self, pool: &Pool) -> Result<Pool, PortError>;
    /// Pools that are not deleted.
    async fn live_pools(&self) -> Result<Vec<Pool>, PortError>;
}

/// A message received with a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Stable across redeliveries.
    pub message_id: String,
    /// Names this delivery; needed to ack, extend or release it.
    pub receipt: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// The dead-letter queue beside `queue`: every adapter names it so.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}-dlq")
}

/// At-least-once queues with leases (SQS, Pub/Sub, the local SQLite queue).
/// Every queue has a dead-letter queue beside it, [`dead_letter_queue`],
/// which can be received from like any queue.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError>;
    /// Deletes the queue and its dead-letter queue; deleting a missing queue is fine.
    async fn delete_queue(&self, queue: &str) -> Result<(), PortError>;
    /// Sends bodies (adapters batch them as the service allows).
    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError>;
    /// Up to `max` messages, each leased for `lease`; waits up to `wait` for the first.
    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError>;
    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError>;
    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError>;
    /// Makes the message visible again after `delay`.
    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError>;
    /// Moves the message to the dead-letter queue at once, with the reason.
    async fn dead_letter(&self, queue: &str, msg: &Received, reason: &str)
        -> Result<(), PortError>;
    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Pending,
    Running,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub pool: PoolKey,
    pub state: InstanceState,
    pub launched_at: Timestamp,
}

/// A group as the cloud reports it now: what reconciliation starts from,
/// never the pool record's memory of what was last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
    /// The desired capacity the group holds now (an idle worker that left
    /// with decrement has lowered it).
    pub desired: u32,
    /// The most the group may grow to; `None` when the group has no maximum
    /// of its own (local processes: the handlers' cap is the only one).
    pub max: Option<u32>,
}

/// Worker groups: an ASG, a MIG, or local processes.
///
/// Every method takes the key of one *generation* of a pool
/// ([`crate::pool::Pool::group_key`]): a pool revived after cleanup gets new
/// names, so it never meets a name the cloud still holds for the old one.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// Creates the group (and its launch/instance template) unless it exists.
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError>;
    /// The group as it is now; `None` when it does not exist.
    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError>;
    /// Sets the desired capacity; `max: Some(m)` also moves the group's
    /// maximum to `m` in the same call (configuration changed).
    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        max: Option<u32>,
    ) -> Result<(), PortError>;
    /// Marks an instance busy (protected from the group's own scale-in and
    /// rebalancing) or free again. Workers call it around each job.
    async fn protect(&self, key: &PoolKey, id: &InstanceId, busy: bool) -> Result<(), PortError>;
    /// The worker on `id` is alive at `at` (it calls this every few minutes,
    /// busy or idle).
    async fn worker_seen(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError>;
    /// Running instances whose worker has not been seen (nor the machine
    /// launched) within `bound` before `now`: a bootstrap that failed, a
    /// worker that died for good. They cost money and count as capacity.
    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError>;
    /// Instances that are not terminated.
    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError>;
    /// Terminates one instance; `decrement` lowers the target by one too.
    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError>;
    /// Deletes the group, its instances and its template; a missing group is fine.
    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError>;
    /// Why the group's last launches failed, in the cloud's words (a quota,
    /// no capacity of the type, a bid under the market), when the newest
    /// launch the group tried failed; `None` when it succeeded or the fleet
    /// cannot tell.
    ///
    /// No default: a fleet that wraps others (the router) must pass it on.
    async fn launch_trouble(&self, key: &PoolKey) -> Result<Option<String>, PortError>;
    /// What a silent machine said before it went quiet: the failure its
    /// bootstrap wrote on its console ([`crate::pool::BOOTSTRAP_SAYS`]),
    /// read just before it is retired; `None` when it said none or the
    /// fleet cannot read it (which never stops the retirement).
    async fn silent_why(&self, key: &PoolKey, id: &InstanceId)
        -> Result<Option<String>, PortError>;
}

/// Workspaces, logs and checkpoints.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Stores a workspace tarball under its SHA-256 (idempotent).
    async fn put_workspace(&self, tarball: &[u8]) -> Result<WorkspaceRef, PortError>;
    async fn get_workspace(&self, r: &WorkspaceRef) -> Result<Vec<u8>, PortError>;
    async fn append_log(&self, job: &JobId, bytes: &[u8]) -> Result<(), PortError>;
    /// The log from byte `offset` on (empty when there is nothing new).
    async fn read_log(&self, job: &JobId, offset: u64) -> Result<Vec<u8>, PortError>;
    /// Stores a checkpoint (a tarball of an attempt's checkpoint directory)
    /// under its attempt and SHA-256, so an object is never replaced: an
    /// old attempt still saving on its way out cannot change the bytes the
    /// record names while the next attempt reads them. Which checkpoint
    /// counts is recorded on the job ([`crate::job::Job::checkpoint`]).
    async fn put_checkpoint(
        &self,
        job: &JobId,
        r: &CheckpointRef,
        tarball: &[u8],
    ) -> Result<(), PortError>;
    /// The checkpoint `r` names (the caller checks its hash).
    ///
    /// # Errors
    /// [`PortError::NotFound`] when there is none; callers only ask for a
    /// checkpoint the job record names, so that is a real error.
    async fn get_checkpoint(&self, job: &JobId, r: &CheckpointRef) -> Result<Vec<u8>, PortError>;
    /// Stores the file at `src`, whose SHA-256 is `sha256`, among the job's
    /// files by content (its outputs and their manifests): a file unchanged
    /// between attempts is one object. Streams from disk; large files go in
    /// parts and a retried upload resumes where the store allows it.
    async fn put_blob(
        &self,
        job: &JobId,
        sha256: &str,
        src: &std::path::Path,
    ) -> Result<(), PortError>;
    /// Writes the job's file `sha256` to `dest` (created or replaced); the
    /// caller checks its hash.
    ///
    /// # Errors
    /// [`PortError::NotFound`] when the store has no such file.
    async fn get_blob(
        &self,
        job: &JobId,
        sha256: &str,
        dest: &std::path::Path,
    ) -> Result<(), PortError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn job(id: &str, at: i64) -> Job {
        let spec = crate::contract::SubmitJob::new(
            crate::resources::Cloud::Local,
            crate::resources::ResourceRequest::parse(1, 0, None, None).unwrap(),
            "me",
        );
        let plan =
            crate::plan::Planner::plan(&crate::plan::CatalogPlanner::shipped(), &spec).unwrap();
        let pool = crate::pool::PoolSpec::for_job(&spec, &plan).key();
        Job::new(
            JobId::new(id).unwrap(),
            spec,
            plan,
            pool,
            Timestamp(at),
            "test",
        )
    }

    #[test]
    fn listing_keys_order_by_time_then_id_and_parse_back() {
        let (a, b, c) = (job("a-1", 5), job("b.2", 5), job("a_0", 1_000));
        let (ka, kb, kc) = (listing_key(&a), listing_key(&b), listing_key(&c));
        assert!(ka < kb && kb < kc, "{ka} {kb} {kc}");
        assert_eq!(parse_listing_key(&ka), Some((5, "a-1")));
        for bad in [
            "",
            "5-a",
            "000000000000x-a",
            "0000000000005-",
            "0000000000005#a",
            "0000000000005-a/b",
        ] {
            assert_eq!(parse_listing_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn merged_pages_keep_the_newest_and_continue_after_the_last_shown() {
        let page = |ids: &[(&str, i64)], more: bool| JobPage {
            jobs: ids.iter().map(|(i, at)| job(i, *at)).collect(),
            next: more.then(|| "x".to_string()),
        };
        // Two listings asked for 3 each: 5, 4, 3 and 6, 2, 1.
        let m = merge_pages(
            vec![
                page(&[("e", 5), ("d", 4), ("c", 3)], true),
                page(&[("f", 6), ("b", 2), ("a", 1)], false),
            ],
            3,
        );
        let ids: Vec<&str> = m.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["f", "e", "d"]);
        assert_eq!(m.next, Some(listing_key(&job("d", 4))));
        // Everything fits and no listing has more: the last page.
        let m = merge_pages(vec![page(&[("b", 2)], false), page(&[("a", 1)], false)], 3);
        assert_eq!((m.jobs.len(), m.next), (2, None));
        // All fit, but a listing had more beyond its page.
        let m = merge_pages(vec![page(&[("b", 2)], true), page(&[], false)], 3);
        assert_eq!(m.next, Some(listing_key(&job("b", 2))));
    }
}
