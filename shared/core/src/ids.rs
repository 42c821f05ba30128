//! Identifier newtypes. Each one validates its text once, at the edge.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} '{value}': {why}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn check(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    let err = |why| IdError {
        kind,
        value: s.to_string(),
        why,
    };
    if s.is_empty() || s.len() > max {
        return Err(err("must be 1 to 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(err("use letters, digits, '-', '_' and '.' only"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// [`IdError`] when the text is empty, too long or has other characters.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $max)?;
                Ok($name(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }
    };
}

id_type!(
    /// A job's id: the client's idempotency key, or a ULID.
    JobId, "job id", 64);
id_type!(
    /// A pool's key, derived from the normalized request; usable in cloud resource names.
    PoolKey, "pool key", 64);
id_type!(
    /// A machine (EC2 instance id, GCE instance name, local worker id).
    InstanceId, "instance id", 64);

impl JobId {
    /// A fresh ULID, lowercase so it can appear in resource names.
    pub fn generate() -> JobId {
        JobId(ulid::Ulid::new().to_string().to_ascii_lowercase())
    }
}

impl InstanceId {
    /// A fresh id for a local worker.
    pub fn generate_local() -> InstanceId {
        let u = ulid::Ulid::new().to_string().to_ascii_lowercase();
        InstanceId(format!("w-{}", &u[16..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_and_round_trip_through_json() {
        assert!(JobId::new("exp-1.run_2").is_ok());
        assert!(JobId::new("").is_err());
        assert!(JobId::new("a b").is_err());
        assert!(JobId::new("x".repeat(65)).is_err());
        let id = JobId::generate();
        assert_eq!(id.as_str().len(), 26);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<JobId>("\"a/b\"").is_err());
    }
}
