//! After the script: checkpoints and outputs saved, the end recorded
//! (finished, failed), or the job handed back to run elsewhere.

use crate::clock::Timestamp;
use crate::handlers::{mutate_job, requeue, Ctx, Step};
use crate::ids::{InstanceId, JobId};
use crate::job::{CheckpointRef, Job, JobState};
use crate::outputs::OutputsRef;
use crate::ports::ArtifactStore;
use crate::resources::Cloud;
use crate::worker::config::CHECKPOINT_LIMIT;
use crate::worker::jobfs::{AttemptDirs, Dir};
use sha2::Digest;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Default)]
pub(crate) struct RunEnd {
    pub(crate) preempted: bool,
}

/// The machine is going away: the job runs again elsewhere at once.
///
/// Except when that would mean moving it to an on-demand pool (a spot job
/// out of attempts with `--fallback-on-demand`): workers never create fleet
/// resources, so the attempt is left to the control plane, which requeues
/// it when the machine's `shutting-down` event arrives or its heartbeat
/// stops.
pub async fn hand_back(ctx: &Ctx, job: &Job, attempt: u32, why: &str, me: &str) {
    let spot = matches!(job.plan.cloud, Cloud::Ec2spot | Cloud::Gcspot);
    if spot && job.spec.fallback_on_demand && attempt >= ctx.settings.max_attempts.max(1) {
        info!(job_id = %job.id, "out of spot attempts; the control plane moves the job to on-demand");
        return;
    }
    match requeue(ctx, &job.id, attempt, why, me).await {
        Ok(r) => info!(job_id = %job.id, outcome = ?r, "job handed back"),
        Err(e) => {
            warn!(job_id = %job.id, error = %e, "hand-back failed; the sweep requeues it when the heartbeat stops")
        }
    }
}

/// What the worker knows of its attempt's checkpoint directory.
#[derive(Default)]
pub(crate) struct Saved {
    /// The directory's fingerprint when it was last uploaded, or when the
    /// attempt started (empty, or as restored): unchanged means nothing to save.
    pub(crate) fingerprint: Option<u64>,
    /// The hash of the last checkpoint this attempt stored.
    pub(crate) sha256: Option<String>,
}

/// Uploads the checkpoint directory if it changed since the last upload and
/// records it on the job. Change is detected from file names, sizes and
/// modification times (cheap: no file is read); packing runs off the
/// runtime's threads, so a large checkpoint never starves the heartbeat.
/// The script is still running and owns the directory: it is read through
/// descriptors, never through a link ([`crate::worker::jobfs`]), so a file
/// swapped for one mid-pack is left out, not followed.
pub(crate) async fn sync_checkpoint(
    ctx: &Ctx,
    artifacts: &dyn ArtifactStore,
    id: &JobId,
    attempt: u32,
    dir: &std::path::Path,
    owner: Option<u32>,
    saved: &mut Saved,
) {
    let d = dir.to_path_buf();
    let Ok(Ok(fp)) = tokio::task::spawn_blocking(move || fingerprint(&d, owner)).await else {
        return;
    };
    if saved.fingerprint == Some(fp) {
        return;
    }
    let d = dir.to_path_buf();
    let tar =
        match tokio::task::spawn_blocking(move || pack_checkpoint(&d, owner, CHECKPOINT_LIMIT))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(job_id = %id, error = %e, "checkpoint not saved");
                return;
            }
            Err(e) => {
                warn!(job_id = %id, error = %e, "checkpoint not saved");
                return;
            }
        };
    let sha = hex::encode(sha2::Sha256::digest(&tar));
    if saved.sha256.as_deref() == Some(sha.as_str()) {
        saved.fingerprint = Some(fp);
        return;
    }
    let r = CheckpointRef {
        attempt,
        sha256: sha.clone(),
        bytes: tar.len() as u64,
    };
    if let Err(e) = artifacts.put_checkpoint(id, &r, &tar).await {
        warn!(job_id = %id, error = %e, "checkpoint upload failed");
        return;
    }
    let recorded = mutate_job(ctx.store.as_ref(), id, |j| {
        // Never over a later attempt's checkpoint, nor once the next
        // attempt has started (it restored what was recorded before).
        let later = j.checkpoint.as_ref().is_some_and(|c| c.attempt > attempt);
        let next_started =
            j.attempt > attempt + 1 || (j.attempt == attempt + 1 && j.state != JobState::Queued);
        if later || next_started || j.checkpoint.as_ref() == Some(&r) {
            Step::Keep(false)
        } else {
            j.checkpoint = Some(r.clone());
            Step::Write(true)
        }
    })
    .await;
    match recorded {
        Ok(Some((_, true))) => {
            info!(job_id = %id, bytes = tar.len(), "checkpoint saved");
            saved.sha256 = Some(sha);
            saved.fingerprint = Some(fp);
        }
        Ok(_) => {
            saved.sha256 = Some(sha);
            saved.fingerprint = Some(fp);
        }
        Err(e) => warn!(job_id = %id, error = %e, "checkpoint saved but not recorded; retrying"),
    }
}

/// A hash of every regular file's relative path, size and modification
/// time (nanoseconds on Linux file systems).
pub(crate) fn fingerprint(dir: &std::path::Path, owner: Option<u32>) -> std::io::Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in Dir::open(dir)?.files(owner) {
        (e.rel, e.size, e.mtime_ns).hash(&mut h);
    }
    Ok(h.finish())
}

