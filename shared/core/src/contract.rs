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

/// The newest version of [`SubmitJob`] this build reads. Version 2 added
/// `outputs`, `inputs` and `max_cost_cents`; version 3 `python`. A message is written in the oldest
/// version that holds its fields ([`SubmitJob::settle_version`]), so a
/// deployment not yet upgraded still takes what it can run.
pub const SUBMIT_JOB_VERSION: u32 = 3;
/// Versions of [`SubmitJob`] this build reads.
pub const SUBMIT_JOB_VERSIONS: std::ops::RangeInclusive<u32> = 1..=SUBMIT_JOB_VERSION;
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
    ) -> Result<Vec<u8>, crate::error::PortError> {
        use sha2::Digest;
        if hex::encode(sha2::Sha256::digest(&bytes)) != self.sha256 {
            return Err(crate::error::PortError::backend(
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
    /// 1 to 3 ([`SUBMIT_JOB_VERSIONS`]); a field needs the version that added it.
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
    /// Files or directories of the workspace (relative paths) collected as
    /// outputs at the end of every attempt, beside `$STUDIO_OUTPUT_DIR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Data fetched into the workspace before the script starts, with the
    /// machine's own credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Stop the job (and its re-runs), `cancelled` with the reason, before
    /// its machines cost more than this many US cents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_cents: Option<u64>,
    /// The Python the script runs with: a version (`3.12`, `3.12.1`) or an
    /// interpreter's absolute path. Absent: the machine's `python3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    pub owner: String,
}

/// Objects under an S3 URL, fetched into the workspace at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// `s3://BUCKET/PREFIX`: every object under the prefix (keys below it
    /// keep their relative paths), or the one object the URL names.
    pub url: String,
    /// Where in the workspace (relative, no `..`).
    pub path: String,
}

/// Most inputs a job may name.
pub const MAX_INPUTS: usize = 16;

/// `(bucket, prefix)` of an `s3://BUCKET[/PREFIX]` URL; `None` when it is
/// not one (bucket names as S3 allows them: 3 to 63 of `a-z 0-9 . -`).
pub fn parse_s3_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && prefix.len() <= 1024;
    ok.then_some((bucket, prefix))
}

/// Whether `s` is a SHA-256 in lowercase hex (a content address).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `p` is a non-empty relative path that stays inside its directory.
fn is_inside(p: &str) -> bool {
    let path = std::path::Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Whether `p` names a Python as a job may: a version of one to three
/// numbers (`3`, `3.12`, `3.12.1`), or an absolute path without `..`.
pub fn is_python_request(p: &str) -> bool {
    let version = !p.is_empty()
        && p.split('.').count() <= 3
        && p.split('.')
            .all(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()));
    let path = p.starts_with('/')
        && p.len() <= 256
        && p.split('/').all(|c| c != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b));
    version || path
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
        want: String,
    },
    #[error("field '{field}' needs SubmitJob version {needs} (the message says version {got})")]
    FieldVersion {
        field: &'static str,
        needs: u32,
        got: u32,
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
    #[error("output '{0}' must be a relative path inside the workspace")]
    Output(String),
    #[error("at most {MAX_OUTPUTS} outputs may be named")]
    TooManyOutputs,
    #[error("input '{url}' -> '{path}': the URL must be s3://BUCKET/PREFIX and the path relative, inside the workspace")]
    Input { url: String, path: String },
    #[error("at most {MAX_INPUTS} inputs may be named")]
    TooManyInputs,
    #[error("max_cost_cents must be at least 1")]
    MaxCost,
    #[error("arch must be x86_64 or arm64")]
    Arch,
    #[error("python '{0}' must be a version (3.12, 3.12.1) or an interpreter's absolute path")]
    Python(String),
    #[error("args and env take {bytes} bytes; at most {MAX_ARGS_ENV_BYTES} are allowed (the job record must fit a DynamoDB item, 400 KB, with its history)")]
    TooLarge { bytes: usize },
}

