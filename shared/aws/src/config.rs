//! The AWS deployment's configuration: names of the tables, queues and
//! bucket, the worker image and network. Binaries read it from the
//! environment in `main` ([`AwsConfig::from_lookup`] with `std::env::var`);
//! a missing variable fails at start and names itself.

use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    pub region: String,
    /// Prefix of every resource Studio creates (groups, templates).
    pub prefix: String,
    pub jobs_table: String,
    pub pools_table: String,
    pub submit_queue: String,
    /// Queue the EventBridge interruption rules deliver to.
    pub interruption_queue: Option<String>,
    pub bucket: String,
    pub worker_ami: String,
    /// The image of arm64 (Graviton) pools; without it such jobs are refused.
    pub worker_ami_arm64: Option<String>,
    /// A GPU-ready image (drivers baked in) for pools that ask for GPUs.
    pub worker_gpu_ami: Option<String>,
    pub worker_instance_profile: Option<String>,
    /// SHA-256 of the `studio` binaries workers install from
    /// `s3://<bucket>/releases/studio-<sha256>`, one per machine architecture.
    pub studio_sha256_x86_64: Option<String>,
    pub studio_sha256_arm64: Option<String>,
    /// The same for uv (`releases/uv-<sha256>`), which builds jobs' Python
    /// environments on the machine.
    pub uv_sha256_x86_64: Option<String>,
    pub uv_sha256_arm64: Option<String>,
    pub subnets: Vec<String>,
    pub availability_zones: Vec<String>,
    pub max_workers: u32,
    pub pool_grace: Duration,
    pub max_attempts: u32,
    /// An attempt whose worker wrote no heartbeat for this long runs again.
    pub heartbeat_timeout: Duration,
}

/// Longest `STUDIO_PREFIX`: the longest name derived from it is a pool's
/// dead-letter queue, `<prefix>-work-<pool key>-g<generation>-dlq`, and SQS
/// names stop at 80 characters (pool keys are at most 28 characters:
/// `ec2spot-1024c-64g-<10 hex>`; generations at most 10 digits).
pub const MAX_PREFIX: usize = 80 - "-work-".len() - 28 - "-g4294967295".len() - "-dlq".len();

