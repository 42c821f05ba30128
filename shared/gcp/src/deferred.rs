//! The GCE adapters as the functions hold them: built at their first call.
//!
//! Building Google's six clients (Pub/Sub's two, Compute's four) at a
//! function's start took 65–90 ms (5 s when DNS did not answer): each
//! reads the platform's roots and resolves its host (`strace`, 2026-12-07),
//! against 2.6 ms for the whole start without them. Most invocations touch
//! no GCE pool, so they never pay it; the first that does pays it once.
//! A client that cannot be built fails that call (and is tried again at the
//! next), as a port error naming why.

use crate::compute::MigFleet;
use crate::config::GcpConfig;
use crate::pubsub::PubSubQueue;
use async_trait::async_trait;
use std::time::Duration;
use studio_core::clock::Timestamp;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::pool::{PoolSpec, QueueDepth};
use studio_core::ports::{Fleet, GroupStatus, Instance, PortError, Received, WorkQueue};
use tokio::sync::OnceCell;

/// [`PubSubQueue`], made at the first call.
pub struct DeferredQueue {
    cfg: GcpConfig,
    queue: OnceCell<PubSubQueue>,
}

/// [`MigFleet`], made at the first call.
pub struct DeferredFleet {
    cfg: GcpConfig,
    fleet: OnceCell<MigFleet>,
}

impl DeferredQueue {
    pub fn new(cfg: &GcpConfig) -> Self {
        DeferredQueue {
            cfg: cfg.clone(),
            queue: OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&PubSubQueue, PortError> {
        self.queue
            .get_or_try_init(|| PubSubQueue::new(&self.cfg))
            .await
    }

    /// Whether the clients have been made.
    pub fn is_made(&self) -> bool {
        self.queue.initialized()
    }
}

impl DeferredFleet {
    pub fn new(cfg: &GcpConfig) -> Self {
        DeferredFleet {
            cfg: cfg.clone(),
            fleet: OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&MigFleet, PortError> {
        self.fleet
            .get_or_try_init(|| MigFleet::new(&self.cfg))
            .await
    }

    /// Whether the clients have been made.
    pub fn is_made(&self) -> bool {
        self.fleet.initialized()
    }
}

#[async_trait]
impl WorkQueue for DeferredQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        self.get().await?.ensure_queue(queue).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        self.get().await?.delete_queue(queue).await
    }
    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        self.get().await?.send(queue, bodies).await
    }
    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        self.get().await?.receive(queue, max, lease, wait).await
    }
    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        self.get().await?.extend(queue, receipt, lease).await
    }
    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.get().await?.ack(queue, receipt).await
    }
    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.get().await?.release(queue, receipt, delay).await
    }
    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        reason: &str,
    ) -> Result<(), PortError> {
        self.get().await?.dead_letter(queue, msg, reason).await
    }
    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        self.get().await?.depth(queue).await
    }
}

#[async_trait]
impl Fleet for DeferredFleet {
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        self.get().await?.ensure_group(key, spec).await
    }
    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        self.get().await?.group(key).await
    }
    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        max: Option<u32>,
    ) -> Result<(), PortError> {
        self.get().await?.set_target(key, target, max).await
    }
    async fn protect(&self, key: &PoolKey, id: &InstanceId, busy: bool) -> Result<(), PortError> {
        self.get().await?.protect(key, id, busy).await
    }
    async fn worker_seen(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError> {
        self.get().await?.worker_seen(key, id, at).await
    }
    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        self.get().await?.silent(key, bound, now).await
    }
    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        self.get().await?.instances(key).await
    }
    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        self.get().await?.terminate(key, id, decrement).await
    }
    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        self.get().await?.delete_group(key).await
    }
    async fn launch_trouble(&self, key: &PoolKey) -> Result<Option<String>, PortError> {
        self.get().await?.launch_trouble(key).await
    }
    async fn silent_why(
        &self,
        key: &PoolKey,
        id: &InstanceId,
    ) -> Result<Option<String>, PortError> {
        self.get().await?.silent_why(key, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_built_before_the_first_call_and_the_first_call_builds_it() {
        // Nothing listens on port 9: a call fails, after the clients are made.
        let settings = [
            ("STUDIO_GCP_PROJECT", "p"),
            ("STUDIO_GCP_ZONE", "us-central1-a"),
            ("STUDIO_GCP_BUCKET", "b"),
            ("STUDIO_GCP_SERVICE_ACCOUNT", "w@p.iam.gserviceaccount.com"),
            ("STUDIO_GCP_IMAGE", "projects/p/global/images/i"),
            (
                "STUDIO_GCP_WORKER_ROLE_ARN",
                "arn:aws:iam::123456789012:role/w",
            ),
            ("STUDIO_GCP_ANONYMOUS", "1"),
            ("STUDIO_PUBSUB_ENDPOINT", "http://127.0.0.1:9"),
            ("STUDIO_COMPUTE_ENDPOINT", "http://127.0.0.1:9"),
        ];
        let cfg = GcpConfig::from_lookup(
            |k| {
                settings
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            },
            "studio",
        )
        .unwrap()
        .expect("the settings are given");
        let (queue, fleet) = (DeferredQueue::new(&cfg), DeferredFleet::new(&cfg));
        assert!(!queue.is_made() && !fleet.is_made());
        // What every call does first (the calls themselves are the GCE
        // scenarios', cli/tests/gce.rs, against the Compute stand-in).
        fleet.get().await.expect("Compute's clients build offline");
        assert!(fleet.is_made() && !queue.is_made());
        let built = queue.get().await.is_ok();
        assert_eq!(built, queue.is_made(), "a failed build is not kept");
    }
}
