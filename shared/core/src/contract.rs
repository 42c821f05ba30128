//! The messages other programs send us. These are public contracts: the CLI,
//! anyone with `sqs:SendMessage` on the submit queue, and the webhook all send
//! the same [`SubmitJob`]. Fields are versioned; unknown fields are rejected
//! so a typo (`"cpu": 8`) is an error instead of a silent default.

use crate::catalog::Arch;
use crate::ids::JobId;
use crate::resources::{Bid, Cloud, RequestError, ResourceRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The version of [`SubmitJob`] this build writes and reads.
pub const SUBMIT_JOB_VERSION: u32 = 1;
/// The version of [`WorkItem`] this build writes and reads.
pub const WORK_ITEM_VERSION: u32 = 1;

/// Where the job's files are: a content-addressed tarball in the artifact store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRef {
    /// SHA-256 of the `.tar.gz`, hex; also its key in the artifact store.
    pub sha256: String,
    /// Size of the tarball in bytes.
    pub bytes: u64,
}

impl WorkspaceRef {
    /// The reference of `tarball`: its SHA-256 and size.
    pub fn of(tarball: &[u8]) -> WorkspaceRef {
        use sha2::Digest;
        WorkspaceRef {
            sha256: hex::encode(sha2::Sha256::digest(tarball)),
            bytes: tarball.len() as u64,
        }
    }

    /// `bytes` if they are this workspace, as every artifact store checks
    /// what it read back.
    ///
    /// # Errors
    /// A backend error of `port` naming the corrupt workspace.
    pub fn verify(
        &self,
        port: &'static str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, crate::ports::PortError> {
        use sha2::Digest;
        if hex::encode(sha2::Sha256::digest(&bytes)) != self.sha256 {
            return Err(crate::ports::PortError::backend(
                port,
                format!("workspace {} is corrupt", self.sha256),
            ));
        }
        Ok(bytes)
    }
}

/// A request to run a script: the one message every entry point sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Must be [`SUBMIT_JOB_VERSION`].
    pub version: u32,
    /// The idempotency key. Absent: the queue message id is used, so a
    /// redelivered message still makes one job.
    #[serde(default)]
    pub job_id: Option<JobId>,
    #[serde(default = "default_cloud")]
    pub cloud: Cloud,
    #[serde(default)]
    pub resources: ResourceRequest,
    #[serde(default)]
    pub bid: Option<Bid>,
    /// Region to run in; `None`: the catalogue's (EC2) or us-central1 (GCE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// CPU architecture; `None`: x86_64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Pin a GPU model (`T4`, `A10G`, `L4`, `A100`, `H100`, …; GCE: `nvidia-tesla-t4`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// `Some(n)`: the pool keeps n workers. `None`: start at one, grow while work waits.
    #[serde(default)]
    pub num_workers: Option<u32>,
    pub workspace: WorkspaceRef,
    /// Script path inside the workspace, run with `python3`.
    pub entrypoint: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the script after this many seconds.
    #[serde(default)]
    pub max_duration_secs: Option<u64>,
    /// Drop the job (cancelled, with the reason) if it waited longer than this
    /// many seconds before a worker took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
    /// On a spot cloud, when the job is out of attempts, run it on on-demand
    /// machines instead of failing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback_on_demand: bool,
    pub owner: String,
}

fn default_cloud() -> Cloud {
    Cloud::Local
}

/// Why a message is not a valid contract message. Never retryable.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ContractError {
    #[error("not a valid {what} message: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("unsupported {what} version {got}: this build reads version {want}")]
    Version {
        what: &'static str,
        got: u32,
        want: u32,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("entrypoint '{0}' must be a relative path inside the workspace")]
    Entrypoint(String),
    #[error("env name '{0}' is not a valid variable name")]
    EnvName(String),
    #[error("env name '{0}' is reserved for Studio")]
    EnvReserved(String),
    #[error("owner must not be empty")]
    Owner,
    #[error("max_duration_secs and lifetime_secs must be at least 1")]
    MaxDuration,
    #[error("{field} '{value}' may hold only letters, digits, '-', '_' and '.'")]
    Name { field: &'static str, value: String },
    #[error("args and env take {bytes} bytes; at most {MAX_ARGS_ENV_BYTES} are allowed (the job record must fit a DynamoDB item, 400 KB, with its history)")]
    TooLarge { bytes: usize },
}

