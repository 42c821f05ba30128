//! The project's side: its APIs, zones, bucket, accounts and objects.

use super::api::{escape, Admin, ApiError};
use super::spec::{Account, Setup, SetupError};
use reqwest::Method;
use serde_json::{json, Value};

/// The prefixes the lifecycle rule deletes after the retention.
const EXPIRING: &[&str] = &["checkpoints/", "logs/", "workspaces/"];

/// The project's enabled services, and its number (from their `parent`).
pub(crate) async fn enabled_services(
    api: &Admin,
    p: &str,
) -> Result<(Vec<String>, Option<String>), ApiError> {
    let (mut names, mut number, mut token) = (Vec::new(), None, String::new());
    loop {
        let url = format!(
            "{}/v1/projects/{p}/services?filter=state:ENABLED&pageSize=200&pageToken={}",
            api.endpoints.serviceusage,
            escape(&token)
        );
        let page = api.get(&url).await?.unwrap_or(Value::Null);
        for svc in page["services"].as_array().into_iter().flatten() {
            if let Some(n) = svc.pointer("/config/name").and_then(Value::as_str) {
                names.push(n.to_string());
            }
            if number.is_none() {
                number = svc["parent"]
                    .as_str()
                    .and_then(|x| x.strip_prefix("projects/"))
                    .map(String::from);
            }
        }
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok((names, number)),
        }
    }
}

