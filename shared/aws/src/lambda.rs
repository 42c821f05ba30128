//! What the Lambda functions do, kept here so it can be tested without
//! Lambda: each `functions/*/src/main.rs` reads its [`AwsConfig`], builds a
//! [`Ctx`] once and hands each event to one of these.
//!
//! SQS-triggered functions return an `SqsBatchResponse` (the event source
//! mapping has `ReportBatchItemFailures`): a retryable failure names only its
//! own message, so one bad message never fails or repeats the others. A
//! message that can never succeed goes to the queue's dead-letter queue at
//! once with the reason, and counts as handled.

use crate::config::AwsConfig;
use crate::dynamo::DynamoStore;
use crate::events::parse_instance_event;
use crate::fleet::{AsgFleet, FleetConfig};
use crate::prices::PricedPlanner;
use crate::sdk::LazyClient;
use crate::sqs::SqsQueue;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use std::sync::Arc;
use studio_core::clock::{Clock, SystemClock};
use studio_core::handlers::{self, CleanupReport, Ctx, HandlerError, Settings};
use studio_core::ports::Received;
use tracing::{info, warn};

/// JSON logs, as CloudWatch Logs wants them.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .init();
}

/// The handlers' context on AWS, planning from the shipped data only (read
/// at the first plan: `cleanup-empty-group` never plans, and most
/// interruptions do not).
pub fn context(cfg: &AwsConfig, sdk: &aws_config::SdkConfig, clock: Arc<dyn Clock>) -> Ctx {
    context_with(cfg, sdk, clock, Arc::new(PricedPlanner::default()))
}

/// The deployment's spot prices ([`crate::prices`]): the planner that
/// uses them, and where they are read and kept.
pub struct Prices {
    pub planner: Arc<PricedPlanner>,
    ec2: LazyClient<aws_sdk_ec2::Client>,
    s3: LazyClient<aws_sdk_s3::Client>,
    bucket: String,
    region: String,
    zones: Vec<String>,
}

impl Prices {
    pub fn new(cfg: &AwsConfig, sdk: &aws_config::SdkConfig) -> Prices {
        Prices {
            planner: Arc::new(PricedPlanner::default()),
            ec2: LazyClient::new(sdk, aws_sdk_ec2::Client::new),
            s3: LazyClient::new(sdk, crate::s3::client),
            bucket: cfg.bucket.clone(),
            region: cfg.region.clone(),
            zones: cfg.availability_zones.clone(),
        }
    }

    /// `submit`, before a batch: the snapshot read again when due.
    pub async fn reload(&self, now: studio_core::clock::Timestamp) {
        self.planner.reload(&self.s3, &self.bucket, now).await;
    }

    /// `scale-on-queue-depth`: the market read again when the snapshot is
    /// due. A failure is logged and scaling goes on (jobs plan at the
    /// prices held, or at on-demand).
    pub async fn refresh(&self, now: studio_core::clock::Timestamp) -> bool {
        crate::catalog::refresh_spot_prices(
            &self.ec2,
            &self.s3,
            &self.bucket,
            &self.region,
            &self.zones,
            now,
        )
        .await
        .inspect_err(|e| warn!(error = %e, "spot prices not refreshed"))
        .unwrap_or(false)
    }
}

/// [`context_from_env`], planning with the deployment's spot prices.
pub async fn context_and_prices_from_env(cfg: &AwsConfig) -> Result<(Ctx, Prices), String> {
    let sdk = crate::sdk::function_sdk_config(&cfg.region).await?;
    let prices = Prices::new(cfg, &sdk);
    let ctx = context_with(cfg, &sdk, Arc::new(SystemClock), prices.planner.clone());
    Ok((ctx, prices))
}

