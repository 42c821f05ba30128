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

/// The Lambda functions' SDK configuration: [`sdk_config`]'s, over the
/// HTTPS client of [`crate::tls`] (roots compiled in, parsed at the first
/// connection), with `AWS_CA_BUNDLE`'s roots added when it names a file.
///
/// Credentials: Lambda puts the execution role's session in
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`,
/// the first place the default chain looks; when they are there they are
/// read from there alone, without building the rest of the chain (web
/// identity, ECS, IMDS, SSO providers) at every cold start.
pub async fn function_sdk_config(region: &str) -> Result<aws_config::SdkConfig, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let http = crate::tls::https_client_from(env)?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http);
    if env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some() {
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    Ok(loader.load().await)
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
