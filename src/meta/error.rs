//! Metadata errors, classified once from what the database said, so that the HTTP layer can
//! tell a retryable moment (busy, deadlock, timeout) from a fault.

use sqlx::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database is busy, unreachable or timed out, or a transaction lost a race it can
    /// win on retry (deadlock, serialization failure).
    #[error("database busy: {0}")]
    Busy(String),
    /// The transaction lost a race with another (deadlock, serialization failure): running it
    /// again is expected to succeed, and the store does so a few times before giving up.
    #[error("transaction lost a race: {0}")]
    Race(String),
    /// A constraint refused a write (unique, foreign key, check).
    #[error("database constraint violated: {0}")]
    Conflict(String),
    /// A row this code relies on is not there (a broken invariant, not an expected miss:
    /// expected misses are `Option`s).
    #[error("not found in the database: {0}")]
    NotFound(String),
    /// A stored value this code cannot read (e.g. a malformed digest).
    #[error("corrupt data in the database: {0}")]
    Corrupt(String),
    /// The database has no room for the write.
    #[error("database full: {0}")]
    Full(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// Opening, migrating or configuring the database.
    #[error(transparent)]
    Setup(#[from] anyhow::Error),
}

pub type MetaResult<T> = Result<T, MetaError>;

impl MetaError {
    /// True when the same request may well succeed if tried again shortly.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetaError::Busy(_) | MetaError::Race(_))
    }
}

/// PostgreSQL SQLSTATEs worth a retry: serialization failure, deadlock, lock not available,
/// statement timeout / cancel, too many connections, and the connection-exception class.
fn pg_retryable(code: &str) -> bool {
    matches!(
        code,
        "55P03" | "57014" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

/// PostgreSQL SQLSTATEs of a transaction that lost a race: serialization failure, deadlock.
fn pg_race(code: &str) -> bool {
    matches!(code, "40001" | "40P01")
}

/// SQLite result codes (the primary code is the low byte of the extended one).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_FULL: i64 = 13;

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                MetaError::Busy(e.to_string())
            }
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let sqlite = code.parse::<i64>().ok().map(|c| c & 0xff);
                if pg_race(&code) {
                    // PostgreSQL names the sessions and locks of a deadlock in the detail:
                    // keep it, since a deadlock means two transactions broke the lock order.
                    let detail = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|pg| pg.detail())
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    return MetaError::Race(format!("{e}{detail}"));
                }
                if pg_retryable(&code) || matches!(sqlite, Some(SQLITE_BUSY | SQLITE_LOCKED)) {
                    return MetaError::Busy(e.to_string());
                }
                if code == "53100" || sqlite == Some(SQLITE_FULL) {
                    return MetaError::Full(e.to_string());
                }
                match db.kind() {
                    ErrorKind::UniqueViolation
                    | ErrorKind::ForeignKeyViolation
                    | ErrorKind::CheckViolation
                    | ErrorKind::NotNullViolation => MetaError::Conflict(e.to_string()),
                    _ => MetaError::Database(e),
                }
            }
            _ => MetaError::Database(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_retryable() {
        assert!(MetaError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!MetaError::from(sqlx::Error::RowNotFound).is_retryable());
    }

    #[test]
    fn postgres_codes() {
        for c in ["55P03", "08006"] {
            assert!(pg_retryable(c), "{c}");
        }
        for c in ["40001", "40P01"] {
            assert!(pg_race(c) && !pg_retryable(c), "{c}");
        }
        for c in ["23505", "22021", "42P01"] {
            assert!(!pg_retryable(c), "{c}");
        }
    }
}
