//! [`AwsError`]: what an AWS call failed with, the SDK error kept as its source.

use thiserror::Error;

/// What an AWS call failed with, keeping the SDK error as the source.
#[derive(Debug, Error)]
pub enum AwsError {
    #[error("{operation}: {detail}")]
    Sdk {
        operation: &'static str,
        /// The SDK's full error chain, readable in one line.
        detail: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Shape(String),
}

impl AwsError {
    pub fn sdk(
        operation: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> AwsError {
        AwsError::Sdk {
            operation,
            detail: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            source: Box::new(e),
        }
    }
}
