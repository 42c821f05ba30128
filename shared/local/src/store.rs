//! [`JobStore`] on SQLite. Records are stored whole as JSON beside the
//! columns that are queried; every update is `UPDATE … WHERE version = ?`,
//! the same compare-and-set the DynamoDB adapter makes with a condition
//! expression.

use crate::db::{sql, Db};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::sync::Arc;
use studio_core::ids::{InstanceId, JobId, PoolKey};
use studio_core::job::{Job, JobState};
use studio_core::pool::Pool;
use studio_core::ports::{Created, JobPage, JobQuery, JobStore, PortError};

const PORT: &str = "local store";

pub struct SqliteStore {
    db: Arc<Db>,
}

impl SqliteStore {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteStore { db }
    }
}

fn decode<T: serde::de::DeserializeOwned>(s: String) -> Result<T, PortError> {
    serde_json::from_str(&s).map_err(|e| PortError::backend(PORT, e))
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records always serialize")
}

/// Creates the job unless one with its id exists, on `conn` (which may be a
/// transaction that also writes the job's submit message).
pub(crate) fn create_in(conn: &rusqlite::Connection, job: &Job) -> Result<Created<Job>, PortError> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO jobs (id, pool, state, instance, version, created_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id.as_str(),
                job.pool.as_str(),
                job.state.as_str(),
                job.instance.as_ref().map(|i| i.as_str()),
                job.version as i64,
                job.created_at.0,
                encode(job)
            ],
        )
        .map_err(sql(PORT))?;
    if n == 1 {
        return Ok(Created::New(job.clone()));
    }
    let rec: String = conn
        .query_row(
            "SELECT record FROM jobs WHERE id = ?1",
            [job.id.as_str()],
            |r| r.get(0),
        )
        .map_err(sql(PORT))?;
    Ok(Created::Existing(decode(rec)?))
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(&self, job: &Job) -> Result<Created<Job>, PortError> {
        let created = create_in(&self.db.conn(), job)?;
        self.db.notify(&crate::wake::job_topic(job.id.as_str()));
        Ok(created)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, PortError> {
        let rec: Option<String> = self
            .db
            .conn()
            .query_row(
                "SELECT record FROM jobs WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(PORT))?;
        rec.map(decode).transpose()
    }

    async fn update_job(&self, job: &Job) -> Result<Job, PortError> {
        let mut next = job.clone();
        next.version = job.version + 1;
        let conn = self.db.conn();
        let tx = conn.unchecked_transaction().map_err(sql(PORT))?;
        let n = tx
            .execute(
                "UPDATE jobs SET state = ?1, instance = ?2, version = ?3, record = ?4
                 WHERE id = ?5 AND version = ?6",
                params![
                    next.state.as_str(),
                    next.instance.as_ref().map(|i| i.as_str()),
                    next.version as i64,
                    encode(&next),
                    job.id.as_str(),
                    job.version as i64
                ],
            )
            .map_err(sql(PORT))?;
        if n == 1 && next.state.is_terminal() {
            // The driver prunes the attempt workspaces of jobs listed here.
            tx.execute(
                "INSERT OR IGNORE INTO ended (job, at) VALUES (?1, ?2)",
                params![next.id.as_str(), next.updated_at.0],
            )
            .map_err(sql(PORT))?;
        }
        tx.commit().map_err(sql(PORT))?;
        if n == 1 {
            // Followers of the job look again.
            self.db.notify(&crate::wake::job_topic(job.id.as_str()));
            return Ok(next);
        }
        let exists: Option<i64> = conn
            .query_row("SELECT 1 FROM jobs WHERE id = ?1", [job.id.as_str()], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql(PORT))?;
        Err(match exists {
            Some(_) => PortError::Conflict,
            None => PortError::NotFound(format!("job {}", job.id)),
        })
    }

    async fn list_jobs(
        &self,
        pool: Option<&PoolKey>,
        states: &[JobState],
    ) -> Result<Vec<Job>, PortError> {
        // Filtered in SQL (indexes `jobs_pool_state`, `jobs_state`): a tick
        // of the driver asks for a pool's few active jobs and must not decode
        // the thousands that have ended.
        let mut q = String::from("SELECT record FROM jobs WHERE ");
        q.push_str(if pool.is_some() {
            "pool = ?1"
        } else {
            "?1 IS NULL"
        });
        if !states.is_empty() {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            q.push_str(&format!(" AND state IN ({})", list.join(", ")));
        }
        q.push_str(" ORDER BY created_at DESC, id DESC");
        let conn = self.db.conn();
        let mut stmt = conn.prepare(&q).map_err(sql(PORT))?;
        let rows = stmt
            .query_map([pool.map(|p| p.as_str())], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.map(|r| r.map_err(sql(PORT)).and_then(decode))
            .collect()
    }

    async fn page_jobs(&self, q: &JobQuery) -> Result<JobPage, PortError> {
        // Walks `jobs_created` backwards (or `jobs_state` for one state);
        // one more row than asked says whether there is a next page.
        let (before_at, before_id) = match q.before.as_deref() {
            None => (i64::MAX, String::new()),
            Some(b) => studio_core::ports::parse_listing_key(b)
                .map(|(at, id)| (at, id.to_string()))
                .ok_or_else(|| PortError::NotFound(format!("page cursor '{b}'")))?,
        };
        let limit = q.limit.max(1);
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare(
                "SELECT record FROM jobs
                 WHERE (created_at < ?1 OR (created_at = ?1 AND id < ?2))
                   AND (?3 IS NULL OR state = ?3)
                   AND (?4 IS NULL OR pool = ?4)
                   AND (?5 IS NULL OR json_extract(record, '$.spec.owner') = ?5)
                 ORDER BY created_at DESC, id DESC
                 LIMIT ?6",
            )
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map(
                params![
                    before_at,
                    before_id,
                    q.state.map(|s| s.as_str()),
                    q.pool.as_ref().map(|p| p.as_str()),
                    q.owner.as_deref(),
                    limit as i64 + 1
                ],
                |r| r.get::<_, String>(0),
            )
            .map_err(sql(PORT))?;
        let mut jobs: Vec<Job> = rows
            .map(|r| r.map_err(sql(PORT)).and_then(decode))
            .collect::<Result<_, _>>()?;
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        let next = more
            .then(|| jobs.last().map(studio_core::ports::listing_key))
            .flatten();
        Ok(JobPage { jobs, next })
    }

    async fn jobs_on_instance(&self, instance: &InstanceId) -> Result<Vec<Job>, PortError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM jobs WHERE instance = ?1")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([instance.as_str()], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.map(|r| r.map_err(sql(PORT)).and_then(decode))
            .collect()
    }

    async fn get_pool(&self, key: &PoolKey) -> Result<Option<Pool>, PortError> {
        let rec: Option<String> = self
            .db
            .conn()
            .query_row(
                "SELECT record FROM pools WHERE key = ?1",
                [key.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(PORT))?;
        rec.map(decode).transpose()
    }

    async fn create_pool(&self, pool: &Pool) -> Result<Created<Pool>, PortError> {
        let conn = self.db.conn();
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO pools (key, state, version, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    pool.key.as_str(),
                    pool.state.as_str(),
                    pool.version as i64,
                    encode(pool)
                ],
            )
            .map_err(sql(PORT))?;
        if n == 1 {
            return Ok(Created::New(pool.clone()));
        }
        let rec: String = conn
            .query_row(
                "SELECT record FROM pools WHERE key = ?1",
                [pool.key.as_str()],
                |r| r.get(0),
            )
            .map_err(sql(PORT))?;
        Ok(Created::Existing(decode(rec)?))
    }

    async fn update_pool(&self, pool: &Pool) -> Result<Pool, PortError> {
        let mut next = pool.clone();
        next.version = pool.version + 1;
        let n = self
            .db
            .conn()
            .execute(
                "UPDATE pools SET state = ?1, version = ?2, record = ?3 WHERE key = ?4 AND version = ?5",
                params![
                    next.state.as_str(),
                    next.version as i64,
                    encode(&next),
                    pool.key.as_str(),
                    pool.version as i64
                ],
            )
            .map_err(sql(PORT))?;
        if n == 1 {
            Ok(next)
        } else {
            Err(PortError::Conflict)
        }
    }

    async fn live_pools(&self) -> Result<Vec<Pool>, PortError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT record FROM pools WHERE state != 'deleted' ORDER BY key")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.map(|r| r.map_err(sql(PORT)).and_then(decode))
            .collect()
    }
}
