//! [`Fleet`] as local processes: a "group" is a target count, an "instance"
//! is a `studio worker` process. Like an Auto Scaling group, the fleet keeps
//! the number of live instances at the target on its own
//! ([`ProcessFleet::reconcile`]) and reports instances that died
//! ([`ProcessFleet::reap`]) the way EventBridge reports terminated machines.
//!
//! Liveness is a lock file per instance, taken by the fleet before the spawn
//! and inherited by the worker: it is released when the worker dies, even by
//! SIGKILL, and cannot be confused with a reused pid.

use crate::db::{sql, Db};
use crate::process;
use crate::{files, lock};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use studio_core::clock::Clock;
use studio_core::handlers::{InstanceEvent, InstanceEventKind};
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::pool::PoolSpec;
use studio_core::ports::{Fleet, GroupStatus, Instance, InstanceState, PortError};
use tracing::{info, warn};

const PORT: &str = "local fleet";

/// Builds the command that starts one worker of a pool.
pub type Launcher = Arc<dyn Fn(&PoolKey, &InstanceId) -> Command + Send + Sync>;

/// The environment variable telling a worker which fd holds its liveness lock.
pub const LOCK_FD_ENV: &str = "STUDIO_LOCK_FD";

/// A worker process that is alive ([`ProcessFleet::live_workers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    pub id: InstanceId,
    /// Its group (the key its work queue is named after).
    pub group: PoolKey,
    pub pid: i32,
}

pub struct ProcessFleet {
    db: Arc<Db>,
    dir: PathBuf,
    launcher: Launcher,
    clock: Arc<dyn Clock>,
}

impl ProcessFleet {
    /// `dir` holds one lock file and one log per instance.
    pub fn new(db: Arc<Db>, dir: PathBuf, launcher: Launcher, clock: Arc<dyn Clock>) -> Self {
        ProcessFleet {
            db,
            dir,
            launcher,
            clock,
        }
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    /// Where an instance's own output goes.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Marks instances whose process has died as terminated and reports each
    /// once, as a cloud reports a terminated machine.
    ///
    /// # Errors
    /// Database errors.
    pub fn reap(&self) -> Result<Vec<InstanceEvent>, PortError> {
        let rows = self.rows(
            "SELECT id, pool, pid, state FROM instances WHERE state != 'terminated'",
            None,
        )?;
        let mut events = Vec::new();
        for (id, _pool, pid, _state) in rows {
            if lock::is_held(&self.lock_path(&id)) {
                continue;
            }
            let n = self
                .db
                .conn()
                .execute(
                    "UPDATE instances SET state = 'terminated', ended_at = ?1 WHERE id = ?2 AND state != 'terminated'",
                    params![self.clock.now().0, id],
                )
                .map_err(sql(PORT))?;
            let _ = std::fs::remove_file(self.lock_path(&id));
            // What the worker started dies with it, as on a machine that
            // goes away: the script's own children (other process groups,
            // reparented to init) included.
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let killed = process::signal_session(pid as i32, libc::SIGKILL);
                if killed > 0 {
                    info!(instance = %id, killed, "killed what the dead worker left running");
                }
            }
            if n == 1 {
                info!(instance = %id, "instance gone");
                events.push(InstanceEvent {
                    event_id: format!("{id}-terminated"),
                    instance: InstanceId::new(id).map_err(|e| PortError::backend(PORT, e))?,
                    kind: InstanceEventKind::Gone {
                        state: "terminated".into(),
                    },
                    // A local worker's name is never used again.
                    machine_uid: None,
                    at: None,
                });
            }
        }
        Ok(events)
    }

