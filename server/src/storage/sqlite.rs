//! The embedded SQLite backend: zero setup, for one server and a modest fleet.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sockfleet_domain::{Breakdowns, HostId, KernelCounters, NamespaceIdentity, SysctlValues};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Row, Sqlite, Transaction};

use super::alerts::impl_alert_store;
use super::columns::{HOST_ACTIVITY, RECENT_SAMPLES, kernel_columns, state_columns};
use super::records::{AgentSession, CommitBookkeeping, RunKeys, SysctlScope};
use super::rows::{
    count_values, family_counts, fleet_sysctls, host_activity, kernel_counters, kernel_values,
    stored_sample,
};
use super::{
    HostActivity, HostDetail, HostOverview, HostPage, IncomingReport, NamespaceOverview,
    SeriesPoint, SeriesQuery, StorageError, Store, StoredSample, SysctlChange,
};
use crate::alerts::model::Labels;

/// Storage in one SQLite file (WAL mode, fully synchronous commits so an acknowledged report survives a
/// crash).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<SqliteStore, StorageError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The host's other namespaces with their latest report, most recently seen first.
    async fn namespaces(&self, host_key: i64) -> Result<Vec<NamespaceOverview>, StorageError> {
        const SQL: &str = concat!(
            "SELECT n.inode, n.name, n.container_id, n.pod, n.pid, n.comm, n.first_seen, r.collected_at, ",
            state_columns!("r.", ""),
            ", r.kernel, r.breakdowns",
            " FROM namespaces n LEFT JOIN namespace_reports r ON r.host_key = n.host_key ",
            "AND r.inode = n.inode AND r.collected_at = (SELECT MAX(collected_at) FROM namespace_reports ",
            "WHERE host_key = n.host_key AND inode = n.inode) ",
            "WHERE n.host_key = ?1 GROUP BY n.inode ORDER BY r.collected_at DESC, n.inode LIMIT 1000"
        );
        let rows = sqlx::query(SQL)
            .bind(host_key)
            .fetch_all(&self.pool)
            .await?;
        let mut namespaces = Vec::with_capacity(rows.len());
        for row in &rows {
            let inode: i64 = row.try_get(0)?;
            let pid: Option<i64> = row.try_get(4)?;
            let kernel: Option<Json<KernelCounters>> = row.try_get(30)?;
            let breakdowns: Option<Json<Breakdowns>> = row.try_get(31)?;
            namespaces.push(NamespaceOverview {
                inode: u64::try_from(inode)
                    .map_err(|_| StorageError::Corrupt(format!("namespace inode {inode}")))?,
                identity: NamespaceIdentity {
                    name: row.try_get(1)?,
                    container_id: row.try_get(2)?,
                    pod: row.try_get(3)?,
                    pid: pid.and_then(|pid| u32::try_from(pid).ok()),
                    comm: row.try_get(5)?,
                },
                first_seen: millis_to_time(row.try_get(6)?)?,
                last_seen: row
                    .try_get::<Option<i64>, _>(7)?
                    .map(millis_to_time)
                    .transpose()?,
                states: family_counts::<_, i64>(row, 8)?,
                sysctls: current_sysctls(&self.pool, host_key, SysctlScope::Namespace(inode))
                    .await?,
                kernel: kernel.map(|Json(kernel)| kernel),
                breakdowns: breakdowns.map(|Json(breakdowns)| breakdowns),
            });
        }
        Ok(namespaces)
    }

    async fn host_overviews(
        &self,
        host: Option<&HostId>,
        page: &HostPage,
    ) -> Result<Vec<(i64, HostOverview)>, StorageError> {
        const SQL: &str = concat!(
            "SELECT h.host_key, h.host_id, h.hostname, h.kernel_release, h.agent_version, h.collector, ",
            "h.labels, h.interval_ms, h.first_seen, r.collected_at, ",
            state_columns!("r.", ""),
            " FROM hosts h LEFT JOIN reports r ON r.host_key = h.host_key AND r.collected_at = ",
            "(SELECT MAX(collected_at) FROM reports WHERE host_key = h.host_key) ",
            "WHERE (?1 IS NULL OR h.host_id = ?1) AND (?2 IS NULL OR h.host_id > ?2) ",
            "GROUP BY h.host_key ORDER BY h.host_id LIMIT ?3"
        );
        let rows = sqlx::query(SQL)
            .bind(host.map(HostId::as_str))
            .bind(page.after.as_ref().map(HostId::as_str))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(overview_from_row).collect()
    }
}

