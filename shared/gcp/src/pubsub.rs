//! Work queues on Pub/Sub: per queue a topic and a pull subscription of the
//! same name, and a dead-letter topic `<queue>-dlq` with its own
//! subscription, so the dead-letter queue can be read like any queue (the
//! sweep resends dead-lettered work items, [`studio_core::handlers::scale`]).
//!
//! Admin calls go over REST (`TopicAdmin`, `SubscriptionAdmin`); publish and
//! receive over gRPC (`Publisher`, `Subscriber`'s streaming pull).
//!
//! # How the port maps
//! - **receive, extend, ack, release** use Pub/Sub's unary `pull`,
//!   `modifyAckDeadline` and `acknowledge` (REST, with the same
//!   credentials), not the crate's streaming `Subscriber`: a worker takes
//!   one item, acks it at claim and then runs for hours, and a streaming
//!   pull kept open meanwhile would be handed the next items and keep them
//!   leased from idle workers (and one closed after each receive nacks what
//!   it had buffered, which the subscription's retry back-off then delays).
//!   The receipt is the ack id; a lease is an ack deadline (Pub/Sub's
//!   maximum is 600 s, so longer leases are capped there); `release(delay)`
//!   sets the deadline to `delay`, after which the item is delivered again.
//!   A pull is never abandoned (see `receive`).
//! - **dead_letter** publishes the body to `<queue>-dlq` with the reason
//!   (attribute `studio-reason`), then acks. The subscription's own
//!   dead-letter policy (5 delivery attempts, Pub/Sub's minimum) does the
//!   same for items nobody can settle.
//! - **depth**: Pub/Sub's backlog figure (`num_undelivered_messages`) lives
//!   in Cloud Monitoring, sampled once a minute and minutes late, and the
//!   emulator has none. Studio does not need it: the scale function counts
//!   a pool's queued jobs in the job store (strongly consistent reads, the
//!   backlog by definition) and an idle worker's empty pull says the rest.
//!   `depth` only checks that the subscription exists and reports zero, so
//!   the store's count is what scales GCE pools.

use crate::config::{code_of, gcp_err, GcpConfig};
use async_trait::async_trait;
use base64::Engine as _;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, ExpirationPolicy, Message, RetryPolicy};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use studio_core::pool::QueueDepth;
use studio_core::ports::{dead_letter_queue, PortError, Received, WorkQueue};

/// Pub/Sub keeps unacked messages at most 7 days (SQS: 14).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Deliveries before Pub/Sub moves an item to the dead-letter topic
/// (Pub/Sub's range is 5 to 100).
pub const MAX_DELIVERY_ATTEMPTS: i32 = 5;
/// The subscription's ack deadline, the lease of a pulled item until
/// `receive` sets the one asked.
pub const ACK_DEADLINE_SECS: i32 = 60;
/// Pub/Sub's longest ack deadline.
pub const MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);

const PORT: &str = "pubsub";

pub struct PubSubQueue {
    project: String,
    topics: TopicAdmin,
    subs: SubscriptionAdmin,
    publishers: tokio::sync::Mutex<HashMap<String, Publisher>>,
    /// Per queue, a pull still waiting for the server's answer.
    pending: tokio::sync::Mutex<HashMap<String, PendingPull>>,
    http: reqwest::Client,
    /// `https://pubsub.googleapis.com`, or the emulator's.
    rest: String,
    credentials: Credentials,
    endpoint: Option<String>,
    anonymous: bool,
}

