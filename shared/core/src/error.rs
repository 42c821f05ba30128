//! The error every port returns ([`PortError`]), below the ports
//! themselves so that the wire contract and the domain can name it without
//! importing the traits.

use thiserror::Error;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong behind a port.
#[derive(Debug, Error)]
pub enum PortError {
    /// A compare-and-set lost: the record changed since it was read.
    #[error("conflict: the record changed since it was read")]
    Conflict,
    #[error("{0} not found")]
    NotFound(String),
    #[error("{what} is too large: {detail}")]
    TooLarge { what: &'static str, detail: String },
    /// The service failed; usually worth a retry.
    #[error("{port}: {source}")]
    Backend {
        port: &'static str,
        #[source]
        source: BoxError,
    },
}

impl PortError {
    pub fn backend(port: &'static str, source: impl Into<BoxError>) -> PortError {
        PortError::Backend {
            port,
            source: source.into(),
        }
    }
}
