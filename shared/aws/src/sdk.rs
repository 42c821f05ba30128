//! The SDK's shared configuration: for a region, from the environment,
//! or for an emulator in tests.

use aws_config::{BehaviorVersion, Region};
use std::sync::OnceLock;

/// A service client made from the shared configuration at its first use,
/// or one given ready. The adapters hold their clients this way, so a
/// Lambda function builds at start none of them, and an invocation only
/// those it calls: each service's first client cost 80–160 µs of a
/// function's 1.6 ms in `main` (release build, measured 2026-12-07), and
/// no invocation calls every service its function holds a client of.
/// Dereferences to the client, so the adapters call it as they would the
/// client itself.
pub struct LazyClient<C> {
    client: OnceLock<C>,
    recipe: Option<Recipe<C>>,
}

/// The configuration a client is made from, and how.
type Recipe<C> = (aws_config::SdkConfig, fn(&aws_config::SdkConfig) -> C);

impl<C> LazyClient<C> {
    /// `make(sdk)` at the first use (`make` is the service's
    /// `Client::new`, or an adapter's own constructor).
    pub fn new(sdk: &aws_config::SdkConfig, make: fn(&aws_config::SdkConfig) -> C) -> Self {
        LazyClient {
            client: OnceLock::new(),
            recipe: Some((sdk.clone(), make)),
        }
    }

    /// Whether the client has been made (or was given).
    pub fn is_made(&self) -> bool {
        self.client.get().is_some()
    }
}

impl<C> From<C> for LazyClient<C> {
    fn from(client: C) -> Self {
        LazyClient {
            client: OnceLock::from(client),
            recipe: None,
        }
    }
}

impl<C> std::ops::Deref for LazyClient<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.client.get_or_init(|| {
            let (sdk, make) = self
                .recipe
                .as_ref()
                .expect("a LazyClient is either given its client or how to make it");
            make(sdk)
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static MADE: AtomicUsize = AtomicUsize::new(0);

    fn counted(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
        MADE.fetch_add(1, Ordering::SeqCst);
        aws_sdk_sqs::Client::new(sdk)
    }

    #[test]
    fn a_lazy_client_is_made_once_at_its_first_use_and_a_given_one_never() {
        let sdk = emulator_config("us-east-1", "http://127.0.0.1:9");
        let lazy = LazyClient::new(&sdk, counted);
        assert!(!lazy.is_made());
        assert_eq!(MADE.load(Ordering::SeqCst), 0, "made before its first use");
        let first = lazy.config().region().map(|r| r.to_string());
        assert_eq!(
            first.as_deref(),
            Some("us-east-1"),
            "made from the configuration given"
        );
        let _ = lazy.list_queues();
        assert!(lazy.is_made());
        assert_eq!(
            MADE.load(Ordering::SeqCst),
            1,
            "made once, however often used"
        );

        let given: LazyClient<aws_sdk_sqs::Client> = aws_sdk_sqs::Client::new(&sdk).into();
        assert!(given.is_made());
        let _ = given.list_queues();
        assert_eq!(MADE.load(Ordering::SeqCst), 1);
    }
}
