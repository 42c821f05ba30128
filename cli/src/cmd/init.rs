//! `studio init --stack S`: the `[aws]` settings from a deployed stack.

use crate::context::Globals;
use crate::error::{usage, CliError};
use anyhow::Context as _;
use clap::Args;
use std::io::Write;
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
    let mut table: toml::Table = match std::fs::read_to_string(&file) {
        Ok(text) => text
            .parse()
            .map_err(|e| usage(format!("{}: {e}", file.display())))?,
        Err(_) => toml::Table::new(),
    };
    let mut aws = toml::Table::new();
    aws.insert("stack".into(), toml::Value::String(stack.name.clone()));
    for (k, v) in &settings {
        aws.insert((*k).into(), toml::Value::String(v.clone()));
    }
    table.insert("aws".into(), toml::Value::Table(aws));
    std::fs::create_dir_all(&g.home)?;
    // Names only, never credentials; still private like the rest of the home.
    let tmp = file.with_extension("toml.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            toml::to_string(&table)
                .context("writing the settings")?
                .as_bytes(),
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
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