impl_alert_store!(SqliteStore, sqlx::Sqlite);

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn committed_sequence(&self, host: &HostId, run_id: &str) -> Result<u64, StorageError> {
        let sequence: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(r.sequence), 0) FROM reports r \
             JOIN agent_runs a ON a.run_key = r.run_key JOIN hosts h ON h.host_key = a.host_key \
             WHERE h.host_id = ?1 AND a.run_id = ?2",
        )
        .bind(host.as_str())
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(sequence).unwrap_or(0))
    }

    async fn commit_reports(&self, reports: &[IncomingReport]) -> Result<(), StorageError> {
        const INSERT_REPORT: &str = concat!(
            "INSERT INTO reports (run_key, sequence, host_key, collected_at, ",
            state_columns!("", ""),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ",
            "?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26) ON CONFLICT (run_key, sequence) DO NOTHING"
        );
        const INSERT_KERNEL: &str = concat!(
            "INSERT INTO kernel_counters (run_key, sequence, host_key, collected_at, ",
            kernel_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ",
            "?19, ?20) ON CONFLICT (run_key, sequence) DO NOTHING"
        );
        const INSERT_NAMESPACE_REPORT: &str = concat!(
            "INSERT INTO namespace_reports (run_key, sequence, inode, host_key, collected_at, ",
            state_columns!("", ""),
            ", kernel, breakdowns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29) ",
            "ON CONFLICT (run_key, sequence, inode) DO NOTHING"
        );
        let mut tx = self.pool.begin().await?;
        let mut bookkeeping = CommitBookkeeping::default();
        for incoming in reports {
            let session = incoming.session.as_ref();
            let keys = match bookkeeping.keys(session) {
                Some(keys) => keys,
                None => {
                    let keys = register(&mut tx, session).await?;
                    bookkeeping.register(session, keys);
                    keys
                }
            };
            let report = &incoming.report;
            let mut insert = sqlx::query(INSERT_REPORT)
                .bind(keys.run)
                .bind(i64::try_from(report.sequence).unwrap_or(i64::MAX))
                .bind(keys.host)
                .bind(report.collected_at.timestamp_millis());
            for count in count_values(&report.states) {
                insert = insert.bind(count);
            }
            insert.execute(&mut *tx).await?;
            if let Some(breakdowns) = &report.breakdowns {
                sqlx::query(
                    "INSERT INTO breakdowns (run_key, sequence, host_key, collected_at, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (run_key, sequence) DO NOTHING",
                )
                .bind(keys.run)
                .bind(i64::try_from(report.sequence).unwrap_or(i64::MAX))
                .bind(keys.host)
                .bind(report.collected_at.timestamp_millis())
                .bind(Json(breakdowns))
                .execute(&mut *tx)
                .await?;
            }
            if let Some(kernel) = &report.kernel {
                let mut insert = sqlx::query(INSERT_KERNEL)
                    .bind(keys.run)
                    .bind(i64::try_from(report.sequence).unwrap_or(i64::MAX))
                    .bind(keys.host)
                    .bind(report.collected_at.timestamp_millis());
                for value in kernel_values(kernel) {
                    insert = insert.bind(value);
                }
                insert.execute(&mut *tx).await?;
            }

            if bookkeeping.dropped_grew(session, incoming.dropped_reports) {
                sqlx::query("UPDATE agent_runs SET dropped_reports = MAX(dropped_reports, ?2) WHERE run_key = ?1")
                    .bind(keys.run)
                    .bind(i64::try_from(incoming.dropped_reports).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
            }
            for namespace in &report.namespaces {
                let inode = i64::try_from(namespace.inode).unwrap_or(i64::MAX);
                let identity = &namespace.identity;
                sqlx::query(
                    "INSERT INTO namespaces (host_key, inode, name, container_id, pod, pid, comm, first_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (host_key, inode) DO UPDATE SET name = excluded.name, \
                     container_id = excluded.container_id, pod = excluded.pod, pid = excluded.pid, \
                     comm = excluded.comm \
                     WHERE namespaces.name IS DISTINCT FROM excluded.name \
                     OR namespaces.container_id IS DISTINCT FROM excluded.container_id \
                     OR namespaces.pod IS DISTINCT FROM excluded.pod \
                     OR namespaces.pid IS DISTINCT FROM excluded.pid \
                     OR namespaces.comm IS DISTINCT FROM excluded.comm",
                )
                .bind(keys.host)
                .bind(inode)
                .bind(identity.name.as_deref())
                .bind(identity.container_id.as_deref())
                .bind(identity.pod.as_deref())
                .bind(identity.pid.map(i64::from))
                .bind(identity.comm.as_deref())
                .bind(report.collected_at.timestamp_millis())
                .execute(&mut *tx)
                .await?;
                let mut insert = sqlx::query(INSERT_NAMESPACE_REPORT)
                    .bind(keys.run)
                    .bind(i64::try_from(report.sequence).unwrap_or(i64::MAX))
                    .bind(inode)
                    .bind(keys.host)
                    .bind(report.collected_at.timestamp_millis());
                for count in count_values(&namespace.states) {
                    insert = insert.bind(count);
                }
                insert
                    .bind(namespace.kernel.as_ref().map(Json))
                    .bind(namespace.breakdowns.as_ref().map(Json))
                    .execute(&mut *tx)
                    .await?;
                if !namespace.sysctls.is_empty() {
                    record_sysctl_changes(
                        &mut tx,
                        keys.host,
                        SysctlScope::Namespace(inode),
                        report.collected_at,
                        &namespace.sysctls,
                    )
                    .await?;
                }
            }
            if !report.sysctls.is_empty() {
                record_sysctl_changes(
                    &mut tx,
                    keys.host,
                    SysctlScope::Host,
                    report.collected_at,
                    &report.sysctls,
                )
                .await?;
            }
        }
        tx.commit().await?;
        bookkeeping.apply();
        Ok(())
    }

    async fn host_exists(&self, host: &HostId) -> Result<bool, StorageError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT host_key FROM hosts WHERE host_id = ?1")
                .bind(host.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    async fn list_hosts(&self, page: &HostPage) -> Result<Vec<HostOverview>, StorageError> {
        Ok(self
            .host_overviews(None, page)
            .await?
            .into_iter()
            .map(|(_, overview)| overview)
            .collect())
    }

    async fn host(&self, host: &HostId) -> Result<Option<HostDetail>, StorageError> {
        let page = HostPage {
            after: None,
            limit: 1,
        };
        let Some((host_key, overview)) = self
            .host_overviews(Some(host), &page)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let sysctls = current_sysctls(&self.pool, host_key, SysctlScope::Host).await?;
        let dropped: Option<i64> = sqlx::query_scalar(
            "SELECT dropped_reports FROM agent_runs WHERE host_key = ?1 ORDER BY run_key DESC LIMIT 1",
        )
        .bind(host_key)
        .fetch_optional(&self.pool)
        .await?;
        let kernel = match sqlx::query(concat!(
            "SELECT ",
            kernel_columns!(),
            " FROM kernel_counters WHERE host_key = ?1 ORDER BY collected_at DESC LIMIT 1"
        ))
        .bind(host_key)
        .fetch_optional(&self.pool)
        .await?
        {
            Some(row) => kernel_counters(&row, 0)?,
            None => None,
        };
        let breakdowns: Option<Json<sockfleet_domain::Breakdowns>> = sqlx::query_scalar(
            "SELECT data FROM breakdowns WHERE host_key = ?1 ORDER BY collected_at DESC LIMIT 1",
        )
        .bind(host_key)
        .fetch_optional(&self.pool)
        .await?;
        let namespaces = self.namespaces(host_key).await?;
        Ok(Some(HostDetail {
            namespaces,
            overview,
            sysctls,
            kernel,
            breakdowns: breakdowns.map(|Json(breakdowns)| breakdowns),
            dropped_reports: dropped.and_then(|d| u64::try_from(d).ok()).unwrap_or(0),
        }))
    }

    async fn sysctl_history(
        &self,
        host: &HostId,
        name: Option<&str>,
    ) -> Result<Vec<SysctlChange>, StorageError> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT s.name, s.value, s.changed_at FROM sysctl_changes s JOIN hosts h ON h.host_key = s.host_key \
             WHERE h.host_id = ?1 AND (?2 IS NULL OR s.name = ?2) ORDER BY s.changed_at, s.name",
        )
        .bind(host.as_str())
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, value, changed_at)| {
                Ok(SysctlChange {
                    name,
                    value,
                    changed_at: millis_to_time(changed_at)?,
                })
            })
            .collect()
    }

    async fn host_activity(&self) -> Result<Vec<HostActivity>, StorageError> {
        let rows = sqlx::query(HOST_ACTIVITY).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let last_seen = row
                    .try_get::<Option<i64>, _>(3)?
                    .map(millis_to_time)
                    .transpose()?;
                host_activity::<_, i64>(row, last_seen)
            })
            .collect()
    }

    async fn fleet_sysctls(&self) -> Result<Vec<(HostId, Labels, SysctlValues)>, StorageError> {
        // SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum.
        let rows = sqlx::query(
            "SELECT h.host_id, h.labels, s.name, s.value FROM hosts h JOIN \
             (SELECT host_key, name, value, MAX(changed_at) FROM sysctl_changes \
             GROUP BY host_key, name) s ON s.host_key = h.host_key ORDER BY h.host_id, s.name",
        )
        .fetch_all(&self.pool)
        .await?;
        fleet_sysctls(&rows)
    }

    async fn recent_samples(
        &self,
        host: &HostId,
        limit: u32,
    ) -> Result<Vec<StoredSample>, StorageError> {
        let rows = sqlx::query(RECENT_SAMPLES)
            .bind(host.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut samples = rows
            .iter()
            .map(|row| stored_sample::<_, i64>(row, millis_to_time(row.try_get(0)?)?))
            .collect::<Result<Vec<_>, StorageError>>()?;
        samples.reverse();
        Ok(samples)
    }

    async fn series(
        &self,
        host: &HostId,
        query: &SeriesQuery,
    ) -> Result<Vec<SeriesPoint>, StorageError> {
        const SQL: &str = concat!(
            "SELECT (r.collected_at / ?1) * ?1 AS bucket, ",
            state_columns!("CAST(round(avg(r.", ")) AS INTEGER)"),
            " FROM reports r JOIN hosts h ON h.host_key = r.host_key ",
            "WHERE h.host_id = ?2 AND r.collected_at >= ?3 AND r.collected_at < ?4 ",
            "GROUP BY bucket ORDER BY bucket LIMIT ?5"
        );
        const NAMESPACE_SQL: &str = concat!(
            "SELECT (r.collected_at / ?1) * ?1 AS bucket, ",
            state_columns!("CAST(round(avg(r.", ")) AS INTEGER)"),
            " FROM namespace_reports r JOIN hosts h ON h.host_key = r.host_key ",
            "WHERE h.host_id = ?2 AND r.collected_at >= ?3 AND r.collected_at < ?4 AND r.inode = ?6 ",
            "GROUP BY bucket ORDER BY bucket LIMIT ?5"
        );
        // Without a step every report is its own bucket: a 1 ms bucket holds one report per host.
        let step_ms = query.step.map_or(1, |step| {
            i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1)
        });
        let statement = match query.namespace {
            None => sqlx::query(SQL),
            Some(_) => sqlx::query(NAMESPACE_SQL),
        };
        let statement = statement
            .bind(step_ms)
            .bind(host.as_str())
            .bind(query.from.timestamp_millis())
            .bind(query.to.timestamp_millis())
            .bind(i64::from(query.limit));
        let statement = match query.namespace {
            Some(inode) => statement.bind(i64::try_from(inode).unwrap_or(i64::MAX)),
            None => statement,
        };
        let rows = statement.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let time = millis_to_time(row.try_get(0)?)?;
                let states = family_counts::<_, i64>(row, 1)?
                    .ok_or_else(|| StorageError::Corrupt("report without counts".into()))?;
                Ok(SeriesPoint { time, states })
            })
            .collect()
    }
}

