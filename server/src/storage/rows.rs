//! Decoding rows into records, shared by both backends.

use sockfleet_domain::{Family, FamilyCounts, KernelCounters, StateCounts, TcpState};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StorageError;

/// Reads the 22 count columns starting at `first`; `None` when they are NULL (a host without reports).
///
/// `T` is the integer type the backend returns (`i32` from PostgreSQL `INTEGER`, `i64` from SQLite).
pub(super) fn family_counts<'r, R, T>(
    row: &'r R,
    first: usize,
) -> Result<Option<FamilyCounts>, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database> + Into<i64>,
{
    let mut counts = FamilyCounts::default();
    for (family_index, family) in Family::ALL.into_iter().enumerate() {
        let mut states = StateCounts::default();
        for state in TcpState::ALL {
            let column = first + family_index * TcpState::ALL.len() + state.index();
            let Some(value) = row.try_get::<Option<T>, _>(column)? else {
                return Ok(None);
            };
            let value: i64 = value.into();
            let count = u64::try_from(value).map_err(|_| {
                StorageError::Corrupt(format!("negative count {value} in column {column}"))
            })?;
            states.set(state, count);
        }
        *counts.family_mut(family) = states;
    }
    Ok(Some(counts))
}

/// The 22 counts in column order, as the backends bind them.
pub(super) fn count_values(counts: &FamilyCounts) -> impl Iterator<Item = i64> + '_ {
    Family::ALL
        .into_iter()
        .flat_map(|family| counts.family(family).as_array().iter())
        .map(|count| i64::try_from(*count).unwrap_or(i64::MAX))
}

/// The 16 kernel counters in the column order of `kernel_columns!` (the fields' order).
pub(super) fn kernel_values(counters: &KernelCounters) -> [i64; 16] {
    counters
        .to_array()
        .map(|value| i64::try_from(value).unwrap_or(i64::MAX))
}

/// Reads the 16 kernel counter columns starting at `first`; `None` when they are NULL.
pub(super) fn kernel_counters<'r, R>(
    row: &'r R,
    first: usize,
) -> Result<Option<KernelCounters>, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut values = [0u64; 16];
    for (offset, slot) in values.iter_mut().enumerate() {
        let column = first + offset;
        let Some(value) = row.try_get::<Option<i64>, _>(column)? else {
            return Ok(None);
        };
        *slot = u64::try_from(value).map_err(|_| {
            StorageError::Corrupt(format!("negative counter {value} in column {column}"))
        })?;
    }
    Ok(Some(KernelCounters::from_array(values)))
}

/// Groups rows of (host id, labels, sysctl name, value), ordered by host, into one entry per host.
pub(super) fn fleet_sysctls<'r, R>(
    rows: &'r [R],
) -> Result<
    Vec<(
        sockfleet_domain::HostId,
        crate::alerts::model::Labels,
        sockfleet_domain::SysctlValues,
    )>,
    StorageError,
>
where
    R: Row,
    usize: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Option<&'r str>: Decode<'r, R::Database> + Type<R::Database>,
    sqlx::types::Json<crate::alerts::model::Labels>: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut hosts: Vec<(
        sockfleet_domain::HostId,
        crate::alerts::model::Labels,
        sockfleet_domain::SysctlValues,
    )> = Vec::new();
    for row in rows {
        let host_id: &str = row.try_get(0)?;
        let name: &str = row.try_get(2)?;
        let value: Option<&str> = row.try_get(3)?;
        if hosts
            .last()
            .is_none_or(|(last, _, _)| last.as_str() != host_id)
        {
            let sqlx::types::Json(labels) = row.try_get(1)?;
            let host_id = sockfleet_domain::HostId::parse(host_id)
                .map_err(|error| StorageError::Corrupt(error.to_string()))?;
            hosts.push((host_id, labels, Default::default()));
        }
        if let Some((_, _, sysctls)) = hosts.last_mut() {
            sysctls.insert(name.to_owned(), value.map(str::to_owned));
        }
    }
    Ok(hosts)
}

/// A row of [`super::columns::HOST_ACTIVITY`]; the backend decodes the time (column 3) its own way.
///
/// `I` is the integer type of `interval_ms` (`i32` from PostgreSQL, `i64` from SQLite).
pub(super) fn host_activity<'r, R, I>(
    row: &'r R,
    last_seen: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<super::HostActivity, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    I: Decode<'r, R::Database> + Type<R::Database> + Into<i64>,
    sqlx::types::Json<crate::alerts::model::Labels>: Decode<'r, R::Database> + Type<R::Database>,
{
    let sqlx::types::Json(labels) = row.try_get(1)?;
    let interval_ms: i64 = row.try_get::<I, _>(2)?.into();
    Ok(super::HostActivity {
        host_id: sockfleet_domain::HostId::parse(row.try_get(0)?)
            .map_err(|error| StorageError::Corrupt(error.to_string()))?,
        labels,
        interval: std::time::Duration::from_millis(u64::try_from(interval_ms).unwrap_or(0)),
        last_seen,
    })
}

/// A row of [`super::columns::RECENT_SAMPLES`]; the backend decodes the time (column 0) its own way.
///
/// `T` is the integer type of the count columns, as for [`family_counts`].
pub(super) fn stored_sample<'r, R, T>(
    row: &'r R,
    collected_at: chrono::DateTime<chrono::Utc>,
) -> Result<super::StoredSample, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database> + Into<i64>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    sqlx::types::Json<sockfleet_domain::Breakdowns>: Decode<'r, R::Database> + Type<R::Database>,
{
    let breakdowns: Option<sqlx::types::Json<sockfleet_domain::Breakdowns>> = row.try_get(39)?;
    Ok(super::StoredSample {
        collected_at,
        states: family_counts::<_, T>(row, 1)?.unwrap_or_default(),
        kernel: kernel_counters(row, 23)?,
        breakdowns: breakdowns.map(|sqlx::types::Json(breakdowns)| breakdowns),
    })
}
