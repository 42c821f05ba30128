//! [`WorkQueue`] on SQLite, with SQS's semantics: at-least-once delivery,
//! leases (visibility timeouts) that return a dead worker's message, a
//! receive count, and a dead-letter queue beside every queue that takes a
//! message after `max_receives` deliveries.
//!
//! Differences from SQS: delivery is in send order (SQS standard queues are
//! only roughly ordered), and a receive waits by polling the table.
//!
//! Leases (visibility) are kept on a separate *lease clock*, in production
//! [`MonotonicClock`]: a wall-clock step (NTP, a manual `date -s`) neither
//! expires every in-flight lease at once nor lengthens them. The monotonic
//! clock restarts at boot; [`crate::db`] makes every message visible again
//! after a reboot. `sent_at` stays on the wall clock.

use crate::db::{sql, Db};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use std::sync::Arc;
use std::time::Duration;
use studio_core::clock::Clock;
use studio_core::pool::QueueDepth;
use studio_core::ports::{PortError, Received, WorkQueue};

const PORT: &str = "local queue";
/// Deliveries before a message moves to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 5;

pub struct SqliteQueue {
    db: Arc<Db>,
    /// For `sent_at` only.
    wall: Arc<dyn Clock>,
    /// For visibility: leases, release delays, depth.
    lease: Arc<dyn Clock>,
}

/// `CLOCK_MONOTONIC` in milliseconds (since boot, not counting suspend),
/// shared by every process of the machine. Its [`studio_core::clock::Timestamp`]s
/// are not dates: they only order lease deadlines.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> studio_core::clock::Timestamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        studio_core::clock::Timestamp(ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000)
    }
}

/// The name of a queue's dead-letter queue.
pub fn dlq_name(queue: &str) -> String {
    studio_core::ports::dead_letter_queue(queue)
}

impl SqliteQueue {
    /// A queue whose leases follow `clock` too (tests with a manual clock).
    pub fn new(db: Arc<Db>, clock: Arc<dyn Clock>) -> Self {
        SqliteQueue {
            db,
            wall: clock.clone(),
            lease: clock,
        }
    }

    /// A queue with leases on `lease` (in production [`MonotonicClock`]).
    pub fn with_lease_clock(db: Arc<Db>, wall: Arc<dyn Clock>, lease: Arc<dyn Clock>) -> Self {
        SqliteQueue { db, wall, lease }
    }

    /// Now on the lease clock.
    fn now(&self) -> i64 {
        self.lease.now().0
    }