/// The handlers' context on AWS with `planner`.
pub fn context_with(
    cfg: &AwsConfig,
    sdk: &aws_config::SdkConfig,
    clock: Arc<dyn Clock>,
    planner: Arc<dyn studio_core::plan::Planner>,
) -> Ctx {
    // Every client is made at its first call (crate::sdk::LazyClient).
    let fleet = AsgFleet::new(
        LazyClient::new(sdk, aws_sdk_ec2::Client::new),
        LazyClient::new(sdk, aws_sdk_autoscaling::Client::new),
        FleetConfig {
            prefix: cfg.prefix.clone(),
            region: cfg.region.clone(),
            image_id: cfg.worker_ami.clone(),
            arm64_image_id: cfg.worker_ami_arm64.clone(),
            gpu_image_id: cfg.worker_gpu_ami.clone(),
            instance_profile: cfg.worker_instance_profile.clone(),
            subnets: cfg.subnets.clone(),
            availability_zones: cfg.availability_zones.clone(),
            max_size: cfg.max_workers,
            worker_env: cfg.worker_env(),
            studio_sha256_x86_64: cfg.studio_sha256_x86_64.clone(),
            studio_sha256_arm64: cfg.studio_sha256_arm64.clone(),
            uv_sha256_x86_64: cfg.uv_sha256_x86_64.clone(),
            uv_sha256_arm64: cfg.uv_sha256_arm64.clone(),
            bucket: cfg.bucket.clone(),
            s3_base: FleetConfig::s3_base_for(&cfg.bucket, &cfg.region),
        },
    );
    Ctx {
        store: Arc::new(DynamoStore::new(
            LazyClient::new(sdk, aws_sdk_dynamodb::Client::new),
            &cfg.jobs_table,
            &cfg.pools_table,
        )),
        queue: Arc::new(SqsQueue::new(LazyClient::new(
            sdk,
            aws_sdk_sqs::Client::new,
        ))),
        fleet: Arc::new(fleet),
        planner,
        clock,
        settings: Settings {
            submit_queue: cfg.submit_queue.clone(),
            queue_prefix: cfg.prefix.clone(),
            pool_grace: cfg.pool_grace,
            max_attempts: cfg.max_attempts,
            max_auto_workers: cfg.max_workers,
            heartbeat_timeout: cfg.heartbeat_timeout,
            warning_grace: std::time::Duration::from_secs(180),
            worker_grace: std::time::Duration::from_secs(15 * 60),
            // Every cloud whose machines this deployment runs: GCE only
            // once `studio_gcp::attach_from_env` adds it. (`local` specs
            // are served by the home fleet, as before; the tests use them.)
            clouds: Some(vec![
                studio_core::resources::Cloud::Local,
                studio_core::resources::Cloud::Ec2,
                studio_core::resources::Cloud::Ec2spot,
            ]),
            archs: Some(
                std::iter::once(studio_core::catalog::Arch::X86_64)
                    .chain(
                        cfg.worker_ami_arm64
                            .as_ref()
                            .map(|_| studio_core::catalog::Arch::Arm64),
                    )
                    .collect(),
            ),
            ec2_gpu_image: cfg.worker_gpu_ami.is_some(),
            ..Settings::default()
        },
    }
}

/// [`context`] with a function's SDK configuration
/// ([`crate::sdk::function_sdk_config`]) and the wall clock.
pub async fn context_from_env(cfg: &AwsConfig) -> Result<Ctx, String> {
    let sdk = crate::sdk::function_sdk_config(&cfg.region).await?;
    Ok(context(cfg, &sdk, Arc::new(SystemClock)))
}

