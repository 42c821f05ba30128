//! `studio logs JOB [--follow]`: a job's output.

use crate::backend::find_job;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::follow::{print_log, tail_until_script_ends, FOLLOW_EVERY};
use clap::Args;
use std::process::ExitCode;
use studio_core::ids::JobId;

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job: String,
    /// Keep printing until the job ends.
    #[arg(long, short)]
    pub follow: bool,
}

pub(crate) async fn logs(g: &Globals, env: &Env, a: LogsArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, job) = find_job(g, env, &id).await?;
    if !a.follow {
        print_log(side.artifacts(), &id, 0).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut offset = 0;
    let mut job = Some(job);
    loop {
        offset += print_log(side.artifacts(), &id, offset).await?;
        match job.filter(|j| j.state.is_terminal()) {
            Some(ended) => {
                tail_until_script_ends(&side, &ended, offset).await?;
                return Ok(ExitCode::SUCCESS);
            }
            None => {
                tokio::time::sleep(FOLLOW_EVERY).await;
                job = side.store().get_job(&id).await?;
                if job.is_none() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}
