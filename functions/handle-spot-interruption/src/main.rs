//! `handle-spot-interruption`: SQS trigger on the queue fed by the EventBridge
//! rules for EC2 spot interruption warnings, rebalance recommendations and
//! state changes. Jobs on a lost machine run again elsewhere.
//!
//! The logic: `shared/core/src/handlers/interruption.rs`, reached through
//! `studio_aws::lambda::interruption_batch` (`shared/aws/src/lambda.rs`),
//! which turns the event into its call.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use studio_aws::{config::AwsConfig, lambda};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_tracing();
    let cfg = AwsConfig::from_lookup(|k| std::env::var(k).ok())?;
    let queue = cfg
        .interruption_queue
        .clone()
        .ok_or("missing environment variable STUDIO_INTERRUPTION_QUEUE")?;
    // GCE pools too, when the deployment has GCP settings.
    let ctx = studio_gcp::attach_from_env(
        lambda::context_from_env(&cfg).await?,
        &cfg.prefix,
        &cfg.worker_env(),
    )
    .await?;
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let (ctx, queue) = (&ctx, &queue);
        async move {
            Ok::<SqsBatchResponse, Error>(
                lambda::interruption_batch(ctx, queue, event.payload)
                    .await
                    .0,
            )
        }
    }))
    .await
}
