//! Bringing an attempt's outputs home: `studio pull` and a waiting
//! `studio run` both download through [`pull_outputs`].

use crate::backend::Side;
use crate::error::{usage, CliError};
use anyhow::Context as _;
use std::path::Path;
use studio_core::job::Job;

/// Downloads an attempt's outputs into `dest` (checked, unchanged files
/// kept), with a progress line on a terminal, and says what it wrote: each
/// file on stdout when `list` (`studio pull`), else only the summary (a
/// waiting `run`, whose stdout is the script's).
pub(crate) async fn pull_outputs(
    side: &Side,
    job: &Job,
    attempt: Option<u32>,
    dest: &Path,
    list: bool,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let chosen = match attempt {
        Some(n) => {
            let Some(a) = job.attempts.iter().find(|a| a.number == n) else {
                return Err(usage(format!("job {} has no attempt {n}", job.id)));
            };
            match &a.outputs {
                Some(o) => (n, o.clone()),
                None => {
                    return Err(usage(format!(
                        "attempt {n} of job {} left no outputs{}",
                        job.id,
                        if a.script_ended_at.is_none() { " (yet)" } else { "" }
                    )))
                }
            }
        }
        None => match job.attempts.iter().rev().find_map(|a| a.outputs.clone().map(|o| (a.number, o))) {
            Some(c) => c,
            None => {
                return Err(usage(format!(
                    "job {} has no outputs{}: a script writes them to $STUDIO_OUTPUT_DIR (or names them with --output)",
                    job.id,
                    if job.state.is_terminal() { "" } else { " yet" }
                )))
            }
        },
    };
    let (n, r) = chosen;
    let m =
        studio_core::outputs_store::manifest(side.artifacts(), &job.id, &r, &std::env::temp_dir())
            .await?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0u64;
    let mut count = 0usize;
    let files = m.files.len();
    let mut progress = |p: &studio_core::outputs_store::Pulled| {
        use studio_core::outputs_store::Pulled;
        let size = match p {
            Pulled::Wrote { size, .. } | Pulled::Kept { size, .. } => *size,
        };
        done += size;
        count += 1;
        if tty {
            let width = 30usize;
            let filled = (done * width as u64)
                .checked_div(total)
                .unwrap_or(width as u64) as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {count}/{files} files, {} of {}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                format_bytes(done),
                format_bytes(total)
            );
        }
    };
    let pulled =
        studio_core::outputs_store::pull(side.artifacts(), &job.id, &m, dest, &mut progress)
            .await
            .map_err(|e| CliError::Other(anyhow::anyhow!("pulling outputs of {}: {e}", job.id)))?;
    if tty {
        eprintln!();
    }
    let (mut wrote, mut kept, mut bytes) = (0, 0, 0u64);
    for p in &pulled {
        match p {
            studio_core::outputs_store::Pulled::Wrote { path, size } => {
                wrote += 1;
                bytes += size;
                if list {
                    println!("{}", dest.join(path).display());
                }
            }
            studio_core::outputs_store::Pulled::Kept { .. } => kept += 1,
        }
    }
    eprintln!(
        "studio: outputs of job {} attempt {n} in {}: {wrote} written ({}), {kept} already there",
        job.id,
        dest.display(),
        format_bytes(bytes)
    );
    Ok(())
}

/// Bytes for people: `812 B`, `3.4 MiB`, `1.2 GiB`.
pub(crate) fn format_bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
    }
}

/// Where `studio run` and `studio pull` put outputs, under the current directory.
pub(crate) const PULL_DIR: &str = "studio-out";
