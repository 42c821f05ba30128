//! `studio pull JOB [DEST] [--attempt N]`: download a job's outputs.

use crate::backend::find_job;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::outputs::{pull_outputs, PULL_DIR};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use studio_core::ids::JobId;

#[derive(Debug, Args)]
pub struct PullArgs {
    pub job: String,
    /// Where to write them (default: ./studio-out/JOB).
    pub dest: Option<PathBuf>,
    /// One attempt's outputs instead of the last attempt's that left any.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
}

/// `studio pull JOB [DEST] [--attempt N]`.
pub(crate) async fn pull(g: &Globals, env: &Env, a: PullArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, job) = find_job(g, env, &id).await?;
    let dest = a
        .dest
        .unwrap_or_else(|| PathBuf::from(PULL_DIR).join(id.as_str()));
    pull_outputs(&side, &job, a.attempt, &dest, true).await?;
    Ok(ExitCode::SUCCESS)
}