async fn register(
    tx: &mut Transaction<'_, Sqlite>,
    session: &AgentSession,
) -> Result<RunKeys, StorageError> {
    let hello = &session.hello;
    let now = Utc::now().timestamp_millis();
    let host: i64 = sqlx::query_scalar(
        "INSERT INTO hosts (host_id, hostname, kernel_release, agent_version, collector, labels, interval_ms, \
         first_seen, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
         ON CONFLICT (host_id) DO UPDATE SET hostname = excluded.hostname, \
         kernel_release = excluded.kernel_release, agent_version = excluded.agent_version, \
         collector = excluded.collector, labels = excluded.labels, interval_ms = excluded.interval_ms, \
         updated_at = excluded.updated_at \
         RETURNING host_key",
    )
    .bind(hello.host_id.as_str())
    .bind(&hello.hostname)
    .bind(&hello.kernel_release)
    .bind(&hello.agent_version)
    .bind(hello.collector.name())
    .bind(Json(&hello.labels))
    .bind(i64::try_from(hello.interval.as_millis()).unwrap_or(i64::MAX))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO agent_runs (host_key, run_id, started_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (host_key, run_id) DO UPDATE SET run_id = excluded.run_id RETURNING run_key",
    )
    .bind(host)
    .bind(&hello.run_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunKeys { host, run })
}

