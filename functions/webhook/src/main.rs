//! `webhook`: a Lambda function URL (auth type NONE: every request is
//! HMAC-signed, see `studio_aws::webhook`). The signing keys are read once,
//! at the first request, from the SSM SecureString parameter named by
//! `STUDIO_WEBHOOK_KEYS_PARAMETER`: never from an environment variable's value.
//! `POST /v1/pubsub/preemption` takes Pub/Sub pushes whose OIDC token is
//! for `STUDIO_PUBSUB_AUDIENCE` (unset: refused), signed by one of Google's
//! keys (fetched from `STUDIO_PUBSUB_JWKS_URL`, Google's certificates by
//! default, cached for their max-age and fetched again when a token names a
//! key Google rotated in), and from
//! the push subscription's service account `STUDIO_PUBSUB_PUSH_EMAIL`
//! (required: unset, every push is refused, saying why in the log) whose
//! unique id, if `STUDIO_PUBSUB_PUSH_SUBJECT` is set, is that.
//!
//! The logic: `shared/aws/src/webhook.rs` (signed requests, routes), which
//! calls the handlers in `shared/core/src/handlers/` (submit, cancel, interruption).

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use studio_aws::{config::AwsConfig, lambda, webhook};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda::init_tracing();
    let cfg = AwsConfig::from_lookup(|k| std::env::var(k).ok())?;
    let parameter = std::env::var("STUDIO_WEBHOOK_KEYS_PARAMETER")
        .map_err(|_| "missing environment variable STUDIO_WEBHOOK_KEYS_PARAMETER")?;
    let sdk = studio_aws::sdk::function_sdk_config(&cfg.region).await?;
    // The signing keys are read at the first request, not at start, and
    // kept for the process; a read that fails fails that request (as a
    // failed start did) and is tried again at the next.
    let keys = tokio::sync::OnceCell::new();
    // A preemption push requeues onto the pool's Pub/Sub queue.
    let ctx = studio_gcp::attach_from_env(
        lambda::context_from_env(&cfg).await?,
        &cfg.prefix,
        &cfg.worker_env(),
    )
    .await?;
    let schema = webhook::schema();
    // The Pub/Sub push route, when configured (the GCP backend sets both).
    let push = match std::env::var("STUDIO_PUBSUB_AUDIENCE") {
        Ok(audience) if !audience.trim().is_empty() => {
            let email = std::env::var("STUDIO_PUBSUB_PUSH_EMAIL").unwrap_or_default();
            if email.trim().is_empty() {
                tracing::error!(
                    "STUDIO_PUBSUB_AUDIENCE is set but STUDIO_PUBSUB_PUSH_EMAIL is not: \
                     every Pub/Sub push will be refused until it names the push \
                     subscription's service account"
                );
            }
            let subject = std::env::var("STUDIO_PUBSUB_PUSH_SUBJECT")
                .ok()
                .filter(|s| !s.trim().is_empty());
            let url = std::env::var("STUDIO_PUBSUB_JWKS_URL")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| webhook::GOOGLE_CERTS.to_string());
            let project = std::env::var("STUDIO_GCP_PROJECT")
                .ok()
                .filter(|s| !s.trim().is_empty());
            Some(lambda::push_auth(
                &audience,
                &url,
                &email,
                subject.as_deref(),
                project.as_deref(),
            ))
        }
        _ => None,
    };
    run(service_fn(
        |event: LambdaEvent<LambdaFunctionUrlRequest>| {
            let (keys, sdk, parameter) = (&keys, &sdk, &parameter);
            let (ctx, push, cfg, schema) = (&ctx, push.as_ref(), &cfg, &schema);
            async move {
                let keys = keys
                    .get_or_try_init(|| lambda::webhook_keys(sdk, parameter))
                    .await?;
                let hook = webhook::Webhook {
                    keys,
                    ctx,
                    push,
                    submit_queue: &cfg.submit_queue,
                    schema,
                };
                Ok::<_, Error>(lambda::webhook(&hook, event.payload).await)
            }
        },
    ))
    .await
}
