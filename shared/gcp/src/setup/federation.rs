//! Workload identity federation: the functions on AWS reach Google as the
//! deployment's control account, and nothing else of the account can.

use super::api::{Admin, ApiError};
use super::spec::{attribute_mapping, short, Account, Setup};
use reqwest::Method;
use serde_json::{json, Value};

/// The pool and its AWS provider; `(pool id, provider id)`.
pub(crate) async fn federation(api: &Admin, s: &Setup) -> Result<(String, String), ApiError> {
    let (pool, provider) = (s.pool_id(), s.provider_id());
    let base = format!(
        "{}/v1/projects/{}/locations/global/workloadIdentityPools",
        api.endpoints.iam, s.project
    );
    match api.get(&format!("{base}/{pool}")).await? {
        None => {
            api.mutate(
                format!("create workload identity pool {pool}"),
                Method::POST,
                &format!("{base}?workloadIdentityPoolId={pool}"),
                Some(&json!({"displayName": short(&format!("Studio {}", s.prefix), 32), "description": "Studio's functions on AWS"})),
            )
            .await?;
        }
        // Deleted pools are kept 30 days, and their names with them.
        Some(p) if p["state"] == "DELETED" => {
            api.mutate(
                format!("undelete workload identity pool {pool}"),
                Method::POST,
                &format!("{base}/{pool}:undelete"),
                Some(&json!({})),
            )
            .await?;
        }
        Some(_) => {}
    }
    let wanted = json!({
        "aws": {"accountId": s.aws_account},
        "attributeMapping": attribute_mapping(),
        "attributeCondition": s.attribute_condition(),
    });
    let providers = format!("{base}/{pool}/providers");
    match api.get(&format!("{providers}/{provider}")).await? {
        None => {
            api.mutate(
                format!(
                    "create provider {provider} (AWS account {}, the roles {})",
                    s.aws_account,
                    s.aws_roles.join(", ")
                ),
                Method::POST,
                &format!("{providers}?workloadIdentityPoolProviderId={provider}"),
                Some(&wanted),
            )
            .await?;
        }
        Some(now) => {
            if now["state"] == "DELETED" {
                api.mutate(
                    format!("undelete provider {provider}"),
                    Method::POST,
                    &format!("{providers}/{provider}:undelete"),
                    Some(&json!({})),
                )
                .await?;
            }
            let same = now.pointer("/aws/accountId") == wanted.pointer("/aws/accountId")
                && now["attributeMapping"] == wanted["attributeMapping"]
                && now["attributeCondition"] == wanted["attributeCondition"];
            if !same {
                api.mutate(
                    format!(
                        "update provider {provider}: the roles {}",
                        s.aws_roles.join(", ")
                    ),
                    Method::PATCH,
                    &format!(
                        "{providers}/{provider}?updateMask=aws,attributeMapping,attributeCondition"
                    ),
                    Some(&wanted),
                )
                .await?;
            }
        }
    }
    Ok((pool, provider))
}

/// The functions' credential configuration, as `gcloud iam
/// workload-identity-pools create-cred-config --aws` writes it (without an
/// IMDSv2 URL: Lambda has no metadata service).
pub(crate) fn credential_config(
    number: Option<&str>,
    pool: &str,
    provider: &str,
    control: &Account,
) -> Value {
    let n = number.unwrap_or("PROJECT_NUMBER");
    json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": format!("//iam.googleapis.com/projects/{n}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"),
        "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
        "service_account_impersonation_url": format!("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{}:generateAccessToken", control.email),
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            // `{region}` as gcloud writes it: the client puts in the
            // region the function runs in.
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        },
    })
}
