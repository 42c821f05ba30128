//! `studio gc`: remove what ended jobs left under `$STUDIO_HOME`.

use crate::backend::local_if_exists;
use crate::context::Globals;
use crate::error::{usage, CliError};
use clap::Args;
use std::process::ExitCode;
use studio_core::clock::{Clock, SystemClock};
use studio_core::size::format_bytes;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove jobs that ended (and instances that stopped) longer ago than this.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub older_than: String,
}

pub(crate) async fn gc(g: &Globals, a: GcArgs) -> Result<ExitCode, CliError> {
    let retention = humantime::parse_duration(&a.older_than)
        .map_err(|e| usage(format!("--older-than '{}': {e} (e.g. 7d)", a.older_than)))?;
    let Some(be) = local_if_exists(g).await? else {
        eprintln!("studio: nothing to collect in {}", g.home.display());
        return Ok(ExitCode::SUCCESS);
    };
    let r = studio_local::gc::collect(&be, retention, SystemClock.now()).await?;
    let n = |count: u64, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    eprintln!(
        "studio: removed {}, {}, {}, {}, {}; {} freed",
        n(r.jobs as u64, "job", "jobs"),
        n(r.workspaces as u64, "workspace", "workspaces"),
        n(r.instances as u64, "instance", "instances"),
        n(r.pools as u64, "pool", "pools"),
        n(r.dead_letters as u64, "dead letter", "dead letters"),
        format_bytes(r.bytes)
    );
    Ok(ExitCode::SUCCESS)
}
