//! What every command is given: the process environment `main` read
//! ([`Env`]) and the global flags resolved against it ([`Globals`]).

use std::path::PathBuf;
use studio_core::handlers::Settings;

/// What `main` read from the process environment.
pub struct Env {
    pub user: String,
    pub cores: u32,
    pub default_home: Option<PathBuf>,
    pub lock_fd: Option<i32>,
    /// The `STUDIO_*` and `AWS_*` environment variables.
    pub vars: std::collections::HashMap<String, String>,
    /// What a worker hands to uv when it builds a job's environment
    /// ([`is_uv_setting`]), sorted.
    pub uv_vars: std::collections::BTreeMap<String, String>,
}

/// The variables uv reads that a build may need: its own (`UV_*`), the
/// proxies, the CA bundle, and `PATH` (where uv finds interpreters).
pub fn is_uv_setting(name: &str) -> bool {
    name.starts_with("UV_")
        || matches!(
            name.to_ascii_uppercase().as_str(),
            "PATH"
                | "HTTP_PROXY"
                | "HTTPS_PROXY"
                | "ALL_PROXY"
                | "NO_PROXY"
                | "SSL_CERT_FILE"
                | "SSL_CERT_DIR"
        )
}

pub(crate) struct Globals {
    pub(crate) home: PathBuf,
    pub(crate) settings: Settings,
    pub(crate) exe: PathBuf,
    /// The global flags as given, handed on to a driver this command starts.
    pub(crate) pool_grace: String,
    pub(crate) max_workers: Option<u32>,
    pub(crate) max_attempts: u32,
}
