//! `studio driver` (hidden): runs the local control plane's handlers
//! until nothing is left to do, or until SIGTERM (`studio down`), which
//! lets the tick under way finish and then leaves.

use crate::backend::open;
use crate::context::Globals;
use crate::error::CliError;
use anyhow::Context as _;
use std::process::ExitCode;
use std::time::Duration;

/// How often the driver runs the handlers while there is work.
const DRIVE_EVERY: Duration = Duration::from_millis(250);

pub(crate) async fn driver(g: &Globals) -> Result<ExitCode, CliError> {
    // Registered before anything else, so a SIGTERM never kills the driver
    // in the middle of a handler.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        term.recv().await;
        let _ = tx.send(true);
    });
    let be = open(g).await?;
    let served = studio_local::driver::serve_until(&be, DRIVE_EVERY, rx).await?;
    tracing::debug!(?served, "driver leaving");
    Ok(ExitCode::SUCCESS)
}