/// Most outputs (`--output`) a job may name.
pub const MAX_OUTPUTS: usize = 64;

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
            version: 1,
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
            outputs: Vec::new(),
            inputs: Vec::new(),
            max_cost_cents: None,
            python: None,
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
        let version = v
            .get("version")
            .and_then(|x| x.as_u64())
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
        if !SUBMIT_JOB_VERSIONS.contains(&version) {
            return Err(ContractError::Version {
                what: "SubmitJob",
                got: version,
                want: format!(
                    "{} to {}",
                    SUBMIT_JOB_VERSIONS.start(),
                    SUBMIT_JOB_VERSIONS.end()
                ),
            });
        }
        let job: SubmitJob = serde_json::from_value(v).map_err(|e| ContractError::Malformed {
            what: "SubmitJob",
            detail: e.to_string(),
        })?;
        job.validate()?;
        Ok(job)
    }

    /// The oldest version that holds this request's fields.
    pub fn min_version(&self) -> u32 {
        if self.python.is_some() {
            3
        } else if self.outputs.is_empty() && self.inputs.is_empty() && self.max_cost_cents.is_none()
        {
            1
        } else {
            2
        }
    }

    /// Marks the request with [`SubmitJob::min_version`] (what senders write).
    pub fn settle_version(&mut self) {
        self.version = self.min_version();
    }

    /// # Errors
    /// [`ContractError`] for an invalid request, entrypoint, env or owner.
    pub fn validate(&self) -> Result<(), ContractError> {
        if !SUBMIT_JOB_VERSIONS.contains(&self.version) {
            return Err(ContractError::Version {
                what: "SubmitJob",
                got: self.version,
                want: format!(
                    "{} to {}",
                    SUBMIT_JOB_VERSIONS.start(),
                    SUBMIT_JOB_VERSIONS.end()
                ),
            });
        }
        if self.version < 3 && self.python.is_some() {
            return Err(ContractError::FieldVersion {
                field: "python",
                needs: 3,
                got: self.version,
            });
        }
        if self.version < 2 {
            let field = if !self.outputs.is_empty() {
                Some("outputs")
            } else if !self.inputs.is_empty() {
                Some("inputs")
            } else if self.max_cost_cents.is_some() {
                Some("max_cost_cents")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(ContractError::FieldVersion {
                    field,
                    needs: 2,
                    got: self.version,
                });
            }
        }
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
        if !is_inside(&self.entrypoint) {
            return Err(ContractError::Entrypoint(self.entrypoint.clone()));
        }
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(ContractError::TooManyOutputs);
        }
        if let Some(o) = self
            .outputs
            .iter()
            .find(|o| !is_inside(o) || o.len() > 1024)
        {
            return Err(ContractError::Output(o.clone()));
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(ContractError::TooManyInputs);
        }
        if let Some(i) = self
            .inputs
            .iter()
            .find(|i| parse_s3_url(&i.url).is_none() || !is_inside(&i.path) || i.path.len() > 1024)
        {
            return Err(ContractError::Input {
                url: i.url.clone(),
                path: i.path.clone(),
            });
        }
        if self.max_cost_cents == Some(0) {
            return Err(ContractError::MaxCost);
        }
        if let Some(p) = &self.python {
            if !is_python_request(p) {
                return Err(ContractError::Python(p.clone()));
            }
        }
        // The catalogue reads other architectures (i386, the mac types)
        // as `Other`; a request may not ask for one.
        if self.arch == Some(crate::catalog::Arch::Other) {
            return Err(ContractError::Arch);
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
                want: WORK_ITEM_VERSION.to_string(),
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
            (
                r#"{"version":4}"#,
                "unsupported SubmitJob version 4: this build reads version 1 to 3",
            ),
            (
                r#"{"version":4294967297}"#,
                "unsupported SubmitJob version 4294967295",
            ),
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
        for bad in ["../up", "/etc", "", "a/../../b"] {
            let mut s = sample();
            s.version = 2;
            s.outputs = vec![bad.into()];
            assert!(
                matches!(s.validate(), Err(ContractError::Output(_))),
                "{bad:?}"
            );
        }
        let mut s = sample();
        s.version = 2;
        s.max_cost_cents = Some(0);
        assert!(matches!(s.validate(), Err(ContractError::MaxCost)));
        for bad in [
            "python3",
            "3.x",
            "3..12",
            "",
            "../bin/python",
            "/usr/../bin/python",
            "/bin/python;rm",
            "3.12.1.4",
        ] {
            let mut s = sample();
            s.python = Some(bad.into());
            s.settle_version();
            assert!(
                matches!(s.validate(), Err(ContractError::Python(_))),
                "{bad:?}"
            );
        }
        for good in [
            "3",
            "3.12",
            "3.12.1",
            "/usr/bin/python3.12",
            "/opt/conda/envs/ml-2/bin/python",
        ] {
            let mut s = sample();
            s.python = Some(good.into());
            s.settle_version();
            assert_eq!(s.version, 3, "python needs version 3");
            assert_eq!(s.validate(), Ok(()), "{good:?}");
        }
        let mut s = sample();
        s.python = Some("3.12".into());
        s.version = 2;
        assert!(matches!(
            s.validate(),
            Err(ContractError::FieldVersion {
                field: "python",
                needs: 3,
                got: 2
            })
        ));
    }

    /// Version 2's fields need version 2; a sender writes the oldest
    /// version that holds its fields, so a v1-only deployment still takes
    /// every job that does not use them.
    #[test]
    fn new_fields_need_version_2_and_senders_write_the_oldest_that_fits() {
        let mut s = sample();
        s.settle_version();
        assert_eq!(s.version, 1);
        assert_eq!(SubmitJob::from_json(&s.to_json()).unwrap(), s);
        s.outputs = vec!["runs".into()];
        let e = SubmitJob::from_json(&s.to_json()).unwrap_err().to_string();
        assert_eq!(
            e,
            "field 'outputs' needs SubmitJob version 2 (the message says version 1)"
        );
        s.settle_version();
        assert_eq!(s.version, 2);
        assert_eq!(SubmitJob::from_json(&s.to_json()).unwrap(), s);
        let mut m = sample();
        m.max_cost_cents = Some(250);
        assert!(matches!(
            m.validate(),
            Err(ContractError::FieldVersion {
                field: "max_cost_cents",
                ..
            })
        ));
        m.settle_version();
        assert!(m.validate().is_ok());
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
