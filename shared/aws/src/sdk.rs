//! The SDK's shared configuration: for a region, from the environment,
//! or for an emulator in tests.

use aws_config::{BehaviorVersion, Region};

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