/// The zones asked for, or the region's (Compute `regions.get`; on a dry
/// run of a project without Compute yet: said as the region's).
pub(crate) async fn zones(
    api: &Admin,
    s: &Setup,
    compute_enabled: bool,
) -> Result<Vec<String>, SetupError> {
    if !s.zones.is_empty() {
        if let Some(z) = s
            .zones
            .iter()
            .find(|z| crate::config::region_of(z) != s.region)
        {
            return Err(SetupError::Refused(format!(
                "zone {z} is not in region {}",
                s.region
            )));
        }
        return Ok(s.zones.clone());
    }
    if api.dry_run && !compute_enabled {
        return Ok(vec![format!("(every zone of {})", s.region)]);
    }
    let url = format!(
        "{}/compute/v1/projects/{}/regions/{}",
        api.endpoints.compute, s.project, s.region
    );
    match api.get(&url).await {
        Ok(Some(r)) => {
            let mut zones: Vec<String> = r["zones"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|z| z.as_str()?.rsplit('/').next().map(String::from))
                .collect();
            zones.sort();
            if zones.is_empty() {
                return Err(SetupError::Refused(format!(
                    "region {} has no zones",
                    s.region
                )));
            }
            Ok(zones)
        }
        Ok(None) => Err(SetupError::Refused(format!(
            "region {} does not exist in Compute Engine",
            s.region
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Days jobs' files are kept when nobody says.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

/// The lifecycle rule: jobs' files deleted after the retention.
fn lifecycle_rule(days: u32) -> Value {
    json!({"action": {"type": "Delete"}, "condition": {"age": days, "matchesPrefix": EXPIRING}})
}

pub(crate) async fn bucket(api: &Admin, s: &Setup, number: Option<&str>) -> Result<(), SetupError> {
    let url = format!(
        "{}/storage/v1/b/{}",
        api.endpoints.storage,
        escape(&s.bucket)
    );
    let days = s.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
    let rule = lifecycle_rule(days);
    let current = match api.get(&url).await {
        Ok(b) => b,
        Err(e) if e.status == 403 && !e.message.contains("SERVICE_DISABLED") => {
            return Err(SetupError::Refused(format!(
                "bucket {} exists and is not readable here (bucket names are global: another project may own it); choose another with --bucket",
                s.bucket
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(current) = current else {
        api.mutate(
            format!("create bucket gs://{} in {}", s.bucket, s.region),
            Method::POST,
            &format!(
                "{}/storage/v1/b?project={}",
                api.endpoints.storage, s.project
            ),
            Some(&json!({
                "name": s.bucket,
                "location": s.region.to_uppercase(),
                "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": true}},
                "lifecycle": {"rule": [rule]},
            })),
        )
        .await
        .map_err(|e| match e.status {
            409 => SetupError::Refused(format!(
                "bucket name {} is taken (bucket names are global); choose another with --bucket",
                s.bucket
            )),
            _ => e.into(),
        })?;
        return Ok(());
    };
    if let (Some(n), Some(theirs)) = (number, current["projectNumber"].as_str()) {
        if n != theirs {
            return Err(SetupError::Refused(format!(
                "bucket {} belongs to project number {theirs}, not {} ({n}); choose another with --bucket",
                s.bucket, s.project
            )));
        }
    }
    let rules: Vec<Value> = current
        .pointer("/lifecycle/rule")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours = |r: &Value| {
        r.pointer("/condition/matchesPrefix") == rule.pointer("/condition/matchesPrefix")
    };
    if rules.iter().any(|r| same_rule(r, &rule))
        || (s.retention_days.is_none() && rules.iter().any(ours))
    {
        return Ok(());
    }
    // Ours replaces an earlier one of ours (another retention); the
    // bucket's other rules stay.
    let mut kept: Vec<Value> = rules
        .into_iter()
        .filter(|r| {
            r.pointer("/condition/matchesPrefix") != rule.pointer("/condition/matchesPrefix")
        })
        .collect();
    kept.push(rule);
    api.mutate(
        format!(
            "set gs://{}'s lifecycle: delete {} after {} days",
            s.bucket,
            EXPIRING.join(", "),
            days
        ),
        Method::PATCH,
        &url,
        Some(&json!({"lifecycle": {"rule": kept}})),
    )
    .await?;
    Ok(())
}

/// Rules compared by what they do (Storage echoes numbers as numbers and
/// may add fields of its own).
fn same_rule(a: &Value, b: &Value) -> bool {
    a.pointer("/action/type") == b.pointer("/action/type")
        && a.pointer("/condition/age").and_then(Value::as_u64)
            == b.pointer("/condition/age").and_then(Value::as_u64)
        && a.pointer("/condition/matchesPrefix") == b.pointer("/condition/matchesPrefix")
}

pub(crate) async fn account(
    api: &Admin,
    s: &Setup,
    role: &str,
    display: &str,
) -> Result<Account, ApiError> {
    let email = s.account(role);
    let base = format!(
        "{}/v1/projects/{}/serviceAccounts",
        api.endpoints.iam, s.project
    );
    if let Some(a) = api.get(&format!("{base}/{email}")).await? {
        return Ok(Account {
            unique_id: a["uniqueId"].as_str().map(String::from),
            email,
        });
    }
    let account_id = email.split('@').next().unwrap_or_default().to_string();
    let made = api
        .mutate(
            format!("create service account {email}"),
            Method::POST,
            &base,
            Some(&json!({"accountId": account_id, "serviceAccount": {"displayName": display}})),
        )
        .await?;
    Ok(Account {
        unique_id: made.and_then(|a| a["uniqueId"].as_str().map(String::from)),
        email,
    })
}

/// Whether the bucket holds `name` (a release binary).
///
/// # Errors
/// The call failed.
pub async fn object_exists(api: &Admin, bucket: &str, name: &str) -> Result<bool, ApiError> {
    let url = format!(
        "{}/storage/v1/b/{}/o/{}",
        api.endpoints.storage,
        escape(bucket),
        escape(name)
    );
    Ok(api.get(&url).await?.is_some())
}

/// Uploads `bytes` as `name` unless it exists (`ifGenerationMatch=0`).
///
/// # Errors
/// The upload failed.
pub async fn upload(api: &Admin, bucket: &str, name: &str, bytes: Vec<u8>) -> Result<(), ApiError> {
    api.upload(
        format!("upload gs://{bucket}/{name} ({} bytes)", bytes.len()),
        &format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}&ifGenerationMatch=0",
            api.endpoints.storage,
            escape(bucket),
            escape(name)
        ),
        bytes,
    )
    .await
}

/// Pub/Sub's service agent (`service-NUMBER@gcp-sa-pubsub`), made now if
/// it does not exist: Google makes service agents "just in time", at the
/// service's first need, and until then a grant to it is refused as a
/// member that does not exist (Service Usage v1beta1
/// `generateServiceIdentity` makes it). Asked only while the project's
/// policy does not name it yet, so a second run asks nothing.
pub(crate) async fn pubsub_agent(
    api: &Admin,
    s: &Setup,
    number: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(n) = number else {
        return Ok(None);
    };
    let member = format!("serviceAccount:service-{n}@gcp-sa-pubsub.iam.gserviceaccount.com");
    let policy = api
        .read_post(
            &format!(
                "{}/v1/projects/{}:getIamPolicy",
                api.endpoints.resourcemanager, s.project
            ),
            &json!({"options": {"requestedPolicyVersion": 3}}),
        )
        .await?
        .unwrap_or_default();
    let named = policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["members"].as_array().into_iter().flatten())
        .any(|m| m.as_str() == Some(member.as_str()));
    if named {
        return Ok(Some(member));
    }
    let made = api
        .mutate(
            "make Pub/Sub's service agent".into(),
            Method::POST,
            &format!(
                "{}/v1beta1/projects/{}/services/pubsub.googleapis.com:generateServiceIdentity",
                api.endpoints.serviceusage, s.project
            ),
            Some(&json!({})),
        )
        .await?;
    Ok(Some(
        made.and_then(|r| r["email"].as_str().map(|e| format!("serviceAccount:{e}")))
            .unwrap_or(member),
    ))
}
