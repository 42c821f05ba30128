//! `studio doctor`: one line per check of the configured deployment.

use crate::backend;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use clap::Args;
use std::process::ExitCode;
use studio_core::plan::CatalogPlanner;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The stack to check against (default: the one `studio init` recorded).
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
}

/// `studio doctor`: one line per check of the configured deployment (and of
/// its Google project, when it has GCE pools); exit 1 when any fails.
pub(crate) async fn doctor(g: &Globals, env: &Env, a: DoctorArgs) -> Result<ExitCode, CliError> {
    let cfg = backend::aws_settings(&g.home, env)?.ok_or_else(|| {
        usage(format!(
            "no AWS deployment configured: run `studio init --stack NAME` (writes {})",
            g.home.join("config.toml").display()
        ))
    })?;
    let stack = match a.stack.or_else(|| backend::configured_stack(&g.home)) {
        Some(s) => s,
        None => {
            return Err(usage(
                "which stack? pass --stack NAME (or run `studio init --stack NAME`)",
            ))
        }
    };
    let sdk = studio_aws::sdk_config(&cfg.region).await;
    let shipped = vec![CatalogPlanner::shipped().ec2.region.clone()];
    let mut checks = studio_aws::stack::doctor(&sdk, &cfg, &stack, &shipped).await;
    checks.extend(crate::cmd::gcp::doctor_checks(env, &sdk, &stack).await);
    let mut failed = false;
    for c in &checks {
        match &c.result {
            Ok(m) | Err(m) if c.skipped => println!("skip  {:<16} {m}", c.what),
            Err(m) if c.warning => println!("warn  {:<16} {m}", c.what),
            Ok(m) => println!("ok    {:<16} {m}", c.what),
            Err(m) => {
                failed = true;
                println!("FAIL  {:<16} {m}", c.what);
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
