//! Studio's GCP adapters, on the official `google-cloud-rust` crates: the
//! pools of `gcloud` and `gcspot` jobs.
//!
//! - [`compute`]: worker groups as instance templates + zonal managed
//!   instance groups ([`studio_core::ports::Fleet`]).
//! - [`pubsub`]: work queues as Pub/Sub topics and pull subscriptions
//!   ([`studio_core::ports::WorkQueue`]).
//! - [`gcs`]: workspaces, logs and checkpoints of GCE jobs in a Cloud
//!   Storage bucket ([`studio_core::ports::ArtifactStore`]).
//! - [`startup`]: the startup script a GCE worker boots with.
//! - [`setup`]: `studio gcp setup`, a project made ready for a deployment.
//! - [`config`]: the settings, the clients' endpoint and credentials, and
//!   Google errors as port errors.
//!
//! The control plane (the functions on AWS, the job table in DynamoDB) is
//! the same for every cloud: [`studio_core::route`] sends each pool's calls
//! to its cloud's adapters.

#[cfg(feature = "fleet")]
pub mod compute;
pub mod config;
#[cfg(feature = "fleet")]
pub mod deferred;
pub mod gcs;
#[cfg(feature = "fleet")]
pub mod pubsub;
pub mod setup;
#[cfg(feature = "fleet")]
pub mod startup;

pub use config::{anonymous, code_of, credentials, gcp_err, GcpConfig, GCP_KEYS};
pub use google_cloud_gax::error::rpc::Code;
#[cfg(feature = "fleet")]
use studio_core::ports::PortError;

/// `ctx` with GCE pools: their groups on [`compute::MigFleet`], their
/// queues on [`pubsub::PubSubQueue`].
///
/// # Errors
/// A client that cannot be built (no credentials found).
#[cfg(feature = "fleet")]
pub async fn with_gcp(
    ctx: studio_core::handlers::Ctx,
    cfg: &GcpConfig,
) -> Result<studio_core::handlers::Ctx, PortError> {
    let queue = std::sync::Arc::new(pubsub::PubSubQueue::new(cfg).await?);
    let fleet = std::sync::Arc::new(compute::MigFleet::new(cfg).await?);
    Ok(studio_core::route::with_gcp(ctx, queue, fleet))
}

/// [`with_gcp`] as the functions hold it: the GCE adapters are built at
/// their first call ([`deferred`]), so an invocation that touches no GCE
/// pool never builds Google's clients.
#[cfg(feature = "fleet")]
pub fn with_gcp_deferred(
    ctx: studio_core::handlers::Ctx,
    cfg: &GcpConfig,
) -> studio_core::handlers::Ctx {
    studio_core::route::with_gcp(
        ctx,
        std::sync::Arc::new(deferred::DeferredQueue::new(cfg)),
        std::sync::Arc::new(deferred::DeferredFleet::new(cfg)),
    )
}

/// What a function's `main` does: `ctx` with GCE pools when the
/// environment has the GCP settings ([`GCP_KEYS`]), else `ctx` as it is.
/// `aws_worker_env` (`KEY=VALUE` lines, the deployment's names) goes into
/// the GCE workers' startup script, so they find the job table and queues.
///
/// # Errors
/// Settings given in part or malformed (a client that cannot be built
/// fails the call that first needs it).
#[cfg(feature = "fleet")]
pub async fn attach_from_env(
    ctx: studio_core::handlers::Ctx,
    prefix: &str,
    aws_worker_env: &str,
) -> Result<studio_core::handlers::Ctx, String> {
    let Some(mut cfg) = GcpConfig::from_lookup(|k| std::env::var(k).ok(), prefix)? else {
        return Ok(ctx);
    };
    cfg.add_worker_env(aws_worker_env);
    Ok(with_gcp_deferred(ctx, &cfg))
}
