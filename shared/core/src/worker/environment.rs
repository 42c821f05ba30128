//! Before the script starts: the attempt's directories, the workspace
//! unpacked, inputs fetched, the last checkpoint restored, the Python
//! environment built, and the attempt handed to the job's user.

use crate::ids::JobId;
use crate::job::Job;
use crate::ports::ArtifactStore;
use crate::worker::collect::{fingerprint, Saved};
use crate::worker::config::WorkerConfig;
use crate::worker::liveness::Seen;
use crate::worker::pyenv::{python_for, EnvRequest};
use sha2::Digest;
use std::path::PathBuf;

/// Where one attempt's files live on this machine: under the work root,
/// `JOB/attempt-N/{workspace,checkpoints,outputs}`.
pub(crate) struct AttemptDirs {
    pub(crate) attempt: PathBuf,
    pub(crate) workspace: PathBuf,
    pub(crate) checkpoints: PathBuf,
    pub(crate) outputs: PathBuf,
}

impl AttemptDirs {
    pub(crate) fn new(cfg: &WorkerConfig, id: &JobId, attempt: u32) -> AttemptDirs {
        let dir = cfg
            .work_root
            .join(id.as_str())
            .join(format!("attempt-{attempt}"));
        AttemptDirs {
            workspace: dir.join("workspace"),
            checkpoints: dir.join("checkpoints"),
            outputs: dir.join("outputs"),
            attempt: dir,
        }
    }
}

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
    job: &Job,
    dirs: &AttemptDirs,
    saved: &mut Saved,
    seen: tokio::sync::watch::Receiver<Seen>,
) -> Result<PathBuf, String> {
    let id = &job.id;
    let (ws, ckpt) = (&dirs.workspace, &dirs.checkpoints);
    let prepared = async {
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
        saved.fingerprint = Some(fingerprint(ckpt).map_err(|e| format!("checkpoint dir: {e}"))?);
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
    hand_over(cfg, dirs)?;
    python_for(artifacts, cfg, id, &job.spec.owner, wanted, ws, seen)
        .await
        .map_err(|why| format!("python environment: {why}"))
}

/// The attempt's directory handed to the job's user, when the worker runs
/// scripts as another user.
///
/// # Errors
/// Why it could not be, for the attempt's failure reason.
fn hand_over(cfg: &WorkerConfig, dirs: &AttemptDirs) -> Result<(), String> {
    if let Some((uid, gid)) = cfg.run_as {
        chown_tree(&dirs.attempt, uid, gid)
            .map_err(|e| format!("handing {} to uid {uid}: {e}", dirs.attempt.display()))?;
    }
    Ok(())
}

/// Gives `dir` and everything under it to `uid:gid` (symlinks themselves,
/// never their targets), contents before their directory: while root is
/// inside a directory it is still root's, so the job's user (whose earlier
/// processes may be alive) cannot swap an entry for a link under it.
fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_tree(&e.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
        }
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
}