/// The checkpoint directory as a `.tar.gz`, at most `limit` bytes of files.
fn pack_checkpoint(
    dir: &std::path::Path,
    owner: Option<u32>,
    limit: u64,
) -> Result<Vec<u8>, String> {
    use flate2::{write::GzEncoder, Compression};
    let d = Dir::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = d.files(owner);
    let total: u64 = files.iter().map(|e| e.size).sum();
    if total > limit {
        return Err(format!(
            "the checkpoint directory holds {total} bytes, over the {limit} a checkpoint may"
        ));
    }
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for e in &files {
        // Changed since the walk (grown, or swapped for a link): left out
        // of this one; the next pack takes it.
        let Ok(data) = d.read(std::path::Path::new(&e.rel), owner, limit) else {
            continue;
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if e.mode & 0o111 != 0 { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &e.rel, data.as_slice())
            .map_err(|err| format!("{}: {err}", e.rel))?;
    }
    let gz = builder.into_inner().map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

/// Records on the attempt that its script is gone and its output shipped
/// (followers of a cancelled job stop waiting for more output then).
pub(crate) async fn mark_script_ended(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    outputs: Option<OutputsRef>,
    progress: Option<f32>,
) {
    let now = ctx.clock.now();
    let r = mutate_job(ctx.store.as_ref(), id, |j| {
        match j
            .attempts
            .iter_mut()
            .find(|a| a.number == attempt && a.instance == *me && a.script_ended_at.is_none())
        {
            Some(a) => {
                a.script_ended_at = Some(now);
                a.outputs = outputs.clone();
                if progress.is_some() {
                    j.progress = progress;
                }
                Step::Write(())
            }
            None => Step::Keep(()),
        }
    })
    .await;
    if let Err(e) = r {
        warn!(job_id = %id, error = %e, "could not record the script's end");
    }
}

/// Uploads what the attempt left in `out_dir` and the workspace paths the
/// job names; says in the job's log what was saved and what was missing.
/// Files the job's earlier attempts stored are not sent again.
///
/// Where the attempt has a user of its own, every process of it is gone
/// by now: the files found are read where they were found, unchanged.
pub(crate) async fn save_outputs(
    artifacts: &dyn ArtifactStore,
    job: &Job,
    attempt: u32,
    dirs: &AttemptDirs,
    owner: Option<u32>,
) -> Option<OutputsRef> {
    let (o, w, named) = (
        dirs.outputs.clone(),
        dirs.workspace.clone(),
        job.spec.outputs.clone(),
    );
    let (files, missing) =
        tokio::task::spawn_blocking(move || crate::outputs::gather(&o, &w, &named, owner))
            .await
            .ok()?;
    // The worker's own directory, out of the script's reach.
    let scratch = dirs.scratch.clone();
    let mut known = std::collections::HashSet::new();
    if !files.is_empty() {
        for r in job
            .attempts
            .iter()
            .filter(|a| a.number < attempt)
            .filter_map(|a| a.outputs.as_ref())
        {
            if let Ok(m) = crate::outputs_store::manifest(artifacts, &job.id, r, &scratch).await {
                known.extend(m.files.into_iter().map(|f| f.sha256));
                known.insert(r.manifest.clone());
            }
        }
    }
    let mut note = String::new();
    for m in &missing {
        note.push_str(&format!(
            "[studio] output {m} not found (or not a regular file or directory)\n"
        ));
    }
    let saved = crate::outputs_store::upload(artifacts, &job.id, &files, &known, &scratch).await;
    let outputs = match saved {
        Ok(u) => {
            if let Some(r) = &u.outputs {
                let unchanged = if u.sent < r.files {
                    format!(", {} already stored (same content)", r.files - u.sent)
                } else {
                    String::new()
                };
                note.push_str(&format!(
                    "[studio] outputs of attempt {attempt}: {} file(s), {} bytes{unchanged}\n",
                    r.files, r.bytes
                ));
            }
            u.outputs
        }
        Err(e) => {
            warn!(job_id = %job.id, error = %e, "outputs not saved");
            note.push_str(&format!(
                "[studio] outputs of attempt {attempt} not saved: {e}\n"
            ));
            None
        }
    };
    if !note.is_empty() {
        let _ = artifacts.append_log(&job.id, note.as_bytes()).await;
    }
    outputs
}

/// The attempt failed before its script could start (workspace, Python
/// environment, interpreter).
pub(crate) async fn fail_to_start(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    why: String,
) -> RunEnd {
    finish(ctx, id, attempt, me, None, Some(why), Vec::new()).await;
    RunEnd::default()
}

/// Records the end of our attempt, if the job is still ours. A failing
/// store is retried for a while: until the end is recorded the heartbeat
/// stops, and the sweep would run the job again.
pub async fn finish(
    ctx: &Ctx,
    id: &JobId,
    attempt: u32,
    me: &InstanceId,
    code: Option<i32>,
    failure: Option<String>,
    last_lines: Vec<String>,
) {
    let by = format!("worker:{me}");
    let mut wait = Duration::from_millis(200);
    for _ in 0..6 {
        let now: Timestamp = ctx.clock.now();
        let r = mutate_job(ctx.store.as_ref(), id, |job| {
            if job.runs(attempt, me) {
                job.last_lines = last_lines.clone();
                match job.complete(code, failure.clone(), now, &by) {
                    Ok(()) => Step::Write(()),
                    Err(_) => Step::Keep(()),
                }
            } else {
                Step::Keep(())
            }
        })
        .await;
        match r {
            Ok(Some((job, ()))) => {
                info!(job_id = %id, state = %job.state, exit_code = ?code, "attempt ended");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                warn!(job_id = %id, error = %e, "could not record the end; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// The last 20 lines of output.
pub(crate) fn last_lines(tail: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
