//! Studio's AWS adapters, on the official Rust SDK.
//!
//! # Layout
//! Feature `fleet` (the functions, the cloud worker): [`catalog`], [`fleet`]
//! and [`lambda`], everything that needs the EC2 and Auto Scaling SDKs.
//!
//! - [`catalog`]: the EC2 catalogue from `DescribeInstanceTypes` and
//!   `DescribeSpotPriceHistory`.
//! - [`config`]: the deployment's names, read from the environment in `main`.
//! - [`dynamo`]: the job store on DynamoDB (conditional writes).
//! - [`sqs`]: queues on SQS, each with a dead-letter queue.
//! - [`fleet`]: worker groups as launch templates + Auto Scaling groups.
//! - [`s3`]: workspaces and logs on S3.
//! - [`events`]: EventBridge EC2 events → the domain's instance events.
//! - [`lambda`]: what the four functions do with their events.
//! - `stack` (feature `stack`, for the CLI): the deployed stack read back,
//!   for `studio init` and `studio doctor`.
//!
//! Every client honours `AWS_ENDPOINT_URL` (the SDK reads it), which is how
//! the tests point them at `moto_server`.

#[cfg(feature = "fleet")]
pub mod catalog;
pub mod config;
pub mod dynamo;
pub mod events;
#[cfg(feature = "fleet")]
pub mod fleet;
#[cfg(feature = "fleet")]
pub mod gce_identity;
#[cfg(feature = "fleet")]
pub mod lambda;
pub mod s3;
pub mod sqs;
#[cfg(feature = "stack")]
pub mod stack;
#[cfg(feature = "webhook")]
pub mod webhook;

use aws_config::{BehaviorVersion, Region};
use thiserror::Error;

/// What an AWS call failed with, keeping the SDK error as the source.
#[derive(Debug, Error)]
pub enum AwsError {
    #[error("{operation}: {detail}")]
    Sdk {
        operation: &'static str,
        /// The SDK's full error chain, readable in one line.
        detail: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Shape(String),
}

impl AwsError {
    pub fn sdk(
        operation: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> AwsError {
        AwsError::Sdk {
            operation,
            detail: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            source: Box::new(e),
        }
    }
}

/// The shared SDK configuration: credentials and endpoint from the
/// environment (profile, instance role, `AWS_ENDPOINT_URL`), in `region`.
pub async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .load()
        .await
}

/// The shared SDK configuration with the region from `region`, else from
/// the environment or profile (`None` when none names one).
pub async fn sdk_config_from_env(region: Option<&str>) -> Option<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    let sdk = loader.load().await;
    sdk.region().is_some().then_some(sdk)
}

/// The configuration tests use against an emulator: fixed endpoint, static
/// dummy credentials (no IMDS or profile look-ups), no retries (an
/// unimplemented operation fails at once).
pub fn emulator_config(region: &str, endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("testing", "testing", None, None, "static"),
            ),
        )
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build()
}

#[cfg(feature = "fleet")]
pub async fn ec2_client(region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(region).await)
}

/// The adapters a client uses to submit jobs and read their state and logs.
pub struct AwsJobs {
    pub store: dynamo::DynamoStore,
    pub queue: sqs::SqsQueue,
    pub artifacts: s3::S3Artifacts,
    pub submit_queue: String,
}

impl AwsJobs {
    pub fn new(cfg: &config::ClientConfig, sdk: &aws_config::SdkConfig) -> AwsJobs {
        AwsJobs {
            store: dynamo::DynamoStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                &cfg.jobs_table,
                &cfg.pools_table,
            ),
            queue: sqs::SqsQueue::new(aws_sdk_sqs::Client::new(sdk)),
            artifacts: s3::S3Artifacts::from_sdk(sdk, &cfg.bucket),
            submit_queue: cfg.submit_queue.clone(),
        }
    }
}
