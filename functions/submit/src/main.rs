//! `submit`: SQS trigger on the submit queue (with `ReportBatchItemFailures`).
//! Each `SubmitJob` becomes a job, a pool and a work item.
//!
//! The logic: `shared/core/src/handlers/submit.rs`, reached through
//! `studio_aws::lambda::submit_batch` (`shared/aws/src/lambda.rs`),
//! which turns the event into its call.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use studio_aws::{config::AwsConfig, lambda};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_tracing();
    let cfg = AwsConfig::from_lookup(|k| std::env::var(k).ok())?;
    let (ctx, prices) = lambda::context_and_prices_from_env(&cfg).await?;
    // GCE pools too, when the deployment has GCP settings.
    let ctx = studio_gcp::attach_from_env(ctx, &cfg.prefix, &cfg.worker_env()).await?;
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let (ctx, prices) = (&ctx, &prices);
        async move {
            // Spot jobs plan at the deployment's spot prices (read again
            // every ten minutes at most).
            prices.reload(ctx.clock.now()).await;
            Ok::<SqsBatchResponse, Error>(lambda::submit_batch(ctx, event.payload).await.0)
        }
    }))
    .await
}
