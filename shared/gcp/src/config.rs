//! The GCP settings ([`GcpConfig`], read from `STUDIO_GCP_*`), the
//! clients' endpoint and credentials (`client!`), and how a Google error
//! becomes a [`PortError`].

/// A google-cloud-rust client builder with the configured endpoint (an
/// emulator or stand-in in tests) and anonymous credentials when asked:
/// `client!(Builder::new(), endpoint: Option<&String>, anonymous: bool)`.
macro_rules! client {
    ($builder:expr, $endpoint:expr, $anonymous:expr) => {{
        let mut b = $builder;
        if let Some(e) = $endpoint {
            b = b.with_endpoint(e.to_string());
        }
        if $anonymous {
            b = b.with_credentials($crate::config::anonymous());
        }
        b
    }};
}
pub(crate) use client;

use google_cloud_gax::error::rpc::Code;
use studio_core::ports::PortError;

/// Where a deployment's GCE pools run. Read from the environment
/// ([`GcpConfig::from_lookup`]) by the functions and the worker, and from
/// `[gcp]` in `config.toml` by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpConfig {
    pub project: String,
    /// The zones the managed instance groups spread over, all in one
    /// region (`STUDIO_GCP_ZONE`: one zone or a comma-separated list). Each
    /// pool is a regional MIG over them with target shape `ANY`, so a zone
    /// out of capacity or quota is ridden out in another. On a worker: its
    /// own VM's zone.
    pub zones: Vec<String>,
    /// The bucket for GCE jobs' workspaces, logs and checkpoints.
    pub bucket: String,
    /// The workers' service account (its email).
    pub service_account: String,
    /// The worker image: `projects/P/global/images/NAME` or `.../family/F`.
    pub image: String,
    /// The image for GPU pools (drivers installed); `None`: [`Self::image`].
    pub gpu_image: Option<String>,
    pub network: String,
    pub subnetwork: Option<String>,
    /// The deployment's name prefix (`STUDIO_PREFIX`), lowercase for GCE.
    pub prefix: String,
    /// Variables the worker's startup script exports: the deployment's
    /// names and the AWS role its web identity is exchanged for. Names,
    /// never secrets.
    pub worker_env: Vec<(String, String)>,
    /// `gs://BUCKET/OBJECT` of the worker binary, and its SHA-256.
    pub worker_binary: Option<(String, String)>,
    /// uv for the workers (it builds jobs' Python environments), installed
    /// beside `studio` the same way; `None`: the image carries it.
    pub uv_binary: Option<(String, String)>,
    /// Endpoints of emulators and stand-ins (tests); `None`: Google's.
    pub pubsub_endpoint: Option<String>,
    pub compute_endpoint: Option<String>,
    pub storage_endpoint: Option<String>,
    /// Anonymous credentials (emulators only).
    pub anonymous: bool,
    /// How the functions reach Google from AWS: a workload identity
    /// federation credential configuration (`gcloud iam workload-identity-
    /// pools create-cred-config ... --aws`; no key in it), checked and made
    /// fit for Lambda ([`lambda_credential_config`]). `None`: Application
    /// Default Credentials (the VM's own account on GCE).
    pub credential_config: Option<serde_json::Value>,
}

/// The environment variables [`GcpConfig::from_lookup`] reads, and what each is.
pub const GCP_KEYS: [(&str, &str); 15] = [
    ("STUDIO_GCP_PROJECT", "project"),
    ("STUDIO_GCP_ZONE", "zone"),
    ("STUDIO_GCP_BUCKET", "bucket"),
    ("STUDIO_GCP_SERVICE_ACCOUNT", "service_account"),
    ("STUDIO_GCP_IMAGE", "image"),
    ("STUDIO_GCP_GPU_IMAGE", "gpu_image"),
    ("STUDIO_GCP_NETWORK", "network"),
    ("STUDIO_GCP_SUBNETWORK", "subnetwork"),
    ("STUDIO_GCP_WORKER_ROLE_ARN", "worker_role_arn"),
    ("STUDIO_GCP_WORKER_BINARY", "worker_binary"),
    ("STUDIO_GCP_UV_BINARY", "uv_binary"),
    ("STUDIO_PUBSUB_ENDPOINT", "pubsub_endpoint"),
    ("STUDIO_COMPUTE_ENDPOINT", "compute_endpoint"),
    ("STUDIO_GCS_ENDPOINT", "storage_endpoint"),
    ("STUDIO_GCP_CREDENTIAL_CONFIG", "credential_config"),
];

