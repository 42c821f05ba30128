//! `studio`: the thin CLI. It validates, enqueues, and reads status; the
//! handlers in `studio-core` do the rest, driven locally by `studio-local`.
//!
//! # Layout
//! - [`cmd`]: the command line (global flags, subcommands) and one file per
//!   subcommand under `cmd/`, each with its flags and what it does: `run`,
//!   `submit`, `status`, `watch` (`status --watch`), `ui` (its page and API
//!   in `cmd/ui/`), `logs`, `cancel`, `pull`, `cost`, `plan`, `catalog`,
//!   `init`, `doctor`, `gc`, and the hidden `worker` and `driver`.
//! - The plumbing the commands share, which imports no command:
//!   - [`context`]: what every command is given (environment, global flags).
//!   - [`error`]: the CLI's error (usage: exit 2; anything else: exit 1).
//!   - [`backend`]: where a job lives (this home's local backend, the AWS
//!     deployment, GCS for GCE jobs' files) and the local driver's upkeep.
//!   - [`request`]: the request flags turned into a `SubmitJob`, the workspace packed.
//!   - [`follow`]: a job's output and state changes, followed to its end.
//!   - [`jobs_table`]: the jobs table of `status` and `status --watch`.
//!   - [`outputs`]: an attempt's outputs downloaded (`pull`, a waiting `run`).
//!   - [`progress_line`]: the progress bar under a waiting `run`'s output.
//!   - [`table`]: aligned tables and the `--output` formats.
//!   - [`term`]: the terminal (its size, a screen of our own, Ctrl-Z).
//!
//! A new flag of one command starts in that command's file; a new request
//! flag (shared by `run`, `plan` and `submit`) in [`request`].

mod backend;
mod cmd;
mod context;
mod error;
mod follow;
mod jobs_table;
mod outputs;
mod progress_line;
mod request;
mod table;
mod term;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cmd::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                });
            }
            // One line: what and why, and clap's "did you mean" if any.
            let args: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let cli = <cmd::Cli as clap::CommandFactory>::command();
            let commands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
            eprintln!("studio: {}", error::parse_error(&e, &args, &commands));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, cmd::Command::Worker(_) | cmd::Command::Driver) {
        // Like any Unix tool: `studio status | head` ends quietly when the
        // reader goes away, instead of panicking on a broken pipe.
        // SAFETY: restoring the default disposition of one signal at start-up.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STUDIO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_level(&cli))),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let env = context::Env {
        user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            // SAFETY: getuid cannot fail.
            .unwrap_or_else(|_| format!("uid-{}", unsafe { libc::getuid() })),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        default_home: std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".studio")),
        lock_fd: std::env::var(studio_local::fleet::LOCK_FD_ENV)
            .ok()
            .and_then(|s| s.parse().ok()),
        vars: std::env::vars()
            .filter(|(k, _)| k.starts_with("STUDIO_") || k.starts_with("AWS_"))
            .collect(),
        uv_vars: std::env::vars()
            .filter(|(k, _)| context::is_uv_setting(k))
            .collect(),
    };
    // One thread: the worker's scripts are tied to it by PR_SET_PDEATHSIG.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(cmd::dispatch(cli, env)) {
        Ok(code) => code,
        Err(error::CliError::Usage(msg)) => {
            eprintln!("studio: {msg}");
            ExitCode::from(2)
        }
        Err(error::CliError::Other(e)) => {
            eprintln!("studio: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn default_log_level(cli: &cmd::Cli) -> &'static str {
    match cli.command {
        cmd::Command::Worker(_) | cmd::Command::Driver => "info",
        // The handlers' own warnings are events of the simulated world.
        cmd::Command::Simulate(_) => "error",
        // The SDK's own warnings (a region looked for on a metadata service
        // a laptop has not) are not the user's business; its errors are
        // reported by the command.
        _ => "warn,aws_config=error,aws_smithy_runtime=error",
    }
}