    /// Starts or stops processes until every group has its target.
    ///
    /// # Errors
    /// Database errors, or a worker that cannot be started.
    pub fn reconcile(&self) -> Result<(), PortError> {
        // One process at a time: each reads the targets and the running
        // instances, then launches what is missing, so two at once (the
        // CLI's submit and the driver) both launched for the same gap.
        // (Beside `instances/`, which holds only instances' own files.)
        let lock = self.dir.parent().unwrap_or(&self.dir).join("fleet.lock");
        let _one_at_a_time = crate::lock::lock(&lock).map_err(|e| PortError::backend(PORT, e))?;
        let groups: Vec<(String, u32)> = {
            let conn = self.db.conn();
            let mut stmt = conn
                .prepare("SELECT pool, target FROM groups")
                .map_err(sql(PORT))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql(PORT))?;
            rows.collect::<Result<_, _>>().map_err(sql(PORT))?
        };
        for (pool, target) in groups {
            let running = self.rows(
                "SELECT id, pool, pid, state FROM instances WHERE pool = ?1 AND state = 'running' ORDER BY launched_at DESC",
                Some(&pool),
            )?;
            let have = running.len() as u32;
            if have < target {
                let key = PoolKey::new(pool.clone()).map_err(|e| PortError::backend(PORT, e))?;
                for _ in have..target {
                    self.spawn(&key)?;
                }
            } else {
                for (id, _, pid, _) in running.into_iter().take((have - target) as usize) {
                    self.stop(&id, pid, libc::SIGTERM)?;
                }
            }
        }
        Ok(())
    }

    fn spawn(&self, pool: &PoolKey) -> Result<InstanceId, PortError> {
        let id = InstanceId::generate_local();
        let io = |e: std::io::Error| PortError::backend(PORT, e);
        files::create_dir_all(&self.dir).map_err(io)?;
        let held = lock::try_lock(&self.lock_path(id.as_str()))
            .map_err(io)?
            .ok_or_else(|| {
                PortError::backend(PORT, format!("lock of new instance {id} is taken"))
            })?;
        let log = files::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.log_path(id.as_str()))
            .map_err(io)?;
        let log2 = log.try_clone().map_err(io)?;
        self.db
            .conn()
            .execute(
                "INSERT INTO instances (id, pool, pid, state, launched_at) VALUES (?1, ?2, NULL, 'running', ?3)",
                params![id.as_str(), pool.as_str(), self.clock.now().0],
            )
            .map_err(sql(PORT))?;
        let fd = held.as_raw_fd();
        let mut cmd = (self.launcher)(pool, &id);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .env(LOCK_FD_ENV, fd.to_string());
        // SAFETY: only async-signal-safe calls (setsid, umask, fcntl,
        // close_range) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session, so a Ctrl-C at the terminal does not reach
                // it and everything it starts can be found (and killed) by
                // session id when it dies; the lock fd survives exec so the
                // worker holds the lock; nothing else inherited does.
                libc::setsid();
                // Everything a local worker makes lives under the home
                // (`jobs/<id>/attempt-N/`, `envs/`), the script's files
                // too: `0700` and `0600`, whatever the caller's umask.
                libc::umask(0o077);
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                process::close_inherited_fds(Some(fd));
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = self
                    .db
                    .conn()
                    .execute("DELETE FROM instances WHERE id = ?1", [id.as_str()]);
                return Err(io(e));
            }
        };
        self.db
            .conn()
            .execute(
                "UPDATE instances SET pid = ?1 WHERE id = ?2",
                params![child.id(), id.as_str()],
            )
            .map_err(sql(PORT))?;
        drop(held); // the worker holds the lock from here on
                    // Reap the child when it exits so it never lingers as a zombie.
        std::thread::spawn(move || child.wait());
        info!(instance = %id, pool = %pool, "instance launched");
        Ok(id)
    }

    fn stop(&self, id: &str, pid: Option<i64>, sig: i32) -> Result<(), PortError> {
        if let Some(pid) = pid.filter(|p| *p > 0) {
            if lock::is_held(&self.lock_path(id)) {
                // SAFETY: signalling a process we started and whose lock shows it alive.
                unsafe {
                    libc::kill(pid as i32, sig);
                }
            }
        }
        self.db
            .conn()
            .execute(
                "UPDATE instances SET state = 'terminating' WHERE id = ?1 AND state = 'running'",
                [id],
            )
            .map_err(sql(PORT))?;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn rows(
        &self,
        q: &str,
        pool: Option<&str>,
    ) -> Result<Vec<(String, String, Option<i64>, String)>, PortError> {
        let conn = self.db.conn();
        let mut stmt = conn.prepare(q).map_err(sql(PORT))?;
        let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
        let rows = match pool {
            Some(p) => stmt.query_map([p], map),
            None => stmt.query_map([], map),
        }
        .map_err(sql(PORT))?;
        rows.collect::<Result<_, _>>().map_err(sql(PORT))
    }

    /// Whether the worker `id` is alive and still runs a process (a script
    /// in its SIGTERM grace, or what the script started) whose working
    /// directory is under `dir` (a job's directory).
    ///
    /// # Errors
    /// Database errors.
    pub fn runs_in(&self, id: &InstanceId, dir: &std::path::Path) -> Result<bool, PortError> {
        let pid: Option<Option<i64>> = self
            .db
            .conn()
            .query_row(
                "SELECT pid FROM instances WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(PORT))?;
        let Some(pid) = pid.flatten().filter(|p| *p > 1) else {
            return Ok(false);
        };
        if !lock::is_held(&self.lock_path(id.as_str())) {
            return Ok(false);
        }
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        Ok(process::session_members(pid as i32)
            .into_iter()
            .filter(|p| *p as i64 != pid)
            .any(|p| {
                std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
            }))
    }

    /// Live workers (their lock is held): instance, group and pid.
    ///
    /// # Errors
    /// Database errors.
    pub fn live_workers(&self) -> Result<Vec<LiveWorker>, PortError> {
        let mut out = Vec::new();
        for (id, pool, pid, _) in self.rows(
            "SELECT id, pool, pid, state FROM instances WHERE state != 'terminated' ORDER BY launched_at",
            None,
        )? {
            if !lock::is_held(&self.lock_path(&id)) {
                continue;
            }
            let Some(pid) = pid.filter(|p| *p > 1) else {
                continue;
            };
            out.push(LiveWorker {
                id: InstanceId::new(id).map_err(|e| PortError::backend(PORT, e))?,
                group: PoolKey::new(pool).map_err(|e| PortError::backend(PORT, e))?,
                pid: pid as i32,
            });
        }
        Ok(out)
    }

    /// Pids of instances not yet seen dead (for tools and tests that must
    /// not leave processes behind).
    ///
    /// # Errors
    /// Database errors.
    pub fn live_pids(&self) -> Result<Vec<i64>, PortError> {
        Ok(self
            .rows(
                "SELECT id, pool, pid, state FROM instances WHERE state != 'terminated'",
                None,
            )?
            .into_iter()
            .filter(|(id, ..)| lock::is_held(&self.lock_path(id)))
            .filter_map(|(_, _, pid, _)| pid)
            .collect())
    }
}

#[async_trait]
impl Fleet for ProcessFleet {
    /// A local worker is a process: it starts, or the driver says why.
    async fn launch_trouble(&self, _key: &PoolKey) -> Result<Option<String>, PortError> {
        Ok(None)
    }

    /// A local worker that died says so in its own log; nothing boots.
    async fn silent_why(
        &self,
        _key: &PoolKey,
        _id: &InstanceId,
    ) -> Result<Option<String>, PortError> {
        Ok(None)
    }

    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        self.db
            .conn()
            .execute(
                "INSERT OR IGNORE INTO groups (pool, target, spec) VALUES (?1, 0, ?2)",
                params![
                    key.as_str(),
                    serde_json::to_string(spec).expect("specs serialize")
                ],
            )
            .map_err(sql(PORT))?;
        Ok(())
    }

    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        let target: Option<u32> = self
            .db
            .conn()
            .query_row(
                "SELECT target FROM groups WHERE pool = ?1",
                [key.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(PORT))?;
        // A local group has no maximum of its own: the handlers' cap is it.
        Ok(target.map(|desired| GroupStatus { desired, max: None }))
    }

    /// Local workers are never taken by their group while busy: the fleet
    /// stops only workers beyond the target, and the handlers never lower a
    /// busy pool's target.
    async fn protect(
        &self,
        _key: &PoolKey,
        _id: &InstanceId,
        _busy: bool,
    ) -> Result<(), PortError> {
        Ok(())
    }

    /// Local liveness is the worker's lock file: a dead worker is reaped by
    /// [`ProcessFleet::reap`], so there is nothing to record.
    async fn worker_seen(
        &self,
        _key: &PoolKey,
        _id: &InstanceId,
        _at: studio_core::clock::Timestamp,
    ) -> Result<(), PortError> {
        Ok(())
    }

    async fn silent(
        &self,
        _key: &PoolKey,
        _bound: Duration,
        _now: studio_core::clock::Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        Ok(Vec::new())
    }

    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        _max: Option<u32>,
    ) -> Result<(), PortError> {
        let n = self
            .db
            .conn()
            .execute(
                "UPDATE groups SET target = ?1 WHERE pool = ?2",
                params![target, key.as_str()],
            )
            .map_err(sql(PORT))?;
        if n == 0 {
            return Err(PortError::NotFound(format!("group {key}")));
        }
        self.reconcile()
    }

    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT id, launched_at FROM instances WHERE pool = ?1 AND state != 'terminated' ORDER BY launched_at")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([key.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(sql(PORT))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at) = row.map_err(sql(PORT))?;
            out.push(Instance {
                id: InstanceId::new(id).map_err(|e| PortError::backend(PORT, e))?,
                pool: key.clone(),
                state: InstanceState::Running,
                launched_at: studio_core::clock::Timestamp(at),
            });
        }
        Ok(out)
    }

    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        let pid: Option<Option<i64>> = self
            .db
            .conn()
            .query_row(
                "SELECT pid FROM instances WHERE id = ?1 AND pool = ?2",
                params![id.as_str(), key.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(PORT))?;
        let Some(pid) = pid else {
            return Err(PortError::NotFound(format!("instance {id}")));
        };
        if decrement {
            self.db
                .conn()
                .execute(
                    "UPDATE groups SET target = MAX(target - 1, 0) WHERE pool = ?1",
                    [key.as_str()],
                )
                .map_err(sql(PORT))?;
        }
        self.stop(id.as_str(), pid, libc::SIGTERM)
    }

    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        self.db
            .conn()
            .execute("DELETE FROM groups WHERE pool = ?1", [key.as_str()])
            .map_err(sql(PORT))?;
        let live = self.rows(
            "SELECT id, pool, pid, state FROM instances WHERE pool = ?1 AND state != 'terminated'",
            Some(key.as_str()),
        )?;
        for (id, _, pid, _) in &live {
            self.stop(id, *pid, libc::SIGTERM)?;
        }
        // Give workers a moment to leave on SIGTERM; then make sure.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while live
            .iter()
            .any(|(id, ..)| lock::is_held(&self.lock_path(id)))
        {
            if std::time::Instant::now() >= deadline {
                for (id, _, pid, _) in &live {
                    warn!(instance = %id, "worker ignored SIGTERM; killing it");
                    self.stop(id, *pid, libc::SIGKILL)?;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.reap()?;
        Ok(())
    }
}