impl AwsConfig {
    /// The environment a worker machine runs `studio worker` with: every
    /// setting above (names only, no credentials), plus the AWS backend and
    /// EC2 metadata for interruption notices.
    pub fn worker_env(&self) -> String {
        let mut lines = vec![
            "STUDIO_BACKEND=aws".to_string(),
            "STUDIO_METADATA=ec2".to_string(),
            format!("AWS_REGION={}", self.region),
            format!("STUDIO_PREFIX={}", self.prefix),
            format!("STUDIO_JOBS_TABLE={}", self.jobs_table),
            format!("STUDIO_POOLS_TABLE={}", self.pools_table),
            format!("STUDIO_SUBMIT_QUEUE={}", self.submit_queue),
            format!("STUDIO_ARTIFACT_BUCKET={}", self.bucket),
            format!("STUDIO_WORKER_AMI={}", self.worker_ami),
            format!("STUDIO_SUBNETS={}", self.subnets.join(",")),
            format!(
                "STUDIO_AVAILABILITY_ZONES={}",
                self.availability_zones.join(",")
            ),
            format!("STUDIO_MAX_WORKERS={}", self.max_workers),
            format!("STUDIO_MAX_ATTEMPTS={}", self.max_attempts),
        ];
        if let Some(p) = &self.worker_instance_profile {
            lines.push(format!("STUDIO_WORKER_INSTANCE_PROFILE={p}"));
        }
        if let Some(a) = &self.worker_ami_arm64 {
            lines.push(format!("STUDIO_WORKER_AMI_ARM64={a}"));
        }
        if let Some(g) = &self.worker_gpu_ami {
            lines.push(format!("STUDIO_WORKER_GPU_AMI={g}"));
        }
        lines.join("\n")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name}: {why}")]
    Invalid { name: &'static str, why: String },
}

/// Every variable, with what it is for (the table in docs/aws.md is this list).
pub const VARIABLES: &[(&str, &str)] = &[
    ("AWS_REGION", "region of everything (set by Lambda)"),
    (
        "STUDIO_PREFIX",
        "prefix of created groups and templates (default: studio)",
    ),
    ("STUDIO_JOBS_TABLE", "DynamoDB jobs table"),
    ("STUDIO_POOLS_TABLE", "DynamoDB pools table"),
    ("STUDIO_SUBMIT_QUEUE", "SQS queue of SubmitJob messages"),
    (
        "STUDIO_INTERRUPTION_QUEUE",
        "SQS queue the EventBridge EC2 rules feed (interruption function)",
    ),
    ("STUDIO_ARTIFACT_BUCKET", "S3 bucket of workspaces and logs"),
    ("STUDIO_WORKER_AMI", "image of worker machines (x86_64)"),
    (
        "STUDIO_WORKER_AMI_ARM64",
        "image of arm64 worker machines (optional: without it, --arch arm64 jobs are refused)",
    ),
    (
        "STUDIO_WORKER_GPU_AMI",
        "GPU-ready image (drivers baked in) for GPU pools (default: STUDIO_WORKER_AMI)",
    ),
    (
        "STUDIO_BINARY_SHA256_X86_64",
        "SHA-256 of the x86_64 studio binary in s3://BUCKET/releases/ (optional: else the image carries it)",
    ),
    (
        "STUDIO_BINARY_SHA256_ARM64",
        "SHA-256 of the arm64 studio binary in s3://BUCKET/releases/ (optional: else the image carries it)",
    ),
    (
        "STUDIO_UV_SHA256_X86_64",
        "SHA-256 of the x86_64 uv binary in s3://BUCKET/releases/ (optional: else the image carries it, or jobs with dependency files fail saying so)",
    ),
    (
        "STUDIO_UV_SHA256_ARM64",
        "SHA-256 of the arm64 uv binary in s3://BUCKET/releases/ (optional: as for x86_64)",
    ),
    (
        "STUDIO_WORKER_INSTANCE_PROFILE",
        "instance profile of worker machines (optional)",
    ),
    (
        "STUDIO_SUBNETS",
        "comma-separated subnets for worker groups (or STUDIO_AVAILABILITY_ZONES)",
    ),
    (
        "STUDIO_AVAILABILITY_ZONES",
        "comma-separated zones, when no subnets are given",
    ),
    (
        "STUDIO_MAX_WORKERS",
        "cap of an auto-sized pool (default: 20)",
    ),
    (
        "STUDIO_POOL_GRACE",
        "idle time before a pool is deleted (default: 10m)",
    ),
    (
        "STUDIO_MAX_ATTEMPTS",
        "attempts before an interruption fails a job (default: 3)",
    ),
    (
        "STUDIO_HEARTBEAT_TIMEOUT",
        "a running attempt without a heartbeat for this long runs again (default: 2m)",
    ),
];

impl AwsConfig {
    /// # Errors
    /// [`ConfigError`] naming the first missing or invalid variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AwsConfig, ConfigError> {
        let req = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let list = |name: &str| -> Vec<String> {
            get(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let num = |name: &'static str, default: u32| -> Result<u32, ConfigError> {
            get(name).map_or(Ok(default), |v| {
                v.parse().map_err(|_| ConfigError::Invalid {
                    name,
                    why: format!("'{v}' is not a whole number"),
                })
            })
        };
        let dur = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            get(name).map_or(Ok(Duration::from_secs(default)), |v| {
                humantime::parse_duration(&v).map_err(|e| ConfigError::Invalid {
                    name,
                    why: e.to_string(),
                })
            })
        };
        // A checksum goes into every worker's user-data: a wrong one is a
        // fleet of machines that never start a worker, so refuse it here.
        let sha256 = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match get(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()) => {
                    Ok(Some(v.to_ascii_lowercase()))
                }
                Some(v) => Err(ConfigError::Invalid {
                    name,
                    why: format!("'{v}' is not a SHA-256 (64 hex digits)"),
                }),
            }
        };
        let grace = dur("STUDIO_POOL_GRACE", 600)?;
        let prefix = get("STUDIO_PREFIX").unwrap_or_else(|| "studio".into());
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                name: "STUDIO_PREFIX",
                why: format!(
                    "'{prefix}': use 1 to {MAX_PREFIX} letters, digits, '-' or '_' (every queue, group and template name starts with it; SQS names stop at 80 characters)"
                ),
            });
        }
        let cfg = AwsConfig {
            region: req("AWS_REGION")?,
            prefix,
            jobs_table: req("STUDIO_JOBS_TABLE")?,
            pools_table: req("STUDIO_POOLS_TABLE")?,
            submit_queue: req("STUDIO_SUBMIT_QUEUE")?,
            interruption_queue: get("STUDIO_INTERRUPTION_QUEUE"),
            bucket: req("STUDIO_ARTIFACT_BUCKET")?,
            worker_ami: req("STUDIO_WORKER_AMI")?,
            worker_ami_arm64: get("STUDIO_WORKER_AMI_ARM64").filter(|v| !v.is_empty()),
            worker_gpu_ami: get("STUDIO_WORKER_GPU_AMI"),
            worker_instance_profile: get("STUDIO_WORKER_INSTANCE_PROFILE"),
            studio_sha256_x86_64: sha256("STUDIO_BINARY_SHA256_X86_64")?,
            studio_sha256_arm64: sha256("STUDIO_BINARY_SHA256_ARM64")?,
            uv_sha256_x86_64: sha256("STUDIO_UV_SHA256_X86_64")?,
            uv_sha256_arm64: sha256("STUDIO_UV_SHA256_ARM64")?,
            subnets: list("STUDIO_SUBNETS"),
            availability_zones: list("STUDIO_AVAILABILITY_ZONES"),
            max_workers: num("STUDIO_MAX_WORKERS", 20)?,
            pool_grace: grace,
            max_attempts: num("STUDIO_MAX_ATTEMPTS", 3)?,
            heartbeat_timeout: dur("STUDIO_HEARTBEAT_TIMEOUT", 120)?,
        };
        if cfg.subnets.is_empty() && cfg.availability_zones.is_empty() {
            return Err(ConfigError::Missing(
                "STUDIO_SUBNETS (or STUDIO_AVAILABILITY_ZONES)",
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("AWS_REGION", "us-east-1"),
        ("STUDIO_JOBS_TABLE", "jobs"),
        ("STUDIO_POOLS_TABLE", "pools"),
        ("STUDIO_SUBMIT_QUEUE", "submit"),
        ("STUDIO_ARTIFACT_BUCKET", "bucket"),
        ("STUDIO_WORKER_AMI", "ami-1"),
        ("STUDIO_SUBNETS", "subnet-a, subnet-b"),
    ];

    #[test]
    fn a_full_environment_parses_with_defaults() {
        let c = AwsConfig::from_lookup(env(FULL)).unwrap();
        assert_eq!(c.subnets, ["subnet-a", "subnet-b"]);
        assert_eq!(
            (c.prefix.as_str(), c.max_workers, c.max_attempts),
            ("studio", 20, 3)
        );
        assert_eq!(c.pool_grace, Duration::from_secs(600));
    }

    #[test]
    fn a_missing_or_bad_variable_names_itself() {
        for (i, (name, _)) in FULL.iter().enumerate() {
            let mut partial = FULL.to_vec();
            partial.remove(i);
            let e = AwsConfig::from_lookup(env(&partial))
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e}");
        }
        let mut bad = FULL.to_vec();
        bad.push(("STUDIO_MAX_WORKERS", "many"));
        assert_eq!(
            AwsConfig::from_lookup(env(&bad)).unwrap_err().to_string(),
            "environment variable STUDIO_MAX_WORKERS: 'many' is not a whole number"
        );
        for prefix in ["", "a".repeat(MAX_PREFIX + 1).as_str(), "my prefix", "a/b"] {
            let mut bad = FULL.to_vec();
            bad.push(("STUDIO_PREFIX", prefix));
            let e = AwsConfig::from_lookup(env(&bad)).unwrap_err().to_string();
            assert!(e.starts_with("environment variable STUDIO_PREFIX: "), "{e}");
        }
        let longest = "p".repeat(MAX_PREFIX);
        let mut ok = FULL.to_vec();
        ok.push(("STUDIO_PREFIX", longest.as_str()));
        let c = AwsConfig::from_lookup(env(&ok)).unwrap();
        // The longest name Studio derives from it fits SQS's 80 characters.
        let dlq = format!(
            "{}-work-ec2spot-1024c-64g-0123456789-g4294967295-dlq",
            c.prefix
        );
        assert_eq!(dlq.len(), 80);
    }
}

