//! `studio cancel JOB`: cancel a queued or running job.

use crate::backend::find_job;
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::follow::FOLLOW_EVERY;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::clock::SystemClock;
use studio_core::handlers;
use studio_core::handlers::CancelOutcome;
use studio_core::ids::JobId;

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub job: String,
}

pub(crate) async fn cancel(g: &Globals, env: &Env, a: CancelArgs) -> Result<ExitCode, CliError> {
    let id = JobId::new(a.job).map_err(usage)?;
    let (side, _) = find_job(g, env, &id).await?;
    let by = format!("cli:{}", env.user);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match handlers::cancel(side.store(), &SystemClock, &id, &by).await? {
            CancelOutcome::Cancelled => {
                eprintln!("studio: job {id} cancelled");
                return Ok(ExitCode::SUCCESS);
            }
            CancelOutcome::AlreadyEnded(s) => {
                eprintln!("studio: job {id} already ended: {s}");
                return Ok(ExitCode::SUCCESS);
            }
            CancelOutcome::NotFound => return Err(usage(format!("no job '{id}'"))),
            CancelOutcome::Busy if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
            CancelOutcome::Busy => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "job {id} is being requeued; try again"
                )))
            }
        }
    }
}
