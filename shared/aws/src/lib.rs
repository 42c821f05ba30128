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
//! - [`prices`]: the deployment's spot prices in its bucket, and the planner using them.
//! - [`events`]: EventBridge EC2 events → the domain's instance events.
//! - [`lambda`]: what the four functions do with their events.
//! - [`error`]: [`AwsError`]; [`sdk`]: the SDK's shared configuration.
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
pub mod prices;
pub mod s3;
pub mod sqs;
#[cfg(feature = "stack")]
pub mod stack;
#[cfg(feature = "webhook")]
pub mod webhook;

pub mod error;
pub mod sdk;
pub mod tls;

pub use error::AwsError;
#[cfg(feature = "fleet")]
pub use sdk::ec2_client;
pub use sdk::{emulator_config, sdk_config, sdk_config_from_env};

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
