//! Where reports live: one [`Store`] trait, implemented for PostgreSQL and for an embedded SQLite file.
//!
//! All SQL of the server is in this module's backends; the rest of the server speaks in the record types
//! defined here.

pub mod alerts;
mod columns;
mod postgres;
mod records;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use sockfleet_domain::{HostId, SysctlValues};

use crate::alerts::model::Labels;

pub use alerts::AlertStore;

pub use postgres::PostgresStore;
pub use records::{
    AgentSession, HostActivity, HostDetail, HostOverview, HostPage, IncomingReport,
    NamespaceOverview, SeriesPoint, SeriesQuery, StoredSample, SysctlChange,
};
pub use sqlite::SqliteStore;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use postgres://... or sqlite://PATH")]
    UnsupportedUrl(String),
    #[error("the database holds a value sockfleet cannot read: {0}")]
    Corrupt(String),
}

/// The operations the server needs from its database.
#[async_trait]
pub trait Store: AlertStore {
    /// Which backend this is (`postgres` or `sqlite`), for logs.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StorageError>;

    /// The highest sequence of `run_id` on `host` that is committed (0 if none).
    async fn committed_sequence(&self, host: &HostId, run_id: &str) -> Result<u64, StorageError>;

    /// Commits reports from any number of streams in one transaction: hosts and runs first seen are
    /// registered, a report already stored (same run and sequence) is skipped, and sysctls are recorded
    /// only when their value changed.
    async fn commit_reports(&self, reports: &[IncomingReport]) -> Result<(), StorageError>;

    /// One page of hosts ordered by host id, each with its latest report.
    async fn list_hosts(&self, page: &HostPage) -> Result<Vec<HostOverview>, StorageError>;

    /// Whether `host` has ever reported (a cheap check for endpoints that need no detail).
    async fn host_exists(&self, host: &HostId) -> Result<bool, StorageError>;

    /// One host with its latest report and current sysctls.
    async fn host(&self, host: &HostId) -> Result<Option<HostDetail>, StorageError>;

    /// Every recorded value of a host's sysctls (of one, if `name` is given), oldest first.
    async fn sysctl_history(
        &self,
        host: &HostId,
        name: Option<&str>,
    ) -> Result<Vec<SysctlChange>, StorageError>;

    /// The host's latest `limit` reports (of its own namespace) with their counters and breakdowns,
    /// oldest first: what the alert engine replays to rebuild a host's windows.
    async fn recent_samples(
        &self,
        host: &HostId,
        limit: u32,
    ) -> Result<Vec<StoredSample>, StorageError>;

    /// Every host's labels, collection interval and latest report time, for the fleet rules.
    async fn host_activity(&self) -> Result<Vec<HostActivity>, StorageError>;

    /// Every host's current sysctls (of its own namespace) with its labels, for drift.
    async fn fleet_sysctls(&self) -> Result<Vec<(HostId, Labels, SysctlValues)>, StorageError>;

    /// A host's counts over time, raw or averaged per step.
    async fn series(
        &self,
        host: &HostId,
        query: &SeriesQuery,
    ) -> Result<Vec<SeriesPoint>, StorageError>;
}

/// Opens (creating if needed) and migrates the database at `url`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StorageError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StorageError::UnsupportedUrl(redact_password(url)))
    }
}

/// The URL with any password replaced, safe for logs and error messages.
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_password("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_password("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_password("sqlite://a.db"), "sqlite://a.db");
    }
}