/// Most bytes a job's args and env (names and values) may take together.
pub const MAX_ARGS_ENV_BYTES: usize = 64 * 1024;

impl SubmitJob {
    /// The JSON Schema of the contract, generated from these types (checked
    /// in at `docs/submit-contract.schema.json`; a test fails when it drifts).
    pub fn json_schema() -> serde_json::Value {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(SubmitJob)).expect("a schema serializes");
        schema["$id"] = "urn:studio:submit-job:1".into();
        schema
    }

    /// A request for `cloud` and `resources` with every other field at its
    /// default (no workspace or entrypoint yet).
    pub fn new(cloud: Cloud, resources: ResourceRequest, owner: &str) -> SubmitJob {
        SubmitJob {
            version: SUBMIT_JOB_VERSION,
            job_id: None,
            cloud,
            resources,
            bid: None,
            region: None,
            arch: None,
            gpu_type: None,
            num_workers: None,
            workspace: WorkspaceRef {
                sha256: String::new(),
                bytes: 0,
            },
            entrypoint: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            max_duration_secs: None,
            lifetime_secs: None,
            fallback_on_demand: false,
            owner: owner.to_string(),
        }
    }

    /// Parses and validates a message body.
    ///
    /// # Errors
    /// [`ContractError`] saying what is wrong; nothing has been applied.
    pub fn from_json(body: &str) -> Result<SubmitJob, ContractError> {
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| ContractError::Malformed {
                what: "SubmitJob",
                detail: e.to_string(),
            })?;
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        if version != SUBMIT_JOB_VERSION {
            return Err(ContractError::Version {
                what: "SubmitJob",
                got: version,
                want: SUBMIT_JOB_VERSION,
            });
        }
        let job: SubmitJob = serde_json::from_value(v).map_err(|e| ContractError::Malformed {
            what: "SubmitJob",
            detail: e.to_string(),
        })?;
        job.validate()?;
        Ok(job)
    }

    /// # Errors
    /// [`ContractError`] for an invalid request, entrypoint, env or owner.
    pub fn validate(&self) -> Result<(), ContractError> {
        self.resources.validate()?;
        let bytes = self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > MAX_ARGS_ENV_BYTES {
            return Err(ContractError::TooLarge { bytes });
        }
        crate::resources::WorkerPolicy::from_flag(self.num_workers)?;
        let ep = std::path::Path::new(&self.entrypoint);
        if self.entrypoint.is_empty()
            || ep.is_absolute()
            || ep
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ContractError::Entrypoint(self.entrypoint.clone()));
        }
        for name in self.env.keys() {
            let mut chars = name.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ContractError::EnvName(name.clone()));
            }
            if name.starts_with("STUDIO_") {
                return Err(ContractError::EnvReserved(name.clone()));
            }
        }
        if self.owner.trim().is_empty() {
            return Err(ContractError::Owner);
        }
        if self.max_duration_secs == Some(0) || self.lifetime_secs == Some(0) {
            return Err(ContractError::MaxDuration);
        }
        for (field, value) in [("region", &self.region), ("gpu_type", &self.gpu_type)] {
            if let Some(v) = value {
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(ContractError::Name {
                        field,
                        value: v.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("SubmitJob always serializes")
    }
}

/// One unit of work on a pool's queue: run `attempt` of `job_id`.
///
/// The attempt number lets a worker tell a stale item (the job has moved on
/// to a later attempt) from a live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItem {
    pub version: u32,
    pub job_id: JobId,
    pub attempt: u32,
}

impl WorkItem {
    pub fn new(job_id: JobId, attempt: u32) -> Self {
        WorkItem {
            version: WORK_ITEM_VERSION,
            job_id,
            attempt,
        }
    }

    /// # Errors
    /// [`ContractError`] for a body that is not a current work item.
    pub fn from_json(body: &str) -> Result<WorkItem, ContractError> {
        let item: WorkItem = serde_json::from_str(body).map_err(|e| ContractError::Malformed {
            what: "WorkItem",
            detail: e.to_string(),
        })?;
        if item.version != WORK_ITEM_VERSION {
            return Err(ContractError::Version {
                what: "WorkItem",
                got: item.version,
                want: WORK_ITEM_VERSION,
            });
        }
        Ok(item)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("WorkItem always serializes")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> SubmitJob {
        SubmitJob {
            job_id: Some(JobId::new("job-1").unwrap()),
            workspace: WorkspaceRef {
                sha256: "ab".repeat(32),
                bytes: 10,
            },
            entrypoint: "train.py".into(),
            args: vec!["--lr".into(), "0.1".into()],
            env: BTreeMap::from([("SEED".to_string(), "1".to_string())]),
            ..SubmitJob::new(Cloud::Local, ResourceRequest::default(), "ada")
        }
    }

    #[test]
    fn submit_job_round_trips() {
        let s = sample();
        assert_eq!(SubmitJob::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not a valid SubmitJob message"),
            ("{}", "unsupported SubmitJob version 0"),
            (r#"{"version":2}"#, "unsupported SubmitJob version 2"),
            (r#"{"version":1}"#, "missing field `workspace`"),
        ];
        for (body, want) in cases {
            let e = SubmitJob::from_json(body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        let mut v = serde_json::to_value(sample()).unwrap();
        v["resources"]["cpu"] = 8.into();
        let e = SubmitJob::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cpu`"), "{e}");

        let mut s = sample();
        s.entrypoint = "../etc/passwd".into();
        assert!(matches!(s.validate(), Err(ContractError::Entrypoint(_))));
        let mut s = sample();
        s.env.insert("STUDIO_JOB_ID".into(), "x".into());
        assert!(matches!(s.validate(), Err(ContractError::EnvReserved(_))));
        let mut s = sample();
        s.env.insert("1BAD".into(), "x".into());
        assert!(matches!(s.validate(), Err(ContractError::EnvName(_))));
        let mut s = sample();
        s.resources.cpus = 0;
        assert!(matches!(s.validate(), Err(ContractError::Request(_))));
        let mut s = sample();
        s.num_workers = Some(0);
        assert!(matches!(s.validate(), Err(ContractError::Request(_))));
    }

    #[test]
    fn args_and_env_too_large_for_the_record_are_refused() {
        let mut j = sample();
        j.args = vec!["x".repeat(MAX_ARGS_ENV_BYTES - 4)];
        j.env = [("AB".to_string(), "CD".to_string())].into();
        assert!(j.validate().is_ok(), "exactly the limit");
        j.env.insert("E".into(), String::new());
        assert_eq!(
            j.validate().unwrap_err().to_string(),
            "args and env take 65537 bytes; at most 65536 are allowed (the job record must fit a DynamoDB item, 400 KB, with its history)"
        );
        let back = SubmitJob::from_json(&j.to_json()).unwrap_err();
        assert!(
            matches!(back, ContractError::TooLarge { bytes: 65537 }),
            "{back}"
        );
    }

    #[test]
    fn work_items_reject_other_versions() {
        let w = WorkItem::new(JobId::new("j").unwrap(), 2);
        assert_eq!(WorkItem::from_json(&w.to_json()).unwrap(), w);
        let e = WorkItem::from_json(r#"{"version":9,"job_id":"j","attempt":1}"#).unwrap_err();
        assert!(matches!(e, ContractError::Version { got: 9, .. }));
    }
}
