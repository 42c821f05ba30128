//! AWS credentials for a worker on a GCE machine, without a key: the
//! machine's Google identity token (metadata server,
//! `instance/service-accounts/default/identity?audience=…&format=full`)
//! exchanged with STS `AssumeRoleWithWebIdentity` for the worker role, whose
//! trust policy names the IAM OIDC provider of `accounts.google.com` and
//! the workers' service account (see docs/gcp.md). A fresh token is
//! fetched for every exchange; the SDK's identity cache renews the
//! credentials before they expire.

use aws_credential_types::provider::{self, error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use std::time::{Duration, SystemTime};
use studio_core::notice::metadata_get;

/// The audience the identity token is asked for (and the role's trust
/// policy checks): the role's ARN, unless set otherwise.
#[derive(Debug, Clone)]
pub struct GceWebIdentity {
    /// `http://metadata.google.internal` on a machine.
    pub metadata: String,
    pub audience: String,
    pub role_arn: String,
    /// The session name CloudTrail shows: the machine's name.
    pub session: String,
    sts: aws_sdk_sts::Client,
}

impl GceWebIdentity {
    /// `sts` is unsigned (the call authenticates with the token itself).
    pub async fn new(
        region: &str,
        metadata: String,
        audience: String,
        role_arn: String,
        session: String,
    ) -> GceWebIdentity {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .no_credentials()
            .load()
            .await;
        GceWebIdentity {
            metadata,
            audience,
            role_arn,
            session,
            sts: aws_sdk_sts::Client::new(&sdk),
        }
    }

    /// One exchange: token, then STS.
    ///
    /// # Errors
    /// The metadata server or STS refused.
    pub async fn exchange(&self) -> Result<Credentials, CredentialsError> {
        let path = format!(
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience={}&format=full",
            studio_core::url::encode(&self.audience)
        );
        let token =
            match metadata_get(&self.metadata, &path, &[("Metadata-Flavor", "Google")]).await {
                Ok((200, body)) => body.trim().to_string(),
                Ok((code, body)) => {
                    return Err(CredentialsError::provider_error(format!(
                        "GCE metadata identity: HTTP {code}: {}",
                        body.trim()
                    )))
                }
                Err(e) => return Err(CredentialsError::provider_error(e)),
            };
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.role_arn)
            .role_session_name(&self.session)
            .web_identity_token(token)
            .duration_seconds(3600)
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(
                    aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
                )
            })?;
        let c = out
            .credentials
            .ok_or_else(|| CredentialsError::provider_error("STS answered without credentials"))?;
        let expiry =
            SystemTime::UNIX_EPOCH + Duration::from_secs(c.expiration.secs().max(0) as u64);
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expiry),
            "gce-web-identity",
        ))
    }
}

impl ProvideCredentials for GceWebIdentity {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let r: provider::Result = self.exchange().await;
            r
        })
    }
}

/// The SDK configuration of a GCE worker: `region`, credentials from
/// [`GceWebIdentity`], the endpoint from the environment.
pub async fn sdk_config(region: &str, identity: GceWebIdentity) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(identity)
        .load()
        .await
}
