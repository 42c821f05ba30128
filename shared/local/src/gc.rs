//! What is removed from `$STUDIO_HOME`, and when.
//!
//! - **When a job ends**, the driver prunes its attempt workspaces
//!   ([`prune_ended`]): every file that is still exactly as it was unpacked
//!   from the workspace tarball goes, with `__pycache__` directories and the
//!   directories left empty; what the script wrote or changed (its outputs)
//!   stays. A cancelled job is pruned once its script has stopped.
//! - **After the retention** ([`DEFAULT_RETENTION`], or `studio gc
//!   --older-than`), [`collect`] removes ended jobs (row, log, checkpoint,
//!   outputs), workspace tarballs no remaining job uses, terminated
//!   instances' rows and logs, deleted pools' rows and dead-lettered
//!   messages, rotates `driver.log` past [`DRIVER_LOG_MAX`] bytes, and
//!   truncates the WAL. The driver runs it with the default retention at
//!   most once an hour; `studio gc` runs it on demand.
//!
//! Nothing active is touched: jobs that have not ended, their workspaces,
//! live instances and pools. A tarball younger than an hour (at most the
//! retention) is kept even if no job names it yet: a submission may be
//! between storing its workspace and writing its job.

use crate::backend::LocalBackend;
use crate::db::sql;
use flate2::read::GzDecoder;
use rusqlite::{params, OptionalExtension};
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use studio_core::clock::Timestamp;
use studio_core::ids::JobId;
use studio_core::job::Job;
use studio_core::ports::{ArtifactStore, JobStore, PortError};
use tracing::{info, warn};

const PORT: &str = "local gc";
/// How long ended jobs and what they left are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the driver collects on its own.
pub const AUTO_EVERY: Duration = Duration::from_secs(3600);
/// `driver.log` is rotated (to `driver.log.1`) past this size.
pub const DRIVER_LOG_MAX: u64 = 10 << 20;

/// What [`collect`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub jobs: usize,
    pub workspaces: usize,
    pub instances: usize,
    pub pools: usize,
    pub dead_letters: usize,
    pub bytes: u64,
}

fn io(e: std::io::Error) -> PortError {
    PortError::backend(PORT, e)
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

fn remove_all(path: &Path) -> u64 {
    let n = size_of(path);
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return 0,
    };
    match r {
        Ok(()) => n,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "could not remove");
            0
        }
    }
}

/// Removes from `ws` the files identical to the tarball's entries, then
/// caches and empty directories. Returns the bytes freed.
///
/// # Errors
/// A corrupt tarball.
pub fn prune_workspace(ws: &Path, tarball: &[u8]) -> std::io::Result<u64> {
    let mut freed = 0;
    let mut archive = tar::Archive::new(GzDecoder::new(tarball));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            continue;
        }
        let target = ws.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        if !meta.is_file() || meta.len() != entry.size() {
            continue;
        }
        let mut packed = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut packed)?;
        if std::fs::read(&target).is_ok_and(|now| now == packed)
            && std::fs::remove_file(&target).is_ok()
        {
            freed += meta.len();
        }
    }
    freed += prune_dirs(ws);
    Ok(freed)
}

/// Removes `__pycache__` directories and directories left empty under `dir`
/// (and `dir` itself when it ends up empty).
fn prune_dirs(dir: &Path) -> u64 {
    let mut freed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name() == "__pycache__" {
                    freed += remove_all(&path);
                } else {
                    freed += prune_dirs(&path);
                }
            }
        }
    }
    let _ = std::fs::remove_dir(dir); // only succeeds when empty
    freed
}

/// Prunes the attempt workspaces of jobs that ended since the last call
/// (the store records each end); returns how many jobs were pruned.
///
/// # Errors
/// Database errors.
pub async fn prune_ended(be: &LocalBackend) -> Result<usize, PortError> {
    let ids: Vec<String> = {
        let conn = be.db.conn();
        let mut stmt = conn
            .prepare("SELECT job FROM ended ORDER BY at LIMIT 20")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.collect::<Result<_, _>>().map_err(sql(PORT))?
    };
    let mut pruned = 0;
    for id in ids {
        let job = match JobId::new(id.clone()) {
            Ok(jid) => be.store.get_job(&jid).await?,
            Err(_) => None,
        };
        if let Some(job) = &job {
            // A cancelled script may still be writing in its SIGTERM grace.
            let dir = be.artifacts.job_dir(&job.id);
            let busy = job
                .attempts
                .last()
                .map(|a| be.fleet.runs_in(&a.instance, &dir))
                .transpose()?
                .unwrap_or(false);
            if busy {
                continue;
            }
            prune_job(be, job).await;
            pruned += 1;
        }
        be.db
            .conn()
            .execute("DELETE FROM ended WHERE job = ?1", [&id])
            .map_err(sql(PORT))?;
    }
    Ok(pruned)
}

