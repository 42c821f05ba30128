//! The CLI's one error type: a usage error (one line, exit code 2) or
//! anything else (exit code 1), and the messages built for both.

pub enum CliError {
    /// The user's input is wrong: one line, exit code 2.
    Usage(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Other(e.into())
    }
}

pub fn usage(msg: impl std::fmt::Display) -> CliError {
    CliError::Usage(msg.to_string())
}

impl CliError {
    /// The one line a user reads.
    pub fn message(&self) -> String {
        match self {
            CliError::Usage(m) => m.clone(),
            CliError::Other(e) => format!("{e:#}"),
        }
    }
}

/// The one line a mistake on the command line gets (exit 2): an unknown
/// command or flag in Studio's words, with clap's "did you mean" when it
/// has one; any other of clap's errors as its first line, with its
/// suggested value. `args` is the command line as given (the program
/// first), `commands` the subcommands' names.
pub fn parse_error(e: &clap::Error, args: &[String], commands: &[&str]) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let suggested = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(s)) => s.first().cloned(),
        _ => None,
    };
    if let (ErrorKind::InvalidSubcommand, Some(ContextValue::String(name))) =
        (e.kind(), e.get(ContextKind::InvalidSubcommand))
    {
        return match suggested(ContextKind::SuggestedSubcommand) {
            Some(s) => format!("unknown command '{name}': did you mean 'studio {s}'?"),
            None => format!("unknown command '{name}' (studio --help lists them)"),
        };
    }
    if let (ErrorKind::UnknownArgument, Some(ContextValue::String(flag))) =
        (e.kind(), e.get(ContextKind::InvalidArg))
    {
        return unknown_flag(flag, suggested(ContextKind::SuggestedArg), args, commands);
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.trim_start_matches("error: ");
    match suggested(ContextKind::SuggestedValue) {
        Some(v) => format!("{first}; did you mean '{v}'?"),
        None => first.to_string(),
    }
}

/// `flag` (clap names it without its `=value`) is no flag of the command
/// it was given to. The hint that a script's flags go after the script is
/// given only when a script does follow, and clap has no near flag.
fn unknown_flag(
    flag: &str,
    suggestion: Option<String>,
    args: &[String],
    commands: &[&str],
) -> String {
    let at = args.iter().skip(1).position(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    let given = at.map_or(flag, |i| args[i + 1].as_str());
    let value = given.strip_prefix(flag).unwrap_or("");
    let command = args
        .iter()
        .skip(1)
        .take(at.unwrap_or(usize::MAX))
        .find(|a| commands.contains(&a.as_str()));
    let whose = command.map_or("studio".to_string(), |c| format!("studio {c}"));
    let mut msg = format!("unknown flag '{given}' of {whose}");
    if let Some(s) = suggestion {
        msg += &format!(": did you mean '{s}{value}'?");
        return msg;
    }
    let script = at.and_then(|i| {
        args.iter()
            .skip(i + 2)
            .find(|a| !a.starts_with('-') && std::path::Path::new(a).is_file())
    });
    match (command.map(String::as_str), script) {
        (Some("run"), Some(script)) => {
            msg += &format!(
                ": if it is {script}'s, put it after {script} (Studio's flags go before the script, the script's after it)"
            );
        }
        _ => msg += &format!(" ({whose} --help lists them)"),
    }
    msg
}

/// What a `studio` built without the EC2 SDK says when asked for what needs it.
#[cfg(not(feature = "ec2"))]
pub(crate) fn without_ec2(what: &str) -> String {
    format!("{what} needs the EC2 SDK, which this studio is built without (it takes 7 GB of memory to compile): cargo install --path cli --features ec2")
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => f.write_str(m),
            CliError::Other(e) => write!(f, "{e:#}"),
        }
    }
}