/// What a client (the CLI) needs to submit and follow jobs on AWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub region: String,
    pub jobs_table: String,
    pub pools_table: String,
    pub submit_queue: String,
    pub bucket: String,
}

/// The client settings' names: environment variable, and key in the `[aws]`
/// table of `$STUDIO_HOME/config.toml`.
pub const CLIENT_KEYS: &[(&str, &str)] = &[
    ("AWS_REGION", "region"),
    ("STUDIO_JOBS_TABLE", "jobs_table"),
    ("STUDIO_POOLS_TABLE", "pools_table"),
    ("STUDIO_SUBMIT_QUEUE", "submit_queue"),
    ("STUDIO_ARTIFACT_BUCKET", "artifact_bucket"),
];

impl ClientConfig {
    /// `Ok(None)` when no Studio AWS setting is given at all.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] when some are given but not all.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ClientConfig>, ConfigError> {
        if CLIENT_KEYS[1..].iter().all(|(k, _)| get(k).is_none()) {
            return Ok(None);
        }
        let req = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        Ok(Some(ClientConfig {
            region: req("AWS_REGION")?,
            jobs_table: req("STUDIO_JOBS_TABLE")?,
            pools_table: req("STUDIO_POOLS_TABLE")?,
            submit_queue: req("STUDIO_SUBMIT_QUEUE")?,
            bucket: req("STUDIO_ARTIFACT_BUCKET")?,
        }))
    }
}
