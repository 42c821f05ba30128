//! Before the script starts: the attempt's directories, the workspace
//! unpacked, inputs fetched, the last checkpoint restored, the Python
//! environment built, and the attempt handed to the job's user.

use crate::job::Job;
use crate::ports::ArtifactStore;
use crate::worker::collect::{fingerprint, Saved};
use crate::worker::config::WorkerConfig;
pub(crate) use crate::worker::jobfs::AttemptDirs;
use crate::worker::liveness::Seen;
use crate::worker::pyenv::{python_for, EnvRequest};
use sha2::Digest;
use std::path::PathBuf;

/// Everything before the script starts: the workspace unpacked, the inputs
/// fetched, the directories made, the recorded checkpoint restored (noted
/// in `saved`), the attempt handed to the job's user, and the Python
/// environment ([`crate::worker::pyenv`]). Returns the python to run.
///
/// # Errors
/// Why the attempt cannot start, for its failure reason.
pub(crate) async fn prepare(
    artifacts: &dyn ArtifactStore,
    cfg: &WorkerConfig,
    ids: Option<(u32, u32)>,
    job: &Job,
    dirs: &AttemptDirs,
    saved: &mut Saved,
    seen: tokio::sync::watch::Receiver<Seen>,
) -> Result<PathBuf, String> {
    let id = &job.id;
    let (ws, ckpt) = (&dirs.workspace, &dirs.checkpoints);
    let prepared = async {
        fresh(dirs, ids).map_err(|e| format!("{}: {e}", dirs.attempt.display()))?;
        let bytes = artifacts
            .get_workspace(&job.spec.workspace)
            .await
            .map_err(|e| e.to_string())?;
        crate::workspace::unpack(&bytes, ws).map_err(|e| e.to_string())?;
        for i in &job.spec.inputs {
            let Some(src) = &cfg.inputs else {
                return Err(format!(
                    "input {}: this worker has no way to fetch it",
                    i.url
                ));
            };
            let dest = ws.join(&i.path);
            let got = src
                .fetch(&i.url, &dest)
                .await
                .map_err(|e| format!("input {}: {e}", i.url))?;
            let line = format!(
                "[studio] input {} -> {}: {} file(s), {} bytes\n",
                i.url, i.path, got.files, got.bytes
            );
            let _ = artifacts.append_log(id, line.as_bytes()).await;
        }
        std::fs::create_dir_all(ckpt).map_err(|e| format!("checkpoint dir: {e}"))?;
        std::fs::create_dir_all(&dirs.outputs).map_err(|e| format!("output dir: {e}"))?;
        // The job's own TMPDIR: nothing in the machine's shared /tmp is needed.
        std::fs::create_dir_all(dirs.attempt.join("tmp")).map_err(|e| format!("tmp dir: {e}"))?;
        // The checkpoint the record names, so the script resumes instead of
        // starting over. Only a recorded one is fetched: under least
        // privilege a probe for a missing key is a 403, not a "none".
        if let Some(c) = &job.checkpoint {
            let tar = artifacts
                .get_checkpoint(id, c)
                .await
                .map_err(|e| format!("checkpoint of attempt {}: {e}", c.attempt))?;
            let sha = hex::encode(sha2::Sha256::digest(&tar));
            if sha != c.sha256 {
                return Err(format!(
                    "checkpoint of attempt {} is corrupt (sha256 {sha}, recorded {})",
                    c.attempt, c.sha256
                ));
            }
            crate::workspace::unpack(&tar, ckpt).map_err(|e| format!("checkpoint: {e}"))?;
            saved.sha256 = Some(sha);
        }
        saved.fingerprint =
            Some(fingerprint(ckpt, None).map_err(|e| format!("checkpoint dir: {e}"))?);
        Ok::<(), String>(())
    }
    .await;
    if let Err(why) = prepared {
        return Err(format!("workspace: {why}"));
    }
    // What the environment is built from is read now, while the workspace
    // is root's and, as unpacked, holds no link; then the attempt is the
    // job user's, who builds it.
    let wanted = EnvRequest::of(cfg, job.spec.python.as_deref(), ws)
        .map_err(|why| format!("python environment: {why}"))?;
    hand_over(ids, dirs)?;
    python_for(artifacts, cfg, ids, job, wanted, ws, seen)
        .await
        .map_err(|why| format!("python environment: {why}"))
}

/// The attempt starts from nothing: whatever an earlier run of this
/// attempt on this machine left (a worker that died) is removed, never
/// followed (std's `remove_dir_all` does not follow links), and the job's
/// directory and the work root are made traversable but not listable by
/// jobs' users.
fn fresh(dirs: &AttemptDirs, ids: Option<(u32, u32)>) -> std::io::Result<()> {
    for d in [&dirs.attempt, &dirs.scratch] {
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::create_dir_all(&dirs.attempt)?;
    std::fs::create_dir_all(&dirs.scratch)?;
    if ids.is_some() {
        use std::os::unix::fs::PermissionsExt;
        // Jobs' users pass through the work root and the job's directory
        // to their own attempt, and list neither.
        if let Some(root) = dirs.job.parent() {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
        }
        std::fs::set_permissions(&dirs.job, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(&dirs.scratch, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The attempt's directory handed to the attempt's user (where scripts run
/// as another user): every entry theirs, private (`0700`/`0600`, execute
/// bits kept).
///
/// # Errors
/// Why it could not be, for the attempt's failure reason.
fn hand_over(ids: Option<(u32, u32)>, dirs: &AttemptDirs) -> Result<(), String> {
    if let Some((uid, gid)) = ids {
        crate::worker::jobfs::Dir::open(&dirs.attempt)
            .and_then(|d| d.give(uid, gid, &|dir, m| if dir { 0o700 } else { m & 0o700 }))
            .map_err(|e| format!("handing {} to uid {uid}: {e}", dirs.attempt.display()))?;
    }
    Ok(())
}

/// After the attempt (where scripts run as another user): the attempt's
/// directories go, once its files are collected.
pub(crate) fn remove(dirs: &AttemptDirs) {
    let _ = std::fs::remove_dir_all(&dirs.attempt);
    let _ = std::fs::remove_dir_all(&dirs.scratch);
    let _ = std::fs::remove_dir(&dirs.job);
}
