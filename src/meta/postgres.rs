//! PostgreSQL: everything that differs from SQLite.
//!
//! Transactions run at READ COMMITTED, set explicitly on every write transaction and every
//! connection: an operator's `default_transaction_isolation` (many set `repeatable read`)
//! must not change the locking argument of docs/gc.md, whose re-checks rely on each new
//! statement seeing what committed before its locks were granted. Checks that must stay true until commit take row locks:
//! `FOR SHARE` on the blob and child-manifest rows a manifest references (GC's `FOR UPDATE`
//! on the same rows waits for them, and they wait for it), `FOR UPDATE` on a blob row whose
//! object is being written or deleted.

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

pub const BEGIN_WRITE: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Statements run on every new connection.
pub const CONNECTION_SETUP: &[&str] =
    &["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"];
pub const LOCK_SHARE: &str = " FOR SHARE";
pub const LOCK_UPDATE: &str = " FOR UPDATE";

/// Applies pending migrations over a throwaway tokio-postgres connection (refinery has no sqlx
/// driver).
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                crate::config::redact_url(url)
            )
        })?;
    let conn_task = tokio::spawn(connection);
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .context("applying PostgreSQL migrations")?;
    drop(client);
    let _ = conn_task.await;
    Ok(report.applied_migrations().len())
}
