//! What `studio gcp setup` is asked for, and the names it gives things.

use super::api::ApiError;
use serde_json::{json, Value};

/// The APIs a deployment's GCE pools use.
pub const SERVICES: &[&str] = &[
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "storage.googleapis.com",
    "sts.googleapis.com",
];

/// The log entries of a preempted VM (the audit log's system event).
pub const PREEMPTION_FILTER: &str =
    r#"resource.type="gce_instance" AND protoPayload.methodName="compute.instances.preempted""#;

/// What to set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub project: String,
    pub region: String,
    /// Empty: every zone of the region (Compute's `regions.get`).
    pub zones: Vec<String>,
    /// The deployment's GCE name prefix (the stack's name, lower case).
    pub prefix: String,
    pub bucket: String,
    /// Days the lifecycle rule keeps jobs' files; `None`: whatever rule of
    /// ours the bucket has is right (`studio doctor`), 30 for a new one.
    pub retention_days: Option<u32>,
    pub aws_account: String,
    /// The names of the stack's function roles.
    pub aws_roles: Vec<String>,
    /// The webhook's URL: `None` leaves the preemption push out.
    pub webhook_url: Option<String>,
}

/// A service account: its email and numeric unique id (`None` while it
/// does not exist: a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub email: String,
    pub unique_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    Refused(String),
}

/// A name prefix that fits Google's shortest limit here (service account
/// ids: 6 to 30 characters, `[a-z][-a-z0-9]*[a-z0-9]`).
pub(crate) fn short(prefix: &str, room: usize) -> String {
    let p: String = prefix.chars().take(room).collect();
    p.trim_end_matches('-').to_string()
}

impl Setup {
    pub fn account(&self, role: &str) -> String {
        format!(
            "{}-{role}@{}.iam.gserviceaccount.com",
            short(&self.prefix, 30 - role.len() - 1),
            self.project
        )
    }

    /// The workload identity pool (4 to 32 characters).
    pub fn pool_id(&self) -> String {
        format!("{}-aws", short(&self.prefix, 28))
    }

    pub fn provider_id(&self) -> String {
        format!("aws-{}", self.aws_account)
    }

    pub fn topic(&self) -> String {
        format!("{}-preemptions", self.prefix)
    }

    pub fn push_subscription(&self) -> String {
        format!("{}-preemptions-push", self.prefix)
    }

    /// The audience of the push's token: the webhook's route.
    pub fn push_audience(&self) -> Option<String> {
        self.webhook_url
            .as_ref()
            .map(|u| format!("{}/v1/pubsub/preemption", u.trim_end_matches('/')))
    }

    /// The IAM condition narrowing the workers' Compute rights to the
    /// deployment's own groups and VMs.
    pub fn machines_condition(&self) -> (String, String) {
        machines_condition(&self.prefix)
    }

    /// The provider's attribute condition: the stack's function roles, of
    /// the stack's account, and nothing else of that account.
    pub fn attribute_condition(&self) -> String {
        let roles: Vec<String> = self
            .aws_roles
            .iter()
            .map(|r| format!("'{}'", self.role_arn(r)))
            .collect();
        format!("attribute.aws_role in [{}]", roles.join(", "))
    }

    pub(crate) fn role_arn(&self, role: &str) -> String {
        format!("arn:aws:sts::{}:assumed-role/{role}", self.aws_account)
    }
}

/// The IAM condition (title, expression) narrowing a deployment's workers'
/// Compute rights to its own groups and VMs (`prefix`: its GCE name
/// prefix). Operations are outside it: the workers never read one (their
/// calls do not wait for their operations), so it need not reach them.
pub fn machines_condition(prefix: &str) -> (String, String) {
    (
        format!("studio {prefix} machines"),
        format!(
            "resource.name.extract(\"/instanceGroupManagers/{{n}}\").startsWith(\"{prefix}-\") || resource.name.extract(\"/instances/{{n}}\").startsWith(\"{prefix}-\")"
        ),
    )
}

/// The AWS provider's attribute mapping, Google's default for AWS: the
/// session's role without its session name.
///
/// `google.subject` is the role too, not Google's default `assertion.arn`:
/// a Lambda session's ARN ends in the function's name, and with a stack
/// name of some 22 characters it passes the 127 bytes Google allows a
/// subject, so every token exchange would fail.
pub fn attribute_mapping() -> Value {
    let role = "assertion.arn.contains('assumed-role') ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/' + assertion.arn.extract('assumed-role/{role_name}/') : assertion.arn";
    json!({"google.subject": role, "attribute.aws_role": role})
}
