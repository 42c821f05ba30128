//! `studio gcp setup`: everything a deployment's GCE pools need in a Google
//! Cloud project, made to exist, each step read first and changed only
//! where it differs, so a second run changes nothing and `--dry-run` lists
//! exactly the calls a real run would make.
//!
//! The steps, in order (each names the page of Google's it follows):
//! 1. the APIs (Service Usage `services.batchEnable`);
//! 2. the bucket of GCE jobs' files, uniform access, a lifecycle rule for
//!    what the stack's S3 retention would delete;
//! 3. three service accounts: the workers', the functions' (reached by
//!    workload identity federation) and the preemption push's sender;
//! 4. their grants (project, bucket, accounts), merged into the policies
//!    read, never replacing anyone else's ([`policy`]);
//! 5. the workload identity pool and its AWS provider, whose attribute
//!    condition admits exactly the stack's five function roles of the
//!    stack's account;
//! 6. the preemption path: topic, log sink (its writer granted on the
//!    topic), push subscription to the webhook, never expiring.
//!
//! What it cannot do is returned for the caller to print (quotas).

pub mod api;
mod federation;
pub mod policy;
mod preemptions;
mod project;
mod spec;

pub use project::{object_exists, upload, DEFAULT_RETENTION_DAYS};
pub use spec::{
    attribute_mapping, machines_condition, Account, Setup, SetupError, PREEMPTION_FILTER, SERVICES,
};

use api::{escape, Admin};
use policy::{ensure_policy, Grant, Policy};
use reqwest::Method;
use serde_json::{json, Value};

/// What the set-up made, for the stack's parameters.
#[derive(Debug, Clone)]
pub struct Done {
    pub project_number: Option<String>,
    pub zones: Vec<String>,
    pub worker: Account,
    pub control: Account,
    pub pusher: Account,
    /// The functions' credential configuration (no key in it).
    pub credential_config: Value,
    pub push_audience: Option<String>,
    pub pool: String,
    pub provider: String,
}

