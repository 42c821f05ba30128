//! Following a job from the terminal: its output on stdout, its state
//! changes on stderr, until it ends (a waiting `run`, `logs --follow`).

use crate::backend::{replace_dead_driver, Side, DRIVER_CHECK_EVERY};
use crate::context::Globals;
use crate::error::CliError;
use crate::progress_line::ProgressLine;
use crate::term;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::ids::JobId;
use studio_core::job::{Job, JobState};
use studio_core::ports::ArtifactStore;
use studio_core::progress;
use studio_local::LocalBackend;

/// How often a waiting `run` looks at the job.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(200);
pub(crate) fn report_end(job: &Option<Job>) -> ExitCode {
    let Some(job) = job else {
        return ExitCode::from(130);
    };
    match job.state {
        JobState::Finished => ExitCode::SUCCESS,
        JobState::Failed => {
            eprintln!(
                "studio: job {} failed: {}",
                job.id,
                job.reason.as_deref().unwrap_or("no reason recorded")
            );
            ExitCode::from(1)
        }
        JobState::Cancelled => {
            eprintln!("studio: job {} was cancelled", job.id);
            ExitCode::from(3)
        }
        _ => ExitCode::from(1),
    }
}

/// Prints state changes (stderr) and the job's output (stdout) until the job
/// ends and, on the local backend, until its script has really stopped (a
/// cancelled script prints during its SIGTERM grace). It only reads: the
/// driver does the work, so a follower that is stopped, blocked on a full
/// pipe or killed holds nothing back. Returns `None` when interrupted with
/// Ctrl-C (the job goes on).
pub(crate) async fn follow(g: &Globals, side: &Side, id: &JobId) -> Result<Option<Job>, CliError> {
    let local = match side {
        Side::Local(be) => Some(be.as_ref()),
        Side::Aws(_) | Side::Gcp(..) => None,
    };
    let every = if local.is_some() {
        FOLLOW_EVERY
    } else {
        Duration::from_secs(1)
    };
    let mut offset = 0u64;
    let mut seen = 0usize;
    let mut bar = ProgressLine::new();
    // The bar follows the script's own progress lines in the output it
    // prints: the record's value is written with the worker's heartbeat
    // (every second or two locally, every 30 s in the cloud), so drawn from
    // the record the bar stayed updates behind what the script printed.
    // The record's value serves a script that never prints one (its
    // `progress.json`).
    let mut lines = progress::Scanner::default();
    let mut from_output: Option<f32> = None;
    let mut tstp = if bar.on {
        Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::from_raw(libc::SIGTSTP),
        )?)
    } else {
        None
    };
    // Locally a record write or a log append wakes the follower at once
    // (subscribed before the first look); `every` is the longest it sleeps.
    let mut woken = local.map(|be| {
        be.db
            .wake()
            .subscribe(&studio_local::wake::job_topic(id.as_str()))
    });
    let started = tokio::time::Instant::now();
    let mut driver_checked = tokio::time::Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        // A driver that died (killed, OOM) is replaced while we wait.
        if let Some(be) = local.filter(|_| driver_checked.elapsed() >= DRIVER_CHECK_EVERY) {
            driver_checked = tokio::time::Instant::now();
            replace_dead_driver(g, be).await?;
        }
        let job = side.store().get_job(id).await?;
        let bytes = side.artifacts().read_log(id, offset).await?;
        let news = job.as_ref().is_some_and(|j| j.events.len() > seen);
        if !bytes.is_empty() || news {
            bar.clear();
        }
        offset += write_out(&bytes)?;
        bar.after_output(&bytes);
        if let Some(p) = lines.feed(&bytes) {
            from_output = Some(p);
        }
        match job {
            Some(job) => {
                for e in job.events.iter().skip(seen) {
                    eprintln!("studio: {} {} ({}, by {})", job.id, e.to, e.reason, e.by);
                }
                seen = job.events.len();
                if job.state.is_terminal() {
                    bar.clear();
                    break Some(job);
                }
                bar.show(from_output.or(job.progress));
            }
            None if started.elapsed() > Duration::from_secs(5) => {
                if let Some(why) = local
                    .map(|be| rejected_reason(g, be, id))
                    .transpose()?
                    .flatten()
                {
                    return Err(CliError::Other(anyhow::anyhow!(
                        "job {id} was rejected: {why}"
                    )));
                }
            }
            None => {}
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                bar.clear();
                eprintln!("studio: stopped following; job {id} goes on (studio logs -f {id}, studio cancel {id})");
                break None;
            }
            _ = async {
                let until = tokio::time::Instant::now() + every;
                match woken.as_mut() {
                    Some(w) => w.wait_until(until).await,
                    None => tokio::time::sleep_until(until).await,
                }
            } => {}
            // Ctrl-Z with the bar up: take it down first, as a stopped job's
            // line should not keep a bar; it comes back on `fg`.
            _ = async { tstp.as_mut().expect("only with a bar").recv().await }, if tstp.is_some() => {
                bar.clear();
                term::stop_self();
            }
        }
    };
    if let Some(job) = &result {
        tail_until_script_ends(side, job, offset).await?;
    }
    Ok(result)
}

/// Longest a cancelled script is waited for: the worker's SIGTERM grace
/// (10 s), the seconds it takes to notice the cancel (5 s in the cloud),
/// the last log upload
/// (a file append locally, an S3 object in the cloud) and a margin.
const SCRIPT_END_LIMIT: Duration = Duration::from_secs(20);

/// After the job's end is recorded, prints what its script still writes
/// until the script has stopped and its last output is in the log. A job
/// that ended by its script's own exit is already complete; a cancelled one
/// may still be in its SIGTERM grace.
///
/// The worker records on the attempt when the script's processes are gone
/// and its last output is in the log (`script_ended_at`), on every backend;
/// a worker that died never does, so the wait is bounded.
pub(crate) async fn tail_until_script_ends(
    side: &Side,
    job: &Job,
    mut offset: u64,
) -> Result<(), CliError> {
    let attempt = job
        .attempts
        .last()
        .filter(|a| job.state == JobState::Cancelled && a.script_ended_at.is_none())
        .map(|a| a.number);
    if let Some(n) = attempt {
        let deadline = tokio::time::Instant::now() + SCRIPT_END_LIMIT;
        while tokio::time::Instant::now() < deadline {
            offset += print_log(side.artifacts(), &job.id, offset).await?;
            let ended = side.store().get_job(&job.id).await?.is_none_or(|j| {
                j.attempts
                    .iter()
                    .any(|a| a.number == n && a.script_ended_at.is_some())
            });
            if ended {
                break;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
    print_log(side.artifacts(), &job.id, offset).await?;
    Ok(())
}

fn rejected_reason(g: &Globals, be: &LocalBackend, id: &JobId) -> Result<Option<String>, CliError> {
    let dlq = studio_local::queue::dlq_name(&g.settings.submit_queue);
    let needle = format!("\"job_id\":\"{id}\"");
    Ok(be
        .queue
        .peek(&dlq)?
        .into_iter()
        .find(|(body, _)| body.contains(&needle))
        .map(|(_, note)| note.unwrap_or_else(|| "dead-lettered".into())))
}

pub(crate) async fn print_log(
    artifacts: &dyn ArtifactStore,
    id: &JobId,
    offset: u64,
) -> Result<u64, CliError> {
    write_out(&artifacts.read_log(id, offset).await?)
}

/// Writes output bytes to stdout; how many.
fn write_out(bytes: &[u8]) -> Result<u64, CliError> {
    if !bytes.is_empty() {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
    }
    Ok(bytes.len() as u64)
}
