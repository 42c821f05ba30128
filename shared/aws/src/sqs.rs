//! [`WorkQueue`] on SQS. Every queue gets a dead-letter queue `<name>-dlq`
//! (redrive after [`MAX_RECEIVES`] deliveries), sends go in batches of 10,
//! leases are visibility timeouts, depth is visible + in flight (+ delayed).
//!
//! [`WorkQueue::dead_letter`] sends a copy to the dead-letter queue with the
//! reason as a message attribute (`studio-reason`) and deletes the original,
//! so a message that can never succeed is parked at once instead of being
//! received `MAX_RECEIVES` times.

use crate::error::AwsError;
use crate::sdk::LazyClient;
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use studio_core::pool::QueueDepth;
use studio_core::ports::{PortError, Received, WorkQueue};

const PORT: &str = "sqs";
/// How long queues keep a message: 14 days, SQS's maximum.
pub const RETENTION_SECS: u32 = 14 * 24 * 3600;
/// Deliveries before SQS moves a message to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 5;

pub struct SqsQueue {
    client: LazyClient<Client>,
    urls: Mutex<HashMap<String, String>>,
}

fn sdk<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> PortError {
    move |e| PortError::backend(PORT, AwsError::sdk(op, e))
}

pub fn dlq_name(queue: &str) -> String {
    studio_core::ports::dead_letter_queue(queue)
}

fn secs(d: Duration) -> i32 {
    d.as_secs().min(43_200) as i32
}

impl SqsQueue {
    pub fn new(client: impl Into<LazyClient<Client>>) -> Self {
        SqsQueue {
            client: client.into(),
            urls: Mutex::new(HashMap::new()),
        }
    }

    /// The queue's URL (cached).
    ///
    /// # Errors
    /// [`PortError::NotFound`] when the queue does not exist.
    pub async fn url(&self, queue: &str) -> Result<String, PortError> {
        if let Some(u) = self.urls.lock().expect("url cache").get(queue) {
            return Ok(u.clone());
        }
        let out = self.client.get_queue_url().queue_name(queue).send().await;
        let url = match out {
            Ok(o) => o.queue_url.unwrap_or_default(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) =>
            {
                return Err(PortError::NotFound(format!("queue {queue}")))
            }
            Err(e) => return Err(sdk("GetQueueUrl")(e)),
        };
        self.urls
            .lock()
            .expect("url cache")
            .insert(queue.to_string(), url.clone());
        Ok(url)
    }

    async fn create(
        &self,
        name: &str,
        attrs: HashMap<QueueAttributeName, String>,
    ) -> Result<String, PortError> {
        let out = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attrs))
            .send()
            .await
            .map_err(sdk("CreateQueue"))?;
        let url = out.queue_url.unwrap_or_default();
        self.urls
            .lock()
            .expect("url cache")
            .insert(name.to_string(), url.clone());
        Ok(url)
    }

    fn forget(&self, queue: &str) {
        self.urls.lock().expect("url cache").remove(queue);
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn ensure_queue(&self, queue: &str) -> Result<(), PortError> {
        if self.url(queue).await.is_ok() {
            return Ok(());
        }
        let dlq = dlq_name(queue);
        let dlq_url = self
            .create(
                &dlq,
                HashMap::from([(
                    QueueAttributeName::MessageRetentionPeriod,
                    RETENTION_SECS.to_string(),
                )]),
            )
            .await?;
        let arn = self
            .client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk("GetQueueAttributes"))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| {
                PortError::backend(PORT, AwsError::Shape(format!("no ARN for {dlq}")))
            })?;
        let redrive =
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{MAX_RECEIVES}"}}"#);
        self.create(
            queue,
            HashMap::from([
                (QueueAttributeName::RedrivePolicy, redrive),
                (QueueAttributeName::VisibilityTimeout, "30".to_string()),
                // The most SQS keeps (the default is 4 days): a job waiting
                // for capacity must not lose its item.
                (
                    QueueAttributeName::MessageRetentionPeriod,
                    RETENTION_SECS.to_string(),
                ),
            ]),
        )
        .await?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), PortError> {
        for q in [queue.to_string(), dlq_name(queue)] {
            match self.url(&q).await {
                Ok(url) => {
                    match self.client.delete_queue().queue_url(url).send().await {
                        Ok(_) => {}
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|e| e.is_queue_does_not_exist()) => {}
                        Err(e) => return Err(sdk("DeleteQueue")(e)),
                    }
                    self.forget(&q);
                }
                Err(PortError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn send(&self, queue: &str, bodies: &[String]) -> Result<(), PortError> {
        let url = self.url(queue).await?;
        for chunk in bodies.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .expect("complete batch entry")
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(sdk("SendMessageBatch"))?;
            if let Some(f) = out.failed.first() {
                return Err(PortError::backend(
                    PORT,
                    AwsError::Shape(format!(
                        "SendMessageBatch entry {} failed: {:?}",
                        f.id, f.message
                    )),
                ));
            }
        }
        Ok(())
    }

    async fn receive(
        &self,
        queue: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, PortError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(secs(lease))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) =>
            {
                self.forget(queue);
                return Err(PortError::NotFound(format!("queue {queue}")));
            }
            Err(e) => return Err(sdk("ReceiveMessage")(e)),
        };
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                receive_count: m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect())
    }

    async fn extend(&self, queue: &str, receipt: &str, lease: Duration) -> Result<(), PortError> {
        let url = self.url(queue).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(lease))
            .send()
            .await
            .map_err(sdk("ChangeMessageVisibility"))?;
        Ok(())
    }

    async fn ack(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        let url = self.url(queue).await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sdk("DeleteMessage"))?;
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: &str, delay: Duration) -> Result<(), PortError> {
        self.extend(queue, receipt, delay).await
    }

    async fn dead_letter(
        &self,
        queue: &str,
        msg: &Received,
        reason: &str,
    ) -> Result<(), PortError> {
        let dlq = self.url(&dlq_name(queue)).await?;
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("complete message attribute")
        };
        self.client
            .send_message()
            .queue_url(dlq)
            .message_body(&msg.body)
            .message_attributes("studio-reason", attr(reason))
            .message_attributes("studio-source", attr(queue))
            .send()
            .await
            .map_err(sdk("SendMessage"))?;
        self.ack(queue, &msg.receipt).await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, PortError> {
        let url = self.url(queue).await?;
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(sdk("GetQueueAttributes"))?
            .attributes
            .unwrap_or_default();
        let get = |k: QueueAttributeName| {
            attrs
                .get(&k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                + get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}