fn received(m: &SqsMessage) -> Received {
    Received {
        message_id: m.message_id.clone().unwrap_or_default(),
        receipt: m.receipt_handle.clone().unwrap_or_default(),
        body: m.body.clone().unwrap_or_default(),
        receive_count: m
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Done,
    /// Parked in the dead-letter queue with this reason.
    DeadLettered(String),
    /// Left for redelivery (reported as a batch item failure).
    Retry(String),
}

async fn settle(
    ctx: &Ctx,
    queue: &str,
    msg: &Received,
    r: Result<(), (bool, String)>,
    resp: &mut SqsBatchResponse,
    fates: &mut Vec<Fate>,
) {
    match r {
        Ok(()) => fates.push(Fate::Done),
        Err((true, why)) => {
            warn!(message_id = %msg.message_id, error = %why, "will be retried");
            resp.add_failure(msg.message_id.clone());
            fates.push(Fate::Retry(why));
        }
        Err((false, why)) => {
            warn!(message_id = %msg.message_id, error = %why, "dead-lettered");
            match ctx.queue.dead_letter(queue, msg, &why).await {
                Ok(()) => fates.push(Fate::DeadLettered(why)),
                Err(e) => {
                    // Not parked: let SQS redeliver it; its redrive policy parks it in the end.
                    resp.add_failure(msg.message_id.clone());
                    fates.push(Fate::Retry(format!("{why}; dead-lettering failed: {e}")));
                }
            }
        }
    }
}

fn classify(e: HandlerError) -> (bool, String) {
    (e.is_retryable(), e.to_string())
}

/// `submit`: every record a `SubmitJob`.
pub async fn submit_batch(ctx: &Ctx, event: SqsEvent) -> (SqsBatchResponse, Vec<Fate>) {
    let mut resp = SqsBatchResponse::default();
    let mut fates = Vec::new();
    let queue = ctx.settings.submit_queue.clone();
    for m in &event.records {
        let msg = received(m);
        let r = handlers::submit(ctx, &msg.message_id, &msg.body)
            .await
            .map(|outcome| info!(?outcome, "submit"))
            .map_err(classify);
        settle(ctx, &queue, &msg, r, &mut resp, &mut fates).await;
    }
    (resp, fates)
}

/// `handle-spot-interruption`: every record an EventBridge EC2 event.
pub async fn interruption_batch(
    ctx: &Ctx,
    queue: &str,
    event: SqsEvent,
) -> (SqsBatchResponse, Vec<Fate>) {
    let mut resp = SqsBatchResponse::default();
    let mut fates = Vec::new();
    for m in &event.records {
        let msg = received(m);
        let r = match parse_instance_event(&msg.body) {
            Err(e) => Err((false, e.to_string())),
            Ok(events) => {
                let mut r = Ok(());
                // Each is idempotent, so a retry of the message redoes none twice.
                for ev in &events {
                    r = handlers::handle_interruption(ctx, ev)
                        .await
                        .map(|outcome| info!(event_id = %ev.event_id, instance = %ev.instance, ?outcome, "interruption"))
                        .map_err(classify);
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        settle(ctx, queue, &msg, r, &mut resp, &mut fates).await;
    }
    (resp, fates)
}

/// `scale-on-queue-depth` (schedule).
///
/// # Errors
/// The first pool that failed (the others were still scaled).
pub async fn scale(ctx: &Ctx) -> Result<Vec<(String, u32)>, HandlerError> {
    let sizes = handlers::scale(ctx).await?;
    Ok(sizes.into_iter().map(|(k, n)| (k.to_string(), n)).collect())
}

/// `cleanup-empty-group` (schedule).
///
/// # Errors
/// The first pool that failed (the others were still looked at).
pub async fn cleanup(ctx: &Ctx) -> Result<CleanupReport, HandlerError> {
    handlers::cleanup(ctx).await
}

/// Lambda's error for a handler error: the message is what CloudWatch shows.
///
/// Its `errorType` names the failure (`studio::HandlerError::Port`): a
/// boxed error showed only `&alloc::boxed::Box<dyn core::error::Error …>`
/// there, the type name of the box.
pub fn lambda_error(e: HandlerError) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: format!("studio::HandlerError::{}", e.kind()),
        error_message: e.to_string(),
    }
}

/// The webhook's signing keys, from the SSM SecureString parameter (a JSON
/// object of name to secret), decrypted; read once at cold start.
///
/// # Errors
/// The parameter cannot be read, or is not a valid key set (the function
/// then fails to start, naming why, and Lambda reports it).
#[cfg(feature = "webhook")]
pub async fn webhook_keys(
    sdk: &aws_config::SdkConfig,
    parameter: &str,
) -> Result<crate::webhook::Keys, lambda_runtime::Error> {
    let out = aws_sdk_ssm::Client::new(sdk)
        .get_parameter()
        .name(parameter)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| crate::error::AwsError::sdk("GetParameter", e))?;
    let text = out
        .parameter()
        .and_then(|p| p.value())
        .ok_or_else(|| format!("parameter {parameter} has no value"))?;
    Ok(crate::webhook::Keys::from_json(text).map_err(|e| format!("parameter {parameter}: {e}"))?)
}

/// The Pub/Sub push route's trust: the audience, Google's signing keys
/// fetched from `jwks_url` (Google's certificates URL in production) and
/// kept current, and the push subscription's service account (`email`;
/// empty: every push is refused) and its unique id (`subject`, optional).
#[cfg(feature = "webhook")]
pub fn push_auth(
    audience: &str,
    jwks_url: &str,
    email: &str,
    subject: Option<&str>,
    project: Option<&str>,
) -> crate::webhook::PushAuth {
    crate::webhook::PushAuth {
        audience: audience.to_string(),
        // An unknown key fetches again at most once a minute.
        jwks: crate::webhook::GoogleKeys::fetched(jwks_url, std::time::Duration::from_secs(60)),
        email: email.trim().to_string(),
        subject: subject.map(str::to_string),
        project: project.map(str::to_string),
    }
}

/// A function URL request → the webhook → a function URL response.
#[cfg(feature = "webhook")]
pub async fn webhook(
    hook: &crate::webhook::Webhook<'_>,
    event: aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest,
) -> aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse {
    use base64::Engine;
    let body = event.body.unwrap_or_default();
    let body = if event.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .unwrap_or_default()
    } else {
        body.into_bytes()
    };
    let request = crate::webhook::Request {
        method: event
            .request_context
            .http
            .method
            .unwrap_or_default()
            .to_ascii_uppercase(),
        // The target as sent: what a v2 signature covers.
        path: match event.raw_query_string.as_deref() {
            Some(q) if !q.is_empty() => format!("{}?{q}", event.raw_path.unwrap_or_default()),
            _ => event.raw_path.unwrap_or_default(),
        },
        headers: event
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body,
    };
    let resp = hook.handle(&request).await;
    info!(status = resp.status, method = %request.method, path = %request.path, "webhook");
    let mut out =
        aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse::default();
    out.status_code = i64::from(resp.status);
    out.headers.insert(
        "content-type",
        aws_lambda_events::http::HeaderValue::from_static("application/json"),
    );
    out.body = Some(resp.body.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_functions_prices_read_nothing_and_make_no_client_before_their_first_use() {
        let sdk = crate::sdk::emulator_config("us-east-1", "http://127.0.0.1:9");
        let cfg = AwsConfig::from_lookup(|k| {
            [
                ("AWS_REGION", "us-east-1"),
                ("STUDIO_JOBS_TABLE", "j"),
                ("STUDIO_POOLS_TABLE", "p"),
                ("STUDIO_SUBMIT_QUEUE", "s"),
                ("STUDIO_ARTIFACT_BUCKET", "b"),
                ("STUDIO_WORKER_AMI", "ami-12c6146b"),
                ("STUDIO_AVAILABILITY_ZONES", "us-east-1a"),
            ]
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let prices = Prices::new(&cfg, &sdk);
        assert!(
            !prices.planner.is_loaded(),
            "the catalogue was parsed at start"
        );
        assert!(
            !prices.ec2.is_made() && !prices.s3.is_made(),
            "a client was made at start"
        );
        let job = studio_core::contract::SubmitJob::new(
            studio_core::resources::Cloud::Ec2,
            studio_core::resources::ResourceRequest::parse(2, 0, None, None).unwrap(),
            "t",
        );
        use studio_core::plan::Planner;
        assert!(prices.planner.plan(&job).is_ok());
        assert!(prices.planner.is_loaded());
    }

    #[test]
    fn a_failed_invocation_names_its_kind_and_says_why() {
        let e = HandlerError::PoolBusy(studio_core::ids::PoolKey::new("ec2-2c-0g-abc").unwrap());
        let d = lambda_error(e);
        assert_eq!(d.error_type, "studio::HandlerError::PoolBusy");
        assert_eq!(
            d.error_message,
            "pool ec2-2c-0g-abc is being deleted; retry shortly"
        );
    }
}
