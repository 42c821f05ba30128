//! [`WorkQueue`] on SQLite, with SQS's semantics: at-least-once delivery,
//! leases (visibility timeouts) that return a dead worker's message, a
//! receive count, and a dead-letter queue beside every queue that takes a
//! message after `max_receives` deliveries.
//!
//! Differences from SQS: delivery is in send order (SQS standard queues are
//! only roughly ordered). A receive with a wait sleeps until a message is
//! sent or released on its queue ([`crate::wake`]) or a hidden message's
//! lease ends, as SQS's long poll returns when a message arrives.
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
    /// Looks at the table by receives (an idle receive should make one).
    looks: std::sync::atomic::AtomicU64,
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
            looks: Default::default(),
        }
    }

    /// A queue with leases on `lease` (in production [`MonotonicClock`]).
    pub fn with_lease_clock(db: Arc<Db>, wall: Arc<dyn Clock>, lease: Arc<dyn Clock>) -> Self {
        SqliteQueue {
            db,
            wall,
            lease,
            looks: Default::default(),
        }
    }

    /// How many times receives have looked at the table.
    pub fn looks(&self) -> u64 {
        self.looks.load(std::sync::atomic::Ordering::Relaxed)
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

    /// One look at `queue` at `now` (on the lease clock).
    fn try_receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        now: i64,
    ) -> Result<Vec<Received>, PortError> {
        self.looks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// How long until the first message of `queue` that was hidden at
    /// `looked` (the look's time) becomes visible: one that became visible
    /// since is due at once.
    fn next_visible_in(&self, queue: &str, looked: i64) -> Result<Option<Duration>, PortError> {
        let at: Option<i64> = self
            .db
            .conn()
            .query_row(
                "SELECT MIN(visible_at) FROM messages WHERE queue = ?1 AND visible_at > ?2",
                params![queue, looked],
                |r| r.get(0),
            )
            .map_err(sql(PORT))?;
        Ok(at.map(|at| Duration::from_millis((at - self.now()).max(1) as u64)))
    }

    /// Wakes the receives waiting on `queue`.
    pub(crate) fn notify(&self, queue: &str) {
        self.db.notify(&crate::wake::queue_topic(queue));
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
        tx.commit().map_err(sql(PORT))?;
        // Its waiting workers learn at once that it is gone.
        self.notify(queue);
        Ok(())
    }

    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(PORT))?;
        self.send_in(&tx, queue, bodies)?;
        tx.commit().map_err(sql(PORT))?;
        self.notify(queue);
        Ok(())
    }

    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Before the look: a send after it wakes this receive.
        let mut waiter = (!wait.is_zero()).then(|| {
            self.db
                .wake()
                .subscribe(&crate::wake::queue_topic(queue))
                .polling_every(Duration::from_millis(50))
        });
        loop {
            let looked = self.now();
            let got = self.try_receive(queue, max.clamp(1, 10), lease, looked)?;
            let now = tokio::time::Instant::now();
            let Some(waiter) = waiter.as_mut().filter(|_| got.is_empty() && now < deadline) else {
                return Ok(got);
            };
            // A hidden message (leased, or released with a delay) becomes
            // visible without a send: wake for the first of them too.
            let until = match self.next_visible_in(queue, looked)? {
                Some(d) => deadline.min(now + d),
                None => deadline,
            };
            waiter.wait_until(until).await;
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
        // Waiters look again, and sleep until this one is visible.
        self.notify(queue);
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

#[cfg(test)]
mod tests {
    use super::*;
    use studio_core::clock::SystemClock;

    /// Two handles on one home, as two processes have.
    fn two(home: &std::path::Path) -> (Arc<SqliteQueue>, Arc<SqliteQueue>) {
        let open = || {
            let db = Arc::new(Db::open(home).unwrap());
            Arc::new(SqliteQueue::new(db, Arc::new(SystemClock)))
        };
        (open(), open())
    }

    /// Waits (on Tokio's clock, paused in these tests) until `f` holds.
    async fn until(f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::task::yield_now().await;
        }
    }

    // Tokio's clock is paused: a receive that polled the table would look
    // thousands of times while it waits (time jumps to its next sleep at
    // once); one that is woken looks once, then once more when woken.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_receive_is_woken_by_a_send_from_another_handle_and_does_not_poll() {
        let home = tempfile::tempdir().unwrap();
        let (waiter, sender) = two(home.path());
        waiter.ensure_queue("q").await.unwrap();
        let w = waiter.clone();
        let got = tokio::spawn(async move {
            w.receive("q", 1, Duration::from_secs(30), Duration::from_secs(600))
                .await
        });
        until(|| waiter.looks() >= 1).await;
        // Ten idle seconds (on the paused clock, so at once).
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(waiter.looks(), 1, "an idle receive looked again");
        // Another queue's send does not wake it.
        sender.ensure_queue("other").await.unwrap();
        sender.send("other", &["x".into()]).await.unwrap();
        sender.send("q", &["hello".into()]).await.unwrap();
        let got = got.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "hello");
        assert!(waiter.looks() <= 3, "looked {} times", waiter.looks());
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_and_a_deleted_queue_wake_a_waiting_receive() {
        let home = tempfile::tempdir().unwrap();
        let (waiter, other) = two(home.path());
        waiter.ensure_queue("q").await.unwrap();
        other.send("q", &["m".into()]).await.unwrap();
        let taken = other
            .receive("q", 1, Duration::from_secs(600), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        let w = waiter.clone();
        let got = tokio::spawn(async move {
            w.receive("q", 1, Duration::from_secs(30), Duration::from_secs(600))
                .await
        });
        until(|| waiter.looks() >= 1).await;
        other
            .release("q", &taken[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        let got = got.await.unwrap().unwrap();
        assert_eq!(
            got.len(),
            1,
            "the released message, long before its lease ended"
        );
        let w = waiter.clone();
        let before = waiter.looks();
        let gone = tokio::spawn(async move {
            w.receive("q", 1, Duration::from_secs(30), Duration::from_secs(600))
                .await
        });
        until(|| waiter.looks() > before).await;
        other.delete_queue("q").await.unwrap();
        assert!(matches!(gone.await.unwrap(), Err(PortError::NotFound(_))));
    }
}
