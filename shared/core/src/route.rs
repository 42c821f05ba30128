//! One control plane, several clouds: the handlers see one [`Fleet`] and
//! one [`WorkQueue`], and these route each call to the cloud of the pool it
//! names. Pool keys start with their cloud (`gcspot-4c-0g-…`, see
//! [`crate::pool::PoolSpec::key`]) and work queues are named
//! `<prefix>-work-<pool key>` ([`crate::pool::queue_name`]), so the route is
//! read off the name; every other queue (submit, interruptions) is the
//! control plane's own and stays on its home cloud.

use crate::clock::Timestamp;
use crate::handlers::Ctx;
use crate::ids::{InstanceId, PoolKey};
use crate::pool::{PoolSpec, QueueDepth};
use crate::ports::{Fleet, GroupStatus, Instance, PortError, Received, WorkQueue};
use crate::resources::Cloud;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Which provider runs a cloud's machines and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The control plane's home: AWS for ec2/ec2spot, the machine itself
    /// for local.
    Home,
    Gcp,
}

impl Provider {
    pub fn of(cloud: Cloud) -> Provider {
        match cloud {
            Cloud::Gcloud | Cloud::Gcspot => Provider::Gcp,
            Cloud::Local | Cloud::Ec2 | Cloud::Ec2spot => Provider::Home,
        }
    }
}

/// The cloud a pool (or group) key belongs to.
pub fn cloud_of_key(key: &str) -> Option<Cloud> {
    key.split('-').next()?.parse().ok()
}

/// The provider of a queue: a pool's work queue (or its dead-letter queue)
/// goes where the pool's machines are; any other queue stays home.
pub fn provider_of_queue(queue: &str) -> Provider {
    queue
        .find("-work-")
        .and_then(|i| cloud_of_key(&queue[i + "-work-".len()..]))
        .map_or(Provider::Home, Provider::of)
}

fn unserved(what: &str) -> PortError {
    PortError::NotFound(format!(
        "{what}: this deployment has no GCP settings (see docs/gcp.md)"
    ))
}

/// Work queues by provider.
pub struct RoutedQueue {
    pub home: Arc<dyn WorkQueue>,
    pub gcp: Option<Arc<dyn WorkQueue>>,
}

impl RoutedQueue {
    fn of(&self, queue: &str) -> Result<&dyn WorkQueue, PortError> {
        match provider_of_queue(queue) {
            Provider::Home => Ok(self.home.as_ref()),
            Provider::Gcp => self.gcp.as_deref().ok_or_else(|| unserved(queue)),
        }
    }
}

#[async_trait]
impl WorkQueue for RoutedQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        self.of(queue)?.ensure_queue(queue).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        self.of(queue)?.delete_queue(queue).await
    }
    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        self.of(queue)?.send(queue, bodies).await
    }
    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        self.of(queue)?.receive(queue, max, lease, wait).await
    }
    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        self.of(queue)?.extend(queue, receipt, lease).await
    }
    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.of(queue)?.ack(queue, receipt).await
    }
    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.of(queue)?.release(queue, receipt, delay).await
    }
    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        reason: &str,
    ) -> Result<(), PortError> {
        self.of(queue)?.dead_letter(queue, msg, reason).await
    }
    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        self.of(queue)?.depth(queue).await
    }
}

/// Worker groups by provider.
pub struct RoutedFleet {
    pub home: Arc<dyn Fleet>,
    pub gcp: Option<Arc<dyn Fleet>>,
}

impl RoutedFleet {
    fn of(&self, key: &PoolKey) -> Result<&dyn Fleet, PortError> {
        match cloud_of_key(key.as_str()).map_or(Provider::Home, Provider::of) {
            Provider::Home => Ok(self.home.as_ref()),
            Provider::Gcp => self.gcp.as_deref().ok_or_else(|| unserved(key.as_str())),
        }
    }
}

#[async_trait]
impl Fleet for RoutedFleet {
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        self.of(key)?.ensure_group(key, spec).await
    }
    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        self.of(key)?.group(key).await
    }
    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        max: Option<u32>,
    ) -> Result<(), PortError> {
        self.of(key)?.set_target(key, target, max).await
    }
    async fn protect(&self, key: &PoolKey, id: &InstanceId, busy: bool) -> Result<(), PortError> {
        self.of(key)?.protect(key, id, busy).await
    }
    async fn worker_seen(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError> {
        self.of(key)?.worker_seen(key, id, at).await
    }
    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        self.of(key)?.silent(key, bound, now).await
    }
    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        self.of(key)?.instances(key).await
    }
    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        self.of(key)?.terminate(key, id, decrement).await
    }
    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        self.of(key)?.delete_group(key).await
    }
    async fn launch_trouble(&self, key: &PoolKey) -> Result<Option<String>, PortError> {
        self.of(key)?.launch_trouble(key).await
    }

    async fn silent_why(
        &self,
        key: &PoolKey,
        id: &InstanceId,
    ) -> Result<Option<String>, PortError> {
        self.of(key)?.silent_why(key, id).await
    }
}

/// `ctx` with GCE pools served by `queue` and `fleet` beside its own.
pub fn with_gcp(mut ctx: Ctx, queue: Arc<dyn WorkQueue>, fleet: Arc<dyn Fleet>) -> Ctx {
    ctx.queue = Arc::new(RoutedQueue {
        home: ctx.queue,
        gcp: Some(queue),
    });
    ctx.fleet = Arc::new(RoutedFleet {
        home: ctx.fleet,
        gcp: Some(fleet),
    });
    if let Some(clouds) = ctx.settings.clouds.as_mut() {
        for c in [Cloud::Gcloud, Cloud::Gcspot] {
            if !clouds.contains(&c) {
                clouds.push(c);
            }
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_and_keys_route_by_the_pools_cloud() {
        assert_eq!(cloud_of_key("gcspot-4c-0g-0a1b2c3d4e"), Some(Cloud::Gcspot));
        assert_eq!(cloud_of_key("ec2-4c-0g-0a1b2c3d4e-g2"), Some(Cloud::Ec2));
        assert_eq!(cloud_of_key("nonsense"), None);
        let gcp = "studio-dev-work-gcloud-2c-0g-0a1b2c3d4e-g1";
        assert_eq!(provider_of_queue(gcp), Provider::Gcp);
        assert_eq!(provider_of_queue(&format!("{gcp}-dlq")), Provider::Gcp);
        assert_eq!(
            provider_of_queue("studio-dev-work-ec2spot-8c-1g-0a1b2c3d4e"),
            Provider::Home
        );
        assert_eq!(provider_of_queue("studio-dev-submit"), Provider::Home);
        assert_eq!(provider_of_queue("studio-dev-submit-dlq"), Provider::Home);
        // A prefix that reads like a cloud does not move the control plane's queues.
        assert_eq!(provider_of_queue("gcspot-submit"), Provider::Home);
    }
}