    /// Messages in a queue (most useful on a dead-letter queue): body and note.
    ///
    /// # Errors
    /// Database errors.
    pub fn peek(&self, queue: &str) -> Result<Vec<(String, Option<String>)>, PortError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT body, note FROM messages WHERE queue = ?1 ORDER BY seq")
            .map_err(sql(PORT))?;
        let rows = stmt
            .query_map([queue], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql(PORT))?;
        rows.map(|r| r.map_err(sql(PORT))).collect()
    }

    /// Sends inside the caller's transaction (so a job and its submit
    /// message can be written together).
    pub(crate) fn send_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        queue: &str,
        bodies: &[String],
    ) -> Result<(), PortError> {
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM queues WHERE name = ?1", [queue], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql(PORT))?;
        if exists.is_none() {
            return Err(PortError::NotFound(format!("queue {queue}")));
        }
        for body in bodies {
            if body.len() > 256 * 1024 {
                return Err(PortError::TooLarge {
                    what: "message",
                    detail: format!("{} bytes; the limit is 256 KiB", body.len()),
                });
            }
            tx.execute(
                "INSERT INTO messages (id, queue, body, visible_at, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![ulid::Ulid::new().to_string(), queue, body, self.now(), self.wall.now().0],
            )
            .map_err(sql(PORT))?;
        }
        Ok(())
    }

    fn try_receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<Received>, PortError> {
        let now = self.now();
        let mut conn = self.db.conn();
        // A read first: idle workers polling an empty queue take no write lock.
        let ready: (i64, i64) = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM queues WHERE name = ?1),
                        EXISTS(SELECT 1 FROM messages WHERE queue = ?1 AND visible_at <= ?2)",
                params![queue, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql(PORT))?;
        match ready {
            (0, _) => return Err(PortError::NotFound(format!("queue {queue}"))),
            (_, 0) => return Ok(Vec::new()),
            _ => {}
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(PORT))?;
        let q: Option<(Option<String>, u32)> = tx
            .query_row(
                "SELECT dlq, max_receives FROM queues WHERE name = ?1",
                [queue],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql(PORT))?;
        let Some((dlq, max_receives)) = q else {
            return Err(PortError::NotFound(format!("queue {queue}")));
        };
        // `studio down` holds the home's queues: nothing new starts while it
        // stops the home. Checked inside the write transaction, so once its
        // barrier (`down::hold_queues`) has passed, no receive takes
        // an item; and only while it lives (a lock, not a flag).
        if let Some(home) = self.db.path().parent() {
            if crate::lock::is_held_by_other(&crate::lock::queues_lock_path(home)) {
                return Ok(Vec::new());
            }
        }
        let candidates: Vec<(i64, String, String, u32)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT seq, id, body, receive_count FROM messages
                     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(sql(PORT))?;
            let rows = stmt
                .query_map(params![queue, now, (max * 2).max(10)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(sql(PORT))?;
            rows.collect::<Result<_, _>>().map_err(sql(PORT))?
        };
        let mut out = Vec::new();
        for (seq, id, body, count) in candidates {
            if out.len() as u32 >= max {
                break;
            }
            if let Some(dlq) = dlq.as_deref().filter(|_| count >= max_receives) {
                tx.execute(
                    "UPDATE messages SET queue = ?1, receipt = NULL, visible_at = ?2, note = ?3 WHERE seq = ?4",
                    params![dlq, now, format!("received {count} times without being acked"), seq],
                )
                .map_err(sql(PORT))?;
                continue;
            }
            let receipt = ulid::Ulid::new().to_string();
            tx.execute(
                "UPDATE messages SET receipt = ?1, visible_at = ?2, receive_count = receive_count + 1 WHERE seq = ?3",
                params![receipt, now + lease.as_millis() as i64, seq],
            )
            .map_err(sql(PORT))?;
            out.push(Received {
                message_id: id,
                receipt,
                body,
                receive_count: count + 1,
            });
        }
        tx.commit().map_err(sql(PORT))?;
        Ok(out)
    }
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        let conn = self.db.conn();
        let dlq = dlq_name(queue);
        conn.execute(
            "INSERT OR IGNORE INTO queues (name, dlq, max_receives) VALUES (?1, NULL, ?2)",
            params![dlq, u32::MAX],
        )
        .and_then(|_| {
            conn.execute(
                "INSERT OR IGNORE INTO queues (name, dlq, max_receives) VALUES (?1, ?2, ?3)",
                params![queue, dlq, MAX_RECEIVES],
            )
        })
        .map_err(sql(PORT))?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(PORT))?;
        for q in [queue.to_string(), dlq_name(queue)] {
            tx.execute("DELETE FROM messages WHERE queue = ?1", [&q])
                .map_err(sql(PORT))?;
            tx.execute("DELETE FROM queues WHERE name = ?1", [&q])
                .map_err(sql(PORT))?;
        }
        tx.commit().map_err(sql(PORT))
    }

    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(PORT))?;
        self.send_in(&tx, queue, bodies)?;
        tx.commit().map_err(sql(PORT))
    }

    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self.try_receive(queue, max.clamp(1, 10), lease)?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            // Long-poll by polling the table; a real queue pushes instead.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        let n = self
            .db
            .conn()
            .execute(
                "UPDATE messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3",
                params![self.now() + lease.as_millis() as i64, queue, receipt],
            )
            .map_err(sql(PORT))?;
        if n == 0 {
            return Err(PortError::NotFound(format!("receipt {receipt} in {queue}")));
        }
        Ok(())
    }

    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.db
            .conn()
            .execute(
                "DELETE FROM messages WHERE queue = ?1 AND receipt = ?2",
                params![queue, receipt],
            )
            .map_err(sql(PORT))?;
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.db
            .conn()
            .execute(
                "UPDATE messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3",
                params![self.now() + delay.as_millis() as i64, queue, receipt],
            )
            .map_err(sql(PORT))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        reason: &str,
    ) -> Result<(), PortError> {
        let conn = self.db.conn();
        conn.execute(
            "INSERT OR IGNORE INTO queues (name, dlq, max_receives) VALUES (?1, NULL, ?2)",
            params![dlq_name(queue), u32::MAX],
        )
        .map_err(sql(PORT))?;
        conn.execute(
            "UPDATE messages SET queue = ?1, receipt = NULL, visible_at = ?2, note = ?3
             WHERE queue = ?4 AND receipt = ?5",
            params![dlq_name(queue), self.now(), reason, queue, msg.receipt],
        )
        .map_err(sql(PORT))?;
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        let now = self.now();
        let (visible, in_flight): (i64, i64) = self
            .db
            .conn()
            .query_row(
                "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0)
                 FROM messages WHERE queue = ?1",
                params![queue, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql(PORT))?;
        Ok(QueueDepth {
            visible: visible as u64,
            in_flight: in_flight as u64,
        })
    }
}