async fn prune_job(be: &LocalBackend, job: &Job) {
    let dir = be.artifacts.job_dir(&job.id);
    let attempts: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("attempt-"))
                })
                .collect()
        })
        .unwrap_or_default();
    if attempts.is_empty() {
        return;
    }
    let tarball = match be.artifacts.get_workspace(&job.spec.workspace).await {
        Ok(t) => t,
        Err(e) => {
            warn!(job_id = %job.id, error = %e, "workspace gone; attempt directories kept");
            return;
        }
    };
    let mut freed = 0;
    for a in attempts {
        match prune_workspace(&a.join("workspace"), &tarball) {
            Ok(n) => freed += n,
            Err(e) => warn!(job_id = %job.id, error = %e, "pruning failed"),
        }
    }
    info!(job_id = %job.id, bytes = freed, "attempt workspaces pruned; outputs kept");
}

/// Whether some ended job still waits to be pruned.
///
/// # Errors
/// Database errors.
pub fn prune_pending(be: &LocalBackend) -> Result<bool, PortError> {
    be.db
        .conn()
        .query_row("SELECT EXISTS(SELECT 1 FROM ended)", [], |r| r.get(0))
        .map_err(sql(PORT))
}

/// Removes what is older than `retention` (see the module docs).
///
/// # Errors
/// Database errors.
pub async fn collect(
    be: &LocalBackend,
    retention: Duration,
    now: Timestamp,
) -> Result<GcReport, PortError> {
    let mut report = GcReport::default();
    let cutoff = now.0 - retention.as_millis() as i64;
    // Ended jobs: their rows, logs, checkpoints and outputs.
    let old: Vec<String> = {
        let conn = be.db.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id FROM jobs WHERE state IN ('finished', 'failed', 'cancelled')
                 AND json_extract(record, '$.updated_at') < ?1",
            )
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([cutoff], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.collect::<Result<_, _>>().map_err(sql(PORT))?
    };
    for id in old {
        let n = be
            .db
            .conn()
            .execute(
                "DELETE FROM jobs WHERE id = ?1 AND state IN ('finished', 'failed', 'cancelled')",
                [&id],
            )
            .map_err(sql(PORT))?;
        be.db
            .conn()
            .execute("DELETE FROM ended WHERE job = ?1", [&id])
            .map_err(sql(PORT))?;
        if n == 1 {
            report.jobs += 1;
            if let Ok(jid) = JobId::new(id) {
                report.bytes += remove_all(&be.artifacts.job_dir(&jid));
            }
        }
    }
    // Workspaces no remaining job names, once no submission can be in flight.
    let used: std::collections::HashSet<String> = {
        let conn = be.db.conn();
        let mut stmt = conn
            .prepare("SELECT DISTINCT json_extract(record, '$.spec.workspace.sha256') FROM jobs")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Option<String>>(0))
            .map_err(sql(PORT))?;
        rows.filter_map(|r| r.ok().flatten()).collect()
    };
    let fresh = retention.min(Duration::from_secs(3600));
    let dir = be.home.join("artifacts/workspaces");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let sha = name.trim_start_matches('.').split('.').next().unwrap_or("");
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if !used.contains(sha) && age >= fresh {
            report.bytes += remove_all(&e.path());
            report.workspaces += 1;
        }
    }
    // Terminated instances: rows, logs, lock files.
    let gone: Vec<String> = {
        let conn = be.db.conn();
        let mut stmt = conn
            .prepare("SELECT id FROM instances WHERE state = 'terminated' AND ended_at < ?1")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([cutoff], |r| r.get::<_, String>(0))
            .map_err(sql(PORT))?;
        rows.collect::<Result<_, _>>().map_err(sql(PORT))?
    };
    for id in gone {
        be.db
            .conn()
            .execute("DELETE FROM instances WHERE id = ?1", [&id])
            .map_err(sql(PORT))?;
        report.bytes += remove_all(&be.fleet.log_path(&id));
        let _ = std::fs::remove_file(be.home.join("instances").join(format!("{id}.lock")));
        report.instances += 1;
    }
    {
        let conn = be.db.conn();
        report.pools = conn
            .execute(
                "DELETE FROM pools WHERE state = 'deleted' AND json_extract(record, '$.updated_at') < ?1",
                [cutoff],
            )
            .map_err(sql(PORT))?;
        report.dead_letters = conn
            .execute(
                "DELETE FROM messages WHERE queue IN (SELECT name FROM queues WHERE dlq IS NULL) AND sent_at < ?1",
                params![cutoff],
            )
            .map_err(sql(PORT))?;
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_gc', ?1)",
            [now.0.to_string()],
        )
        .map_err(sql(PORT))?;
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    let log = be.home.join("driver.log");
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > DRIVER_LOG_MAX) {
        std::fs::rename(&log, be.home.join("driver.log.1")).map_err(io)?;
    }
    if report != GcReport::default() {
        info!(?report, "collected");
    }
    Ok(report)
}

/// [`collect`] with the default retention, if the last collection is more
/// than [`AUTO_EVERY`] ago (what the driver calls on every tick).
///
/// # Errors
/// Database errors.
pub async fn collect_if_due(be: &LocalBackend, now: Timestamp) -> Result<(), PortError> {
    let last: Option<String> = be
        .db
        .conn()
        .query_row("SELECT value FROM meta WHERE key = 'last_gc'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql(PORT))?;
    let last = last.and_then(|v| v.parse().ok()).map(Timestamp);
    if last.is_none_or(|l| now.since(l) >= AUTO_EVERY) {
        collect(be, DEFAULT_RETENTION, now).await?;
    }
    Ok(())
}