/// Sets `s` up; the changes made are in [`Admin::changes`].
///
/// # Errors
/// A call Google refused (said with what was being done), or a resource
/// that exists and is not ours to change (a bucket of another project, a
/// subscription on another topic).
pub async fn apply(api: &Admin, s: &Setup) -> Result<Done, SetupError> {
    let e = api.endpoints.clone();
    let p = &s.project;

    // 1. The APIs.
    let (enabled, mut number) = project::enabled_services(api, p).await?;
    let missing: Vec<&str> = SERVICES
        .iter()
        .copied()
        .filter(|x| !enabled.iter().any(|y| y == x))
        .collect();
    if !missing.is_empty() {
        api.mutate(
            format!("enable {}", missing.join(", ")),
            Method::POST,
            &format!("{}/v1/projects/{p}/services:batchEnable", e.serviceusage),
            Some(&json!({ "serviceIds": missing })),
        )
        .await?;
    }
    if number.is_none() && (!api.dry_run || missing.is_empty()) {
        number = api
            .get(&format!("{}/v1/projects/{p}", e.resourcemanager))
            .await?
            .and_then(|v| {
                v.get("projectNumber")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        if number.is_none() {
            return Err(SetupError::Refused(format!(
                "project {p} does not exist, or these credentials cannot see it"
            )));
        }
    }
    let compute_enabled = !missing.contains(&"compute.googleapis.com");
    let zones = project::zones(api, s, compute_enabled).await?;

    // 2. The bucket.
    project::bucket(api, s, number.as_deref()).await?;

    // 3. The accounts.
    let worker = project::account(api, s, "worker", "Studio GCE workers").await?;
    let control = project::account(api, s, "control", "Studio functions (from AWS)").await?;
    let pusher = project::account(api, s, "pusher", "Studio preemption push sender").await?;
    let sa = |a: &Account| format!("serviceAccount:{}", a.email);
    let agent = project::pubsub_agent(api, s, number.as_deref()).await?;

    // 4. Their grants.
    let (title, expression) = s.machines_condition();
    let mut project_grants = vec![
        Grant::new("roles/pubsub.subscriber", &sa(&worker)),
        Grant::new("roles/pubsub.publisher", &sa(&worker)),
        Grant::new("roles/pubsub.viewer", &sa(&worker)),
        Grant::new("roles/logging.logWriter", &sa(&worker)),
        Grant::new("roles/compute.instanceAdmin.v1", &sa(&worker)).when(&title, &expression),
        Grant::new("roles/compute.instanceAdmin.v1", &sa(&control)),
        Grant::new("roles/pubsub.editor", &sa(&control)),
    ];
    if let Some(agent) = &agent {
        // Pub/Sub's own agent: dead-lettering and delivery counts.
        project_grants.push(Grant::new("roles/pubsub.publisher", agent));
        project_grants.push(Grant::new("roles/pubsub.subscriber", agent));
    }
    let crm = format!("{}/v1/projects/{p}", e.resourcemanager);
    ensure_policy(
        api,
        &format!("project {p}"),
        Policy::post(&crm),
        &project_grants,
    )
    .await?;
    let b = format!("{}/storage/v1/b/{}", e.storage, escape(&s.bucket));
    ensure_policy(
        api,
        &format!("bucket {}", s.bucket),
        Policy::storage(&b),
        &[Grant::new("roles/storage.objectAdmin", &sa(&worker))],
    )
    .await?;
    let account_url =
        |a: &Account| format!("{}/v1/projects/{p}/serviceAccounts/{}", e.iam, a.email);
    ensure_policy(
        api,
        &format!("account {}", worker.email),
        Policy::post_query(&account_url(&worker)),
        &[Grant::new("roles/iam.serviceAccountUser", &sa(&control))],
    )
    .await?;

    // 5. Workload identity federation for the functions.
    let (pool, provider) = federation::federation(api, s).await?;
    if let Some(n) = &number {
        let grants: Vec<Grant> = s
            .aws_roles
            .iter()
            .map(|r| {
                Grant::new(
                    "roles/iam.workloadIdentityUser",
                    &format!(
                        "principalSet://iam.googleapis.com/projects/{n}/locations/global/workloadIdentityPools/{pool}/attribute.aws_role/{}",
                        s.role_arn(r)
                    ),
                )
            })
            .collect();
        ensure_policy(
            api,
            &format!("account {}", control.email),
            Policy::post_query(&account_url(&control)),
            &grants,
        )
        .await?;
    }
    let credential_config =
        federation::credential_config(number.as_deref(), &pool, &provider, &control);

    // 6. The preemption path.
    let push_audience = s.push_audience();
    preemptions::preemptions(api, s, &pusher, push_audience.as_deref()).await?;
    if let Some(agent) = &agent {
        // Signing push tokens as the pusher (needed in projects made before
        // 8 April 2021; harmless since).
        ensure_policy(
            api,
            &format!("account {}", pusher.email),
            Policy::post_query(&account_url(&pusher)),
            &[Grant::new("roles/iam.serviceAccountTokenCreator", agent)],
        )
        .await?;
    }
    Ok(Done {
        project_number: number,
        zones,
        worker,
        control,
        pusher,
        credential_config,
        push_audience,
        pool,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(prefix: &str) -> Setup {
        Setup {
            project: "proj".into(),
            region: "us-central1".into(),
            zones: vec![],
            prefix: prefix.into(),
            bucket: "b".into(),
            retention_days: Some(30),
            aws_account: "123456789012".into(),
            aws_roles: vec!["s-SubmitRole-AB".into(), "s-ScaleRole-CD".into()],
            webhook_url: Some("https://x.lambda-url.us-east-1.on.aws/".into()),
        }
    }

    #[test]
    fn names_fit_googles_limits() {
        let s = setup("a-very-long-stack-name-of-forty-characters");
        for role in ["worker", "control", "pusher"] {
            let id = s.account(role);
            let id = id.split('@').next().unwrap();
            assert!((6..=30).contains(&id.len()), "{id}");
            assert!(id.ends_with(role), "{id}");
        }
        assert!(s.pool_id().len() <= 32, "{}", s.pool_id());
        assert_eq!(
            setup("s").account("worker"),
            "s-worker@proj.iam.gserviceaccount.com"
        );
        assert_eq!(
            setup("s").push_audience().unwrap(),
            "https://x.lambda-url.us-east-1.on.aws/v1/pubsub/preemption"
        );
    }

    #[test]
    fn the_provider_admits_exactly_the_stacks_roles() {
        assert_eq!(
            setup("s").attribute_condition(),
            "attribute.aws_role in ['arn:aws:sts::123456789012:assumed-role/s-SubmitRole-AB', 'arn:aws:sts::123456789012:assumed-role/s-ScaleRole-CD']"
        );
    }

    #[test]
    fn the_credential_config_is_what_the_functions_accept() {
        let s = setup("s");
        let control = Account {
            email: s.account("control"),
            unique_id: None,
        };
        let c = federation::credential_config(Some("42"), "s-aws", "aws-123456789012", &control);
        let checked = crate::config::lambda_credential_config(&c.to_string()).unwrap();
        assert_eq!(checked, c);
        assert!(c["audience"].as_str().unwrap().contains("/projects/42/"));
    }
}
