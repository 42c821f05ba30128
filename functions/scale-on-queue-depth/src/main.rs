//! `scale-on-queue-depth`: EventBridge schedule. Every live pool to the size
//! its policy asks for, given its queue depth.
//!
//! The logic: `shared/core/src/handlers/scale.rs`, reached through
//! `studio_aws::lambda::scale` (`shared/aws/src/lambda.rs`),
//! which turns the event into its call.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use studio_aws::{config::AwsConfig, lambda};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_tracing();
    let cfg = AwsConfig::from_lookup(|k| std::env::var(k).ok())?;
    let (ctx, prices) = lambda::context_and_prices_from_env(&cfg).await?;
    // GCE pools too, when the deployment has GCP settings.
    let ctx = studio_gcp::attach_from_env(ctx, &cfg.prefix, &cfg.worker_env()).await?;
    run(service_fn(|_: LambdaEvent<serde_json::Value>| {
        let (ctx, prices) = (&ctx, &prices);
        async move {
            let sizes = lambda::scale(ctx).await.map_err(lambda::lambda_error)?;
            // The market, hourly, after the pools (a slow read never
            // delays a scaling).
            prices.refresh(ctx.clock.now()).await;
            Ok::<_, lambda_runtime::Diagnostic>(sizes)
        }
    }))
    .await
}
