//! PostgreSQL: everything that differs from SQLite.
//!
//! Transactions run at READ COMMITTED, set explicitly on every write transaction and every
//! connection: an operator's `default_transaction_isolation` (many set `repeatable read`)
//! must not change the locking argument of docs/gc.md, whose re-checks rely on each new
//! statement seeing what committed before its locks were granted. Checks that must stay true until commit take row locks:
//! `FOR SHARE` on the blob and child-manifest rows a manifest references (GC's `FOR UPDATE`
//! on the same rows waits for them, and they wait for it), `FOR UPDATE` on a blob row whose
//! object is being written or deleted.
//!
//! Row locks are taken in one global order, so that no two transactions can each hold what
//! the other waits for (a deadlock: PostgreSQL fails one after `deadlock_timeout`, and the
//! store retries it, but it costs a second and is a bug): the repository row first; then
//! blobs by digest; then manifests by id; then the rows of the one link, tag or upload the
//! transaction is about; and last, at commit, the GC review queue (manifests by id, then
//! blobs by digest; see reviews.rs). A statement that locks several rows of one table does so
//! through `ORDER BY … FOR UPDATE/SHARE` before it writes them.
//!
//! The usage journal's triggers (migration V9) only append rows no one else touches until a
//! fold deletes them, so they add no lock to this order; the fold takes its own advisory lock
//! and writes only the usage tables, which no other transaction writes.

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

/// The advisory lock every wharf process holds while it migrates (any 64-bit key of ours).
const MIGRATION_LOCK: i64 = 0x7768_6172_665f_6d67; // "wharf_mg"

async fn connect(
    url: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                crate::config::redact_url(url)
            )
        })?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// Migrations applied so far (none on a new database).
async fn applied(
    runner: &refinery::Runner,
    client: &mut tokio_postgres::Client,
) -> anyhow::Result<Vec<refinery::Migration>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    runner
        .get_applied_migrations_async(client)
        .await
        .context("reading the applied PostgreSQL migrations")
}

/// Applies pending migrations over a throwaway tokio-postgres connection (refinery has no sqlx
/// driver), holding a PostgreSQL advisory lock: replicas that start together take turns, and
/// the later ones find nothing to do. Refuses a schema newer than this wharf knows.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let (mut client, task) = connect(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let runner = embedded::migrations::runner();
    let result = async {
        let applied = applied(&runner, &mut client).await?;
        super::refuse_unknown(&applied, runner.get_migrations())?;
        runner
            .run_async(&mut client)
            .await
            .context("applying PostgreSQL migrations")
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = task.await;
    Ok(result?.applied_migrations().len())
}

/// Applied and known migrations (`wharf migrate --status`).
pub async fn status(url: &str) -> anyhow::Result<super::MigrationStatus> {
    let (mut client, task) = connect(url).await?;
    let runner = embedded::migrations::runner();
    let applied = applied(&runner, &mut client).await?;
    drop(client);
    let _ = task.await;
    Ok(super::MigrationStatus::new(
        &applied,
        runner.get_migrations(),
    ))
}
