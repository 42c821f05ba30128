//! `studio submit --file F`: send a prepared SubmitJob (JSON).

use crate::backend::{send, side_for};
use crate::context::{Env, Globals};
use crate::error::{usage, CliError};
use crate::request::{pack_workspace, planner};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use studio_core::contract::SubmitJob;
use studio_core::plan::Planner;
use studio_core::resources::Cloud;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The SubmitJob, as JSON (the contract: docs/submit-contract.md); `-` reads stdin.
    /// Its `workspace` is either the stored tarball's reference
    /// (`{"sha256", "bytes"}`) or a directory (a string, relative to the
    /// file's directory), which is packed and uploaded.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

/// `studio submit --file F`: a prepared SubmitJob, validated as every entry
/// point validates it, its workspace directory (if it names one) packed and
/// uploaded, sent; prints the job id.
pub(crate) async fn submit(g: &Globals, env: &Env, a: SubmitArgs) -> Result<ExitCode, CliError> {
    let (text, base) = if a.file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        (t, std::env::current_dir()?)
    } else {
        let t = std::fs::read_to_string(&a.file)
            .map_err(|e| usage(format!("--file {}: {e}", a.file.display())))?;
        let dir = a
            .file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(std::env::current_dir, |d| Ok(d.to_path_buf()))?;
        (t, dir)
    };
    let what = a.file.display().to_string();
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("{what}: not JSON: {e}")))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(usage(format!("{what}: a SubmitJob is a JSON object")));
    };
    // The owner is who submits, unless the file says.
    fields
        .entry("owner")
        .or_insert_with(|| serde_json::Value::String(env.user.clone()));
    // A directory to upload: packed now, sent as its reference.
    let dir = match fields.get("workspace") {
        Some(serde_json::Value::String(d)) => {
            let dir = base.join(d);
            if !dir.is_dir() {
                return Err(usage(format!(
                    "{what}: workspace '{d}' is not a directory (relative to {})",
                    base.display()
                )));
            }
            fields.insert(
                "workspace".into(),
                serde_json::json!({"sha256": "0".repeat(64), "bytes": 0}),
            );
            Some(dir)
        }
        _ => None,
    };
    let mut spec =
        SubmitJob::from_json(&value.to_string()).map_err(|e| usage(format!("{what}: {e}")))?;
    planner(&g.home, spec.region.as_deref(), None)?
        .plan(&spec)
        .map_err(|e| usage(format!("{what}: {e}")))?;
    if spec.cloud == Cloud::Local {
        if let Some(asked) = spec
            .num_workers
            .filter(|n| *n > g.settings.max_auto_workers)
        {
            return Err(usage(format!(
                "{what}: num_workers {asked} is above this machine's cap of {} (STUDIO_MAX_WORKERS)",
                g.settings.max_auto_workers
            )));
        }
    }
    let side = side_for(g, env, spec.cloud).await?;
    if let Some(dir) = dir {
        let tarball = pack_workspace(g, &dir.canonicalize()?)?;
        spec.workspace = side.artifacts().put_workspace(&tarball).await?;
    }
    let id = send(g, env, &side, &mut spec).await?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
