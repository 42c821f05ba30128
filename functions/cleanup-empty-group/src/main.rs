//! `cleanup-empty-group`: EventBridge schedule. Pools idle past the grace
//! period lose their group, launch template and queues.
//!
//! The logic: `shared/core/src/handlers/cleanup.rs`, reached through
//! `studio_aws::lambda::cleanup` (`shared/aws/src/lambda.rs`),
//! which turns the event into its call.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use studio_aws::{config::AwsConfig, lambda};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_tracing();
    let cfg = AwsConfig::from_lookup(|k| std::env::var(k).ok())?;
    // GCE pools too, when the deployment has GCP settings.
    let ctx = studio_gcp::attach_from_env(
        lambda::context_from_env(&cfg).await?,
        &cfg.prefix,
        &cfg.worker_env(),
    )
    .await?;
    run(service_fn(|_: LambdaEvent<serde_json::Value>| {
        let ctx = &ctx;
        async move {
            let report = lambda::cleanup(ctx).await.map_err(lambda::lambda_error)?;
            Ok::<_, lambda_runtime::Diagnostic>(
                serde_json::json!({ "deleted": report.deleted, "waiting": report.waiting }),
            )
        }
    }))
    .await
}