impl GcpConfig {
    /// The GCP settings, or `None` when `STUDIO_GCP_PROJECT` is not set
    /// (the deployment runs no GCE pools).
    ///
    /// # Errors
    /// Settings given in part, or a name GCE would refuse.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        prefix: &str,
    ) -> Result<Option<GcpConfig>, String> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let Some(project) = get("STUDIO_GCP_PROJECT") else {
            return Ok(None);
        };
        let need =
            |k: &str| get(k).ok_or_else(|| format!("{k} is required with STUDIO_GCP_PROJECT"));
        // GCE names are lowercase; a CloudFormation stack's name (the
        // prefix) may not be: `Studio-Prod` names `studio-prod-...` here.
        let prefix = &prefix.to_ascii_lowercase();
        let prefix_ok = prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && prefix.starts_with(|c: char| c.is_ascii_lowercase());
        // Group and template names are `<prefix>-<group key>`, at most 63
        // characters; the longest group key is 35.
        if prefix.len() > 27 {
            return Err(format!(
                "STUDIO_PREFIX '{prefix}' is too long for GCE names: at most 27 characters with GCP pools"
            ));
        }
        if !prefix_ok {
            return Err(format!(
                "STUDIO_PREFIX '{prefix}' cannot name GCE resources: use lowercase letters, digits and '-', starting with a letter"
            ));
        }
        let mut worker_env = Vec::new();
        if let Some(arn) = get("STUDIO_GCP_WORKER_ROLE_ARN") {
            worker_env.push(("AWS_ROLE_ARN".to_string(), arn));
        }
        // `gs://BUCKET/OBJECT#SHA256`: a binary the startup script installs.
        let release = |name: &'static str| match get(name) {
            None => Ok(None),
            Some(v) => v
                .rsplit_once('#')
                .filter(|(u, s)| u.starts_with("gs://") && s.len() == 64)
                .map(|(u, s)| Some((u.to_string(), s.to_string())))
                .ok_or_else(|| format!("{name}: expected gs://BUCKET/OBJECT#SHA256")),
        };
        let worker_binary = release("STUDIO_GCP_WORKER_BINARY")?;
        let uv_binary = release("STUDIO_GCP_UV_BINARY")?;
        Ok(Some(GcpConfig {
            zones: zones(&need("STUDIO_GCP_ZONE")?)?,
            bucket: need("STUDIO_GCP_BUCKET")?,
            service_account: need("STUDIO_GCP_SERVICE_ACCOUNT")?,
            image: need("STUDIO_GCP_IMAGE")?,
            gpu_image: get("STUDIO_GCP_GPU_IMAGE"),
            network: get("STUDIO_GCP_NETWORK").unwrap_or_else(|| "global/networks/default".into()),
            subnetwork: get("STUDIO_GCP_SUBNETWORK"),
            prefix: prefix.to_string(),
            worker_env,
            worker_binary,
            uv_binary,
            pubsub_endpoint: get("STUDIO_PUBSUB_ENDPOINT"),
            compute_endpoint: get("STUDIO_COMPUTE_ENDPOINT"),
            storage_endpoint: get("STUDIO_GCS_ENDPOINT"),
            anonymous: get("STUDIO_GCP_ANONYMOUS").is_some_and(|v| v == "1"),
            credential_config: get("STUDIO_GCP_CREDENTIAL_CONFIG")
                .map(|v| lambda_credential_config(&v))
                .transpose()?,
            project,
        }))
    }

    /// Adds the deployment's `KEY=VALUE` lines to the workers' environment,
    /// with the GCE backend and metadata in place of EC2's.
    pub fn add_worker_env(&mut self, lines: &str) {
        for line in lines.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = match k {
                "STUDIO_BACKEND" | "STUDIO_METADATA" => "gce",
                _ => v,
            };
            self.worker_env.retain(|(key, _)| key != k);
            self.worker_env.push((k.to_string(), v.to_string()));
        }
    }

    /// The zones' region (`us-central1-a` → `us-central1`).
    pub fn region(&self) -> &str {
        region_of(&self.zones[0])
    }
}

/// A zone's region: `us-central1-a` → `us-central1`.
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r)
}

