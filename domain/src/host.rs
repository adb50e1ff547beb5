//! Host identities.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a usable host id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHostId {
    #[error("host id is empty")]
    Empty,
    #[error("host id is {0} bytes long; at most {max} are allowed", max = HostId::MAX_LEN)]
    TooLong(usize),
    #[error(
        "host id contains {0:?}; only ASCII letters, digits and '.', '_', ':', '-' are allowed"
    )]
    BadCharacter(char),
}

/// The stable identity of a host: by default its `/etc/machine-id`, or what the operator configured.
///
/// Restricted to a short ASCII alphabet so it is safe in URLs, labels and file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    /// Longest accepted host id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `raw` as a host id.
    pub fn parse(raw: &str) -> Result<HostId, InvalidHostId> {
        if raw.is_empty() {
            return Err(InvalidHostId::Empty);
        }
        if raw.len() > HostId::MAX_LEN {
            return Err(InvalidHostId::TooLong(raw.len()));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(InvalidHostId::BadCharacter(bad));
        }
        Ok(HostId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostId {
    type Error = InvalidHostId;

    fn try_from(raw: String) -> Result<HostId, InvalidHostId> {
        HostId::parse(&raw)
    }
}

impl From<HostId> for String {
    fn from(id: HostId) -> String {
        id.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_machine_ids_and_names() {
        assert!(HostId::parse("3d1219c7c4c5404aaa1f6d2a48adfda4").is_ok());
        assert!(HostId::parse("web-01.example.com").is_ok());
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(HostId::parse(""), Err(InvalidHostId::Empty));
        assert_eq!(
            HostId::parse(&"a".repeat(129)),
            Err(InvalidHostId::TooLong(129))
        );
        assert_eq!(HostId::parse("a/b"), Err(InvalidHostId::BadCharacter('/')));
        assert_eq!(HostId::parse("a b"), Err(InvalidHostId::BadCharacter(' ')));
    }
}
