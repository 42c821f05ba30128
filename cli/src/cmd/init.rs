//! `studio init --stack S`: the `[aws]` settings from a deployed stack.

use crate::backend;
use crate::context::Globals;
use crate::error::{usage, CliError};
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The CloudFormation stack `scripts/deploy` created.
    #[arg(long, value_name = "NAME")]
    pub stack: String,
    /// Its region (default: AWS_REGION or the profile's).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

/// `studio init --stack S`: the `[aws]` settings from the stack's outputs,
/// written into `$STUDIO_HOME/config.toml` (other settings there are kept).
pub(crate) async fn init(g: &Globals, a: InitArgs) -> Result<ExitCode, CliError> {
    let sdk = studio_aws::sdk_config_from_env(a.region.as_deref())
        .await
        .ok_or_else(|| usage("no AWS region: pass --region or set AWS_REGION"))?;
    let stack = studio_aws::stack::Stack::describe(&sdk, &a.stack)
        .await
        .map_err(|e| usage(format!("stack {}: {e}", a.stack)))?;
    let settings = stack.client_settings().map_err(usage)?;
    let file = g.home.join("config.toml");
    let mut aws = toml::Table::new();
    aws.insert("stack".into(), toml::Value::String(stack.name.clone()));
    for (k, v) in &settings {
        aws.insert((*k).into(), toml::Value::String(v.clone()));
    }
    backend::write_config_table(&g.home, |table| {
        table.insert("aws".into(), toml::Value::Table(aws));
    })?;
    for (k, v) in &settings {
        println!("{k:<16} {v}");
    }
    eprintln!(
        "studio: wrote [aws] of stack {} ({}) to {}; `studio doctor` checks it",
        stack.name,
        stack.status,
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