/// A workload identity federation credential configuration, checked for
/// what a Lambda function can use: an `external_account` whose subject
/// token comes from AWS. Lambda has no instance metadata service, so an
/// IMDSv2 session token URL (a config made with `--enable-imdsv2`) is
/// dropped: google-cloud-auth would ask it first and fail, and the
/// function's region and credentials are in its environment anyway.
///
/// # Errors
/// Not JSON, not an external account, or not AWS-sourced: what and why.
pub fn lambda_credential_config(text: &str) -> Result<serde_json::Value, String> {
    let key = "STUDIO_GCP_CREDENTIAL_CONFIG";
    let mut v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("{key}: not JSON ({e}); give the file `gcloud iam workload-identity-pools create-cred-config ... --aws` writes"))?;
    if v["type"] != "external_account" {
        return Err(format!(
            "{key}: type {} is not external_account: the functions reach Google by workload identity federation, never with a key",
            v["type"]
        ));
    }
    let env = v["credential_source"]["environment_id"]
        .as_str()
        .unwrap_or_default();
    if !env.starts_with("aws") {
        return Err(format!(
            "{key}: credential_source.environment_id '{env}' is not AWS: make it with --aws"
        ));
    }
    if !v["audience"]
        .as_str()
        .is_some_and(|a| a.contains("/workloadIdentityPools/") && a.contains("/providers/"))
    {
        return Err(format!(
            "{key}: audience {} names no workload identity pool provider",
            v["audience"]
        ));
    }
    if let Some(source) = v["credential_source"].as_object_mut() {
        source.remove("imdsv2_session_token_url");
    }
    Ok(v)
}