type PendingPull = tokio::task::JoinHandle<Result<bytes::Bytes, PortError>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullResponse {
    #[serde(default)]
    received_messages: Vec<ReceivedMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceivedMessage {
    ack_id: String,
    message: PulledMessage,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PulledMessage {
    #[serde(default)]
    data: String,
    message_id: String,
}

/// How long a pull may take before it is given up (and a new one sent).
const PULL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long any other subscriber call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn deadline_secs(d: Duration) -> u64 {
    d.min(MAX_ACK_DEADLINE).as_secs()
}

impl PubSubQueue {
    /// Clients for the configured project (and endpoint, in tests).
    ///
    /// # Errors
    /// A client that cannot be built (no credentials found).
    pub async fn new(cfg: &GcpConfig) -> Result<PubSubQueue, PortError> {
        macro_rules! build {
            ($b:expr) => {
                crate::config::client!($b, cfg.pubsub_endpoint.as_ref(), cfg.anonymous)
                    .build()
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?
            };
        }
        Ok(PubSubQueue {
            project: cfg.project.clone(),
            topics: build!(TopicAdmin::builder()),
            subs: build!(SubscriptionAdmin::builder()),
            publishers: Default::default(),
            pending: Default::default(),
            http: reqwest::Client::new(),
            rest: cfg
                .pubsub_endpoint
                .clone()
                .unwrap_or_else(|| "https://pubsub.googleapis.com".into())
                .trim_end_matches('/')
                .to_string(),
            credentials: crate::config::credentials(cfg)?,
            endpoint: cfg.pubsub_endpoint.clone(),
            anonymous: cfg.anonymous,
        })
    }

    fn topic(&self, name: &str) -> String {
        format!("projects/{}/topics/{name}", self.project)
    }

    fn subscription(&self, name: &str) -> String {
        format!("projects/{}/subscriptions/{name}", self.project)
    }

    /// One call of the subscriber REST API: `POST /v1/<subscription>:<verb>`.
    async fn call(
        &self,
        queue: &str,
        verb: &'static str,
        body: serde_json::Value,
    ) -> Result<bytes::Bytes, PortError> {
        self.request(queue, verb, body).await
    }

    /// [`Self::call`] as a future that owns what it needs (a pull may
    /// outlive the receive that started it).
    fn request(
        &self,
        queue: &str,
        verb: &'static str,
        body: serde_json::Value,
    ) -> impl std::future::Future<Output = Result<bytes::Bytes, PortError>> + Send + 'static {
        let (http, credentials) = (self.http.clone(), self.credentials.clone());
        let url = format!("{}/v1/{}:{verb}", self.rest, self.subscription(queue));
        let queue = queue.to_string();
        async move {
            let headers = match credentials
                .headers(Default::default())
                .await
                .map_err(|e| PortError::backend(PORT, e))?
            {
                CacheableResource::New { data, .. } => data,
                CacheableResource::NotModified => Default::default(),
            };
            // Bounded: a connection that dies without a word (a NAT that
            // forgot it) must not hold the queue's pull, and with it the
            // worker, forever. A long pull is held by the server for at
            // most about a minute and a half.
            let limit = if verb == "pull" {
                PULL_TIMEOUT
            } else {
                CALL_TIMEOUT
            };
            let resp = http
                .post(&url)
                .headers(headers)
                .json(&body)
                .timeout(limit)
                .send()
                .await
                .map_err(|e| PortError::backend(PORT, format!("{verb}: {e}")))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| PortError::backend(PORT, format!("{verb}: {e}")))?;
            match status.as_u16() {
                200..=299 => Ok(bytes),
                404 => Err(PortError::NotFound(format!("subscription {queue}"))),
                code => Err(PortError::backend(
                    PORT,
                    format!("{verb}: HTTP {code}: {}", String::from_utf8_lossy(&bytes)),
                )),
            }
        }
    }

    async fn modify_deadline(
        &self,
        queue: &str,
        ack_ids: &[&str],
        deadline: Duration,
    ) -> Result<(), PortError> {
        self.call(
            queue,
            "modifyAckDeadline",
            serde_json::json!({"ackIds": ack_ids, "ackDeadlineSeconds": deadline_secs(deadline)}),
        )
        .await
        .map(|_| ())
    }

    async fn publisher(&self, topic: &str) -> Result<Publisher, PortError> {
        let mut map = self.publishers.lock().await;
        if let Some(p) = map.get(topic) {
            return Ok(p.clone());
        }
        let p = crate::config::client!(
            Publisher::builder(self.topic(topic)),
            self.endpoint.as_ref(),
            self.anonymous
        )
        .build()
        .await
        .map_err(|e| PortError::backend(PORT, e))?;
        map.insert(topic.to_string(), p.clone());
        Ok(p)
    }

    async fn publish(
        &self,
        topic: &str,
        bodies: &[String],
        attributes: &[(&str, &str)],
    ) -> Result<(), PortError> {
        let p = self.publisher(topic).await?;
        let sent: Vec<_> = bodies
            .iter()
            .map(|b| {
                p.publish(
                    Message::new()
                        .set_data(b.clone().into_bytes())
                        .set_attributes(attributes.iter().map(|(k, v)| (*k, *v))),
                )
            })
            .collect();
        for f in sent {
            f.await.map_err(|e| match &e {
                google_cloud_pubsub::error::PublishError::Rpc(inner)
                    if code_of(inner) == Some(Code::NotFound) =>
                {
                    PortError::NotFound(format!("topic {topic}"))
                }
                _ => PortError::backend(PORT, e),
            })?;
        }
        Ok(())
    }

    async fn create_topic(&self, name: &str) -> Result<(), PortError> {
        match self
            .topics
            .create_topic()
            .set_name(self.topic(name))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::AlreadyExists) => Ok(()),
            Err(e) => Err(gcp_err(PORT, "CreateTopic", e)),
        }
    }

    async fn create_subscription(
        &self,
        name: &str,
        topic: &str,
        dead_letter: Option<&str>,
    ) -> Result<(), PortError> {
        let mut req = self
            .subs
            .create_subscription()
            .set_name(self.subscription(name))
            .set_topic(self.topic(topic))
            .set_ack_deadline_seconds(ACK_DEADLINE_SECS)
            .set_message_retention_duration(google_cloud_wkt::Duration::clamp(
                RETENTION.as_secs() as i64,
                0,
            ))
            // No TTL: the default deletes a subscription idle for 31 days.
            .set_expiration_policy(ExpirationPolicy::new())
            .set_retry_policy(
                RetryPolicy::new()
                    .set_minimum_backoff(google_cloud_wkt::Duration::clamp(10, 0))
                    .set_maximum_backoff(google_cloud_wkt::Duration::clamp(600, 0)),
            );
        if let Some(dlq) = dead_letter {
            req = req.set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(self.topic(dlq))
                    .set_max_delivery_attempts(MAX_DELIVERY_ATTEMPTS),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::AlreadyExists) => Ok(()),
            Err(e) => Err(gcp_err(PORT, "CreateSubscription", e)),
        }
    }
}