async fn record_sysctl_changes(
    tx: &mut Transaction<'_, Sqlite>,
    host_key: i64,
    scope: SysctlScope,
    observed_at: DateTime<Utc>,
    observed: &SysctlValues,
) -> Result<(), StorageError> {
    let current = current_sysctls(&mut **tx, host_key, scope).await?;
    for (name, value) in observed {
        if current.get(name) == Some(value) {
            continue;
        }
        let insert = match scope {
            SysctlScope::Host => sqlx::query(
                "INSERT INTO sysctl_changes (host_key, name, value, changed_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .bind(host_key),
            SysctlScope::Namespace(_) => sqlx::query(
                "INSERT INTO namespace_sysctl_changes (host_key, inode, name, value, changed_at) \
                 VALUES (?1, ?5, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .bind(host_key),
        };
        let insert = insert
            .bind(name)
            .bind(value.as_deref())
            .bind(observed_at.timestamp_millis());
        let insert = match scope {
            SysctlScope::Host => insert,
            SysctlScope::Namespace(inode) => insert.bind(inode),
        };
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn current_sysctls<'e, E>(
    executor: E,
    host_key: i64,
    scope: SysctlScope,
) -> Result<SysctlValues, StorageError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let query = match scope {
        SysctlScope::Host => sqlx::query_as("SELECT name, value, MAX(changed_at) FROM sysctl_changes WHERE host_key = ?1 GROUP BY name").bind(host_key),
        SysctlScope::Namespace(inode) => sqlx::query_as("SELECT name, value, MAX(changed_at) FROM namespace_sysctl_changes \
             WHERE host_key = ?1 AND inode = ?2 GROUP BY name")
            .bind(host_key)
            .bind(inode),
    };
    let rows: Vec<(String, Option<String>, i64)> = query.fetch_all(executor).await?;
    Ok(rows
        .into_iter()
        .map(|(name, value, _)| (name, value))
        .collect())
}

fn millis_to_time(millis: i64) -> Result<DateTime<Utc>, StorageError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| StorageError::Corrupt(format!("timestamp {millis} ms")))
}

fn overview_from_row(row: &SqliteRow) -> Result<(i64, HostOverview), StorageError> {
    let host_id: String = row.try_get(1)?;
    let interval_ms: i64 = row.try_get(7)?;
    let Json(labels) = row.try_get(6)?;
    let last_seen: Option<i64> = row.try_get(9)?;
    let overview = HostOverview {
        host_id: HostId::parse(&host_id)
            .map_err(|e| StorageError::Corrupt(format!("host id {host_id:?}: {e}")))?,
        hostname: row.try_get(2)?,
        kernel_release: row.try_get(3)?,
        agent_version: row.try_get(4)?,
        collector: row.try_get(5)?,
        labels,
        interval_seconds: Duration::from_millis(u64::try_from(interval_ms).unwrap_or(0)),
        first_seen: millis_to_time(row.try_get(8)?)?,
        last_seen: last_seen.map(millis_to_time).transpose()?,
        states: family_counts::<_, i64>(row, 10)?,
    };
    Ok((row.try_get(0)?, overview))
}
