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