#[async_trait]
impl WorkQueue for PubSubQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        let dlq = dead_letter_queue(queue);
        self.create_topic(&dlq).await?;
        self.create_subscription(&dlq, &dlq, None).await?;
        self.create_topic(queue).await?;
        self.create_subscription(queue, queue, Some(&dlq)).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        let dlq = dead_letter_queue(queue);
        for q in [queue, dlq.as_str()] {
            if let Some(p) = self.pending.lock().await.remove(q) {
                p.abort();
            }
        }
        for sub in [queue, dlq.as_str()] {
            match self
                .subs
                .delete_subscription()
                .set_subscription(self.subscription(sub))
                .send()
                .await
            {
                Ok(()) => {}
                Err(e) if code_of(&e) == Some(Code::NotFound) => {}
                Err(e) => return Err(gcp_err(PORT, "DeleteSubscription", e)),
            }
        }
        for topic in [queue, dlq.as_str()] {
            match self
                .topics
                .delete_topic()
                .set_topic(self.topic(topic))
                .send()
                .await
            {
                Ok(()) => {}
                Err(e) if code_of(&e) == Some(Code::NotFound) => {}
                Err(e) => return Err(gcp_err(PORT, "DeleteTopic", e)),
            }
            self.publishers.lock().await.remove(topic);
        }
        Ok(())
    }

    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        self.publish(queue, bodies, &[]).await
    }

    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        // A pull with messages waiting answers at once; on an empty
        // subscription the server holds it open (a minute and more). A pull
        // is never abandoned, since the server may hand it messages at any
        // moment and they would stay leased to nobody until their deadline:
        // when `wait` runs out first, the pull stays in flight and the next
        // receive on the queue picks up its answer. A zero wait asks the
        // server to answer at once (`returnImmediately`).
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let bytes = if wait.is_zero() {
                self.call(
                    queue,
                    "pull",
                    serde_json::json!({"maxMessages": max.max(1), "returnImmediately": true}),
                )
                .await?
            } else {
                let mut pull = match self.pending.lock().await.remove(queue) {
                    Some(p) => p,
                    None => tokio::spawn(self.request(
                        queue,
                        "pull",
                        serde_json::json!({"maxMessages": max.max(1)}),
                    )),
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, &mut pull).await {
                    Ok(joined) => joined.map_err(|e| PortError::backend(PORT, e))??,
                    Err(_) => {
                        self.pending.lock().await.insert(queue.to_string(), pull);
                        return Ok(Vec::new());
                    }
                }
            };
            let resp: PullResponse = serde_json::from_slice(&bytes)
                .map_err(|e| PortError::backend(PORT, format!("pull: {e}")))?;
            if !resp.received_messages.is_empty() {
                let ids: Vec<&str> = resp
                    .received_messages
                    .iter()
                    .map(|m| m.ack_id.as_str())
                    .collect();
                if lease.as_secs() != ACK_DEADLINE_SECS as u64 {
                    self.modify_deadline(queue, &ids, lease).await?;
                }
                return resp
                    .received_messages
                    .into_iter()
                    .map(|m| {
                        let body = base64::engine::general_purpose::STANDARD
                            .decode(&m.message.data)
                            .map_err(|e| PortError::backend(PORT, format!("pull: data: {e}")))?;
                        Ok(Received {
                            message_id: m.message.message_id,
                            receipt: m.ack_id,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            receive_count: m.delivery_attempt.unwrap_or(1).max(1),
                        })
                    })
                    .collect();
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        self.modify_deadline(queue, &[receipt], lease).await
    }

    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.call(
            queue,
            "acknowledge",
            serde_json::json!({"ackIds": [receipt]}),
        )
        .await
        .map(|_| ())
    }

    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.modify_deadline(queue, &[receipt], delay).await
    }

    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        reason: &str,
    ) -> Result<(), PortError> {
        self.publish(
            &dead_letter_queue(queue),
            std::slice::from_ref(&msg.body),
            &[("studio-reason", reason), ("studio-source", queue)],
        )
        .await?;
        self.ack(queue, &msg.receipt).await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        match self
            .subs
            .get_subscription()
            .set_subscription(self.subscription(queue))
            .send()
            .await
        {
            Ok(_) => Ok(QueueDepth::default()),
            Err(e) if code_of(&e) == Some(Code::NotFound) => {
                Err(PortError::NotFound(format!("subscription {queue}")))
            }
            Err(e) => Err(gcp_err(PORT, "GetSubscription", e)),
        }
    }
}
