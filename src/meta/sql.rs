//! Helpers every table module shares: placeholder lists, binding a list of values, reading
//! typed columns, and mapping rows to records.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Encode, Row, Type};

use super::{MetaError, MetaResult};
use crate::oci::Digest;

pub type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `$start, $start+1, …` for `n` values.
pub(super) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds every value, in order, to the next placeholders.
pub(super) fn bind_all<'q, T>(
    mut q: AnyQuery<'q>,
    values: impl IntoIterator<Item = T>,
) -> AnyQuery<'q>
where
    T: 'q + Encode<'q, Any> + Type<Any>,
{
    for v in values {
        q = q.bind(v);
    }
    q
}

/// Binds digests as text.
pub(super) fn bind_digests<'q>(q: AnyQuery<'q>, digests: &'q [Digest]) -> AnyQuery<'q> {
    bind_all(q, digests.iter().map(Digest::as_str))
}

pub(super) fn digest_col(row: &AnyRow, col: &str) -> MetaResult<Digest> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|_| MetaError::Corrupt(format!("digest {s:?} in column {col}")))
}

/// A non-negative integer column (sizes, counts) as u64.
pub(super) fn u64_col(row: &AnyRow, col: &str) -> MetaResult<u64> {
    Ok(row.try_get::<i64, _>(col)?.max(0) as u64)
}

/// A record read from one row, by column name.
pub(super) trait FromRow: Sized {
    fn from_row(row: &AnyRow) -> MetaResult<Self>;
}

pub(super) fn from_rows<T: FromRow>(rows: &[AnyRow]) -> MetaResult<Vec<T>> {
    rows.iter().map(T::from_row).collect()
}
