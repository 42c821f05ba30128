//! The one SQLite file under `$STUDIO_HOME` that holds jobs, pools, queues
//! and the local fleet. WAL mode and a busy timeout let the CLI, the driver
//! and every worker process use it at once.

use crate::files;
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use studio_core::ports::PortError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    instance TEXT,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_pool_state ON jobs(pool, state);
CREATE INDEX IF NOT EXISTS jobs_instance ON jobs(instance);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at, id);
CREATE TABLE IF NOT EXISTS ended (
    job TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pools (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    dlq TEXT,
    max_receives INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receipt TEXT,
    receive_count INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS messages_queue ON messages(queue, visible_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_receipt ON messages(receipt);
CREATE TABLE IF NOT EXISTS groups (
    pool TEXT PRIMARY KEY,
    target INTEGER NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    pid INTEGER,
    state TEXT NOT NULL,
    launched_at INTEGER NOT NULL,
    ended_at INTEGER
);
"#;

/// A shared connection to the home's database.
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
    home: PathBuf,
    wake: crate::wake::Wake,
}

impl Db {
    /// Opens (creating if needed) `<home>/studio.sqlite3`.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened.
    pub fn open(home: &Path) -> Result<Db, PortError> {
        let err = |e: std::io::Error| PortError::backend("local store", e);
        files::create_dir_all(home).map_err(err)?;
        // Best effort on a home made by an older version (or not ours to change).
        let _ = files::restrict_dir(home);
        let path = home.join("studio.sqlite3");
        // Create the file 0600 before SQLite does: it gives the WAL and
        // shared-memory files the database file's mode.
        files::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        for f in ["studio.sqlite3", "studio.sqlite3-wal", "studio.sqlite3-shm"] {
            let _ = files::restrict_file(&home.join(f));
        }
        let conn = Connection::open(&path).map_err(|e| PortError::backend("local store", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| PortError::backend("local store", e))?;
        forget_leases_of_another_boot(&conn).map_err(|e| PortError::backend("local store", e))?;
        Ok(Db {
            conn: Mutex::new(conn),
            path,
            home: home.to_path_buf(),
            wake: crate::wake::Wake::new(home),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This home's watch: waiters subscribe here ([`crate::wake`]).
    pub fn wake(&self) -> &crate::wake::Wake {
        &self.wake
    }

    /// Wakes `topic`'s waiters; call it once the change is committed.
    pub fn notify(&self, topic: &str) {
        crate::wake::notify(&self.home, topic);
    }

    pub fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The kernel's id of the current boot.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Leases are kept on the monotonic clock, which restarts at every boot: a
/// lease taken before a reboot means nothing after it (and its worker is
/// gone), so the first process to open the database after a reboot makes
/// every message visible again. A database written by a version that kept
/// leases on the wall clock has no boot id yet and is treated the same way.
fn forget_leases_of_another_boot(conn: &Connection) -> rusqlite::Result<()> {
    let now = boot_id();
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if stored.as_deref() == Some(now.as_str()) {
        return Ok(());
    }
    // Checked again under the write lock: only the first opener resets.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        let again: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'boot_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if again.as_deref() != Some(now.as_str()) {
            conn.execute("UPDATE messages SET visible_at = 0", [])?;
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('boot_id', ?1)",
                [&now],
            )?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Maps a SQLite error onto the port error of `port`.
pub fn sql(port: &'static str) -> impl Fn(rusqlite::Error) -> PortError {
    move |e| PortError::backend(port, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_of_another_boot_are_forgotten_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.conn()
            .execute(
                "INSERT INTO messages (id, queue, body, visible_at, sent_at) VALUES ('m', 'q', 'b', 1000000000000, 0)",
                [],
            )
            .unwrap();
        drop(db);
        // Same boot: a lease is a lease.
        let db = Db::open(dir.path()).unwrap();
        let visible_at = |db: &Db| -> i64 {
            db.conn()
                .query_row("SELECT visible_at FROM messages", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(visible_at(&db), 1_000_000_000_000);
        db.conn()
            .execute(
                "UPDATE meta SET value = 'another boot' WHERE key = 'boot_id'",
                [],
            )
            .unwrap();
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(visible_at(&db), 0, "visible again after a reboot");
    }
}
