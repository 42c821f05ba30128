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

/// What a `studio` built without the EC2 SDK says when asked for what needs it.
#[cfg(not(feature = "ec2"))]
pub(crate) fn without_ec2(what: &str) -> String {
    format!("{what} needs the EC2 SDK, which this studio is built without (it takes 7 GB of memory to compile): cargo install --path cli --features ec2")
}
