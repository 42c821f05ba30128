//! `studio driver` (hidden): runs the local control plane's handlers
//! until nothing is left to do.

use crate::backend::open;
use crate::context::Globals;
use crate::error::CliError;
use std::process::ExitCode;
use std::time::Duration;

/// How often the driver runs the handlers while there is work.
const DRIVE_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn driver(g: &Globals) -> Result<ExitCode, CliError> {
    let be = open(g).await?;
    let served = studio_local::driver::serve(&be, DRIVE_EVERY).await?;
    tracing::debug!(?served, "driver leaving");
    Ok(ExitCode::SUCCESS)
}