/// `STUDIO_GCP_ZONE`: one zone or a comma-separated list, of one region.
fn zones(v: &str) -> Result<Vec<String>, String> {
    let zones: Vec<String> = v
        .split(',')
        .map(|z| z.trim().to_string())
        .filter(|z| !z.is_empty())
        .collect();
    let well_formed = |z: &str| {
        z.split('-').count() == 3
            && z.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if let Some(bad) = zones.iter().find(|z| !well_formed(z)) {
        return Err(format!(
            "STUDIO_GCP_ZONE: '{bad}' is not a zone (e.g. us-central1-a)"
        ));
    }
    let Some(first) = zones.first() else {
        return Err("STUDIO_GCP_ZONE is required with STUDIO_GCP_PROJECT".into());
    };
    if let Some(other) = zones.iter().find(|z| region_of(z) != region_of(first)) {
        return Err(format!(
            "STUDIO_GCP_ZONE: {first} and {other} are in different regions; a pool's group spreads over the zones of one region"
        ));
    }
    Ok(zones)
}

/// The credentials every client uses: anonymous for emulators, else
/// Application Default Credentials (the VM's service account on GCE; on
/// AWS Lambda, a workload identity federation config file named by
/// `GOOGLE_APPLICATION_CREDENTIALS`, which holds no key).
///
/// # Errors
/// No credentials found.
pub fn credentials(
    cfg: &GcpConfig,
) -> Result<google_cloud_auth::credentials::Credentials, PortError> {
    if cfg.anonymous {
        return Ok(anonymous());
    }
    if let Some(config) = &cfg.credential_config {
        return google_cloud_auth::credentials::external_account::Builder::new(config.clone())
            .build()
            .map_err(|e| PortError::backend("gcp", e));
    }
    google_cloud_auth::credentials::Builder::default()
        .build()
        .map_err(|e| PortError::backend("gcp", e))
}

/// Anonymous credentials, for emulators and stand-ins.
pub fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// The service's code for an error: the gRPC/JSON status when there is
/// one, else read from the HTTP status (Compute's errors carry no status
/// name, only `code` and `errors[].reason`).
pub fn code_of(e: &google_cloud_gax::error::Error) -> Option<Code> {
    if let Some(s) = e.status() {
        if s.code != Code::Unknown {
            return Some(s.code);
        }
    }
    Some(match e.http_status_code()? {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => return e.status().map(|s| s.code),
    })
}

/// A port error for a failed call, naming the operation.
pub fn gcp_err(port: &'static str, op: &str, e: google_cloud_gax::error::Error) -> PortError {
    PortError::backend(port, format!("{op}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(extra: &[(&str, &str)]) -> Result<Option<GcpConfig>, String> {
        let base = [
            ("STUDIO_GCP_PROJECT", "p"),
            ("STUDIO_GCP_ZONE", "us-central1-a"),
            ("STUDIO_GCP_BUCKET", "b"),
            ("STUDIO_GCP_SERVICE_ACCOUNT", "w@p.iam.gserviceaccount.com"),
            ("STUDIO_GCP_IMAGE", "projects/p/global/images/i"),
        ];
        let all: Vec<(String, String)> = base
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GcpConfig::from_lookup(
            |k| {
                all.iter()
                    .rev()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            },
            "studio",
        )
    }

    #[test]
    fn an_upper_case_stack_name_gives_lowercase_gce_names() {
        let all = [
            ("STUDIO_GCP_PROJECT", "p"),
            ("STUDIO_GCP_ZONE", "us-central1-a"),
            ("STUDIO_GCP_BUCKET", "b"),
            ("STUDIO_GCP_SERVICE_ACCOUNT", "w@p.iam.gserviceaccount.com"),
            ("STUDIO_GCP_IMAGE", "projects/p/global/images/i"),
        ];
        let lookup = |k: &str| {
            all.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let cfg = GcpConfig::from_lookup(lookup, "Studio-Prod")
            .unwrap()
            .unwrap();
        assert_eq!(cfg.prefix, "studio-prod");
        let e = GcpConfig::from_lookup(lookup, "Studio-Prod-With-A-Very-Long-Name").unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[tokio::test]
    async fn a_credential_config_is_checked_and_made_fit_for_lambda() {
        let made = serde_json::json!({
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/studio/providers/aws",
            "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
            "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/fn@p.iam.gserviceaccount.com:generateAccessToken",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": {
                "environment_id": "aws1",
                "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
                "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
                "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token"
            }
        });
        let fit = lambda_credential_config(&made.to_string()).unwrap();
        assert!(fit["credential_source"]
            .get("imdsv2_session_token_url")
            .is_none());
        assert_eq!(fit["credential_source"]["environment_id"], "aws1");
        // The crate takes it.
        google_cloud_auth::credentials::external_account::Builder::new(fit)
            .build()
            .unwrap();
        let mut key = made.clone();
        key["type"] = "service_account".into();
        assert!(lambda_credential_config(&key.to_string())
            .unwrap_err()
            .contains("never with a key"));
        let mut azure = made.clone();
        azure["credential_source"]["environment_id"] = "".into();
        assert!(lambda_credential_config(&azure.to_string())
            .unwrap_err()
            .contains("--aws"));
        assert!(lambda_credential_config("{")
            .unwrap_err()
            .contains("not JSON"));
        let e = with(&[("STUDIO_GCP_CREDENTIAL_CONFIG", "[]")]).unwrap_err();
        assert!(e.contains("STUDIO_GCP_CREDENTIAL_CONFIG"), "{e}");
    }

    #[test]
    fn zones_are_one_or_several_of_one_region() {
        let one = with(&[]).unwrap().unwrap();
        assert_eq!((one.zones.len(), one.region()), (1, "us-central1"));
        let three = with(&[(
            "STUDIO_GCP_ZONE",
            "us-central1-a, us-central1-b,us-central1-f",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(
            three.zones,
            ["us-central1-a", "us-central1-b", "us-central1-f"]
        );
        let e = with(&[("STUDIO_GCP_ZONE", "us-central1-a,europe-west1-b")]).unwrap_err();
        assert!(e.contains("different regions"), "{e}");
        let e = with(&[("STUDIO_GCP_ZONE", "us-central1")]).unwrap_err();
        assert!(e.contains("not a zone"), "{e}");
    }

    #[test]
    fn the_worker_binaries_are_a_gcs_url_and_a_checksum() {
        let sha = "e".repeat(64);
        let cfg = with(&[(
            "STUDIO_GCP_UV_BINARY",
            &format!("gs://b/releases/uv-x#{sha}"),
        )])
        .unwrap()
        .unwrap();
        assert_eq!(
            cfg.uv_binary,
            Some(("gs://b/releases/uv-x".to_string(), sha.clone()))
        );
        assert_eq!(cfg.worker_binary, None);
        for bad in ["https://b/uv#", "gs://b/uv", "gs://b/uv#abc"] {
            let e = with(&[("STUDIO_GCP_UV_BINARY", bad)]).unwrap_err();
            assert_eq!(
                e, "STUDIO_GCP_UV_BINARY: expected gs://BUCKET/OBJECT#SHA256",
                "{bad}"
            );
        }
    }
}
