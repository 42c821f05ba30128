//! `studio status --watch`: the jobs table, live.

use crate::backend::local_if_exists;
use crate::context::{Env, Globals};
use crate::error::CliError;
use crate::jobs_table::jobs_table;
use crate::{backend, term};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use studio_core::clock::{Clock, SystemClock};
use studio_core::ids::JobId;
use studio_core::job::Job;
use studio_core::ports::{merge_pages, JobQuery, JobStore};
use studio_local::LocalBackend;

/// The newest `limit` jobs of this home and of the AWS deployment, through
/// the stores' listing index (never a scan).
async fn newest_jobs(
    local: Option<&LocalBackend>,
    aws: Option<&studio_aws::AwsJobs>,
    limit: u32,
) -> Result<Vec<Job>, CliError> {
    let q = JobQuery {
        limit,
        ..JobQuery::default()
    };
    let mut pages = Vec::new();
    if let Some(be) = local {
        pages.push(be.store.page_jobs(&q).await?);
    }
    if let Some(aws) = aws {
        pages.push(aws.store.page_jobs(&q).await?);
    }
    Ok(merge_pages(pages, limit).jobs)
}

/// One frame of `status --watch` on a terminal, its columns chosen for
/// `width` as `studio status` chooses them.
fn watch_frame(
    jobs: &[Job],
    now: studio_core::clock::Timestamp,
    every: Duration,
    width: usize,
) -> Vec<String> {
    let clock = now.to_string();
    let mut lines = vec![
        format!(
            "studio status --watch   {} job(s)   {} UTC   every {}   q to quit",
            jobs.len(),
            clock.get(11..19).unwrap_or(&clock),
            humantime::format_duration(every)
        ),
        String::new(),
    ];
    if jobs.is_empty() {
        lines.push("no jobs".into());
        return lines;
    }
    lines.extend(jobs_table(jobs, now, "JOB", Some(width)));
    lines
}

/// A job's line when `status --watch` writes to a pipe: what changed is
/// printed again (cost and runtime, which move every second, are left out).
fn watch_line(j: &Job) -> String {
    format!(
        "{}  {}  {}  attempt {}  {} {}  {}{}",
        j.id,
        j.command_line(),
        j.state,
        j.attempt,
        j.plan.cloud,
        j.plan.machine,
        j.progress
            .map_or("-".to_string(), |p| format!("{:.0}%", p * 100.0)),
        j.reason
            .as_deref()
            .filter(|_| j.state.is_terminal())
            .map_or(String::new(), |r| format!("  ({r})"))
    )
}

/// `studio status --watch`: the jobs table, live. On a terminal it takes
/// the screen (given back on q, Ctrl-C, SIGTERM, and around Ctrl-Z) and
/// redraws in place; into a pipe it writes a timestamped line whenever a
/// job appears or changes, until the pipe closes or a signal ends it.
pub(crate) async fn watch(g: &Globals, env: &Env, every: Duration) -> Result<ExitCode, CliError> {
    use std::io::IsTerminal;
    use tokio::signal::unix::{signal, SignalKind};
    let aws = backend::aws(&g.home, env).await?;
    let mut local = local_if_exists(g).await?;
    let tty = std::io::stdout().is_terminal();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigtstp = signal(SignalKind::from_raw(libc::SIGTSTP))?;
    let mut winch = signal(SignalKind::window_change())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (key_tx, mut keys) = tokio::sync::mpsc::channel::<u8>(8);
    if tty && std::io::stdin().is_terminal() {
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut b) {
                if key_tx.blocking_send(b[0]).is_err() {
                    break;
                }
            }
        });
    } else {
        drop(key_tx);
    }
    let mut keys_open = tty;
    let mut screen = tty.then(term::Screen::enter);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut printed: std::collections::HashMap<JobId, String> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = winch.recv() => {}
            k = keys.recv(), if keys_open => match k {
                Some(b'q' | b'Q') => break,
                Some(_) => continue,
                None => keys_open = false,
            },
            _ = &mut ctrl_c => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sigtstp.recv() => {
                // Ctrl-Z: give the terminal back, stop, and take it again on `fg`.
                if let Some(s) = screen.as_mut() {
                    s.suspend();
                }
                term::stop_self();
                if let Some(s) = screen.as_mut() {
                    s.resume();
                }
            }
        }
        if local.is_none() {
            local = local_if_exists(g).await?;
        }
        let now = SystemClock.now();
        match &screen {
            Some(s) => {
                let (cols, rows) = term::size(1).unwrap_or((100, 30));
                let jobs = newest_jobs(
                    local.as_ref(),
                    aws.as_ref(),
                    rows.saturating_sub(3).max(1) as u32,
                )
                .await?;
                let width = term::width().unwrap_or(cols);
                if s.draw(&watch_frame(&jobs, now, every, width), cols, rows)
                    .is_err()
                {
                    break;
                }
            }
            None => {
                let jobs = newest_jobs(local.as_ref(), aws.as_ref(), 200).await?;
                let mut out = std::io::stdout().lock();
                for j in jobs.iter().rev() {
                    let line = watch_line(j);
                    if printed.get(&j.id) != Some(&line) {
                        // A closed pipe ends the watch quietly, like any unix tool.
                        if writeln!(out, "{now}  {line}")
                            .and_then(|_| out.flush())
                            .is_err()
                        {
                            return Ok(ExitCode::SUCCESS);
                        }
                        printed.insert(j.id.clone(), line);
                    }
                }
            }
        }
    }
    drop(screen);
    Ok(ExitCode::SUCCESS)
}
