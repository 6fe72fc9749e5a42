//! The metadata store: the single source of truth for what the registry holds.
//!
//! Every statement is written once, in SQL both dialects accept (`$n` placeholders, `ON
//! CONFLICT`, `RETURNING`), and runs through sqlx's `Any` driver. What differs — how a write
//! transaction starts, row-lock clauses, migrations, connection setup — lives in `sqlite.rs`
//! and `postgres.rs`. Callers never learn which database they talk to.
//!
//! One module per table group, each adding to [`MetaStore`] (reads on the pool, and writes
//! that are one transaction) and to [`WriteTx`] (statements other modules compose into their
//! transactions): `repositories`, `blobs`, `uploads`, `manifests`, `tags`, `reviews` (the GC
//! queue), `gc`, `usage`, and `seed` (bulk rows for benchmarks). Every write runs in a
//! [`WriteTx`], which only [`MetaStore::begin_write`] hands out, or is one statement through
//! [`MetaStore::write_relaxed`] (an upload's progress); both take SQLite's writer gate, so no
//! write can forget it.

/// How often a transaction that lost a race (deadlock, serialization failure) is run again
/// before the client is told to retry (503).
const RACE_RETRIES: u32 = 4;

/// Evaluates the transaction expression again, after a short randomised backoff, when it lost
/// a race. (A macro rather than a function over a closure: the futures stay `Send`.)
macro_rules! retrying {
    ($what:expr, $transaction:expr) => {{
        let mut attempt = 0;
        loop {
            match $transaction.await {
                Err($crate::meta::MetaError::Race(msg)) if attempt < $crate::meta::RACE_RETRIES => {
                    attempt += 1;
                    $crate::meta::race_backoff($what, attempt, &msg).await;
                }
                result => break result,
            }
        }
    }};
}

async fn race_backoff(what: &'static str, attempt: u32, error: &str) {
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 10);
    // A deadlock means two transactions broke the global lock order (postgres.rs): worth a
    // warning with PostgreSQL's account of it. Serialization failures are expected races.
    if error.contains("deadlock") {
        tracing::warn!(
            what,
            attempt,
            error,
            "transaction deadlocked; running it again"
        );
    } else {
        tracing::info!(
            what,
            attempt,
            error,
            "transaction lost a race; running it again"
        );
    }
    tokio::time::sleep(Duration::from_millis((5 << attempt) + jitter)).await;
}

mod aggregates;
mod blobs;
mod error;
mod gc;
mod imports;
mod leases;
mod manifests;
mod names;
mod postgres;
mod repositories;
mod reviews;
pub mod seed;
mod sql;
mod sqlite;
mod tags;
mod uploads;
mod usage;

pub use aggregates::FoldOutcome;
pub use blobs::{BlobCommit, BlobRow};
pub use error::{MetaError, MetaResult};
pub use gc::{BlobDelete, GcBlob, GcManifest, GcPlan, GcPolicy};
pub use manifests::{ManifestRecord, NewManifest, PutManifestOutcome, Referrer};
pub use names::Names;
pub use repositories::namespaces_of;
pub use sql::now_ms;
pub use uploads::UploadRecord;
pub use usage::{
    LargestBlob, LargestImage, NamespaceUsage, RegistryUsage, RepositoryUsage, UsageFigures,
};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::AnyConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            anyhow::bail!(
                "unsupported database.url {:?}: use sqlite://path/to/wharf.db or postgres://user@host:5432/db",
                crate::config::redact_url(url)
            )
        }
    }

    fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite::BEGIN_WRITE,
            Dialect::Postgres => postgres::BEGIN_WRITE,
        }
    }

    fn lock_share(self) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite::LOCK_SHARE,
            Dialect::Postgres => postgres::LOCK_SHARE,
        }
    }

    fn lock_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite::LOCK_UPDATE,
            Dialect::Postgres => postgres::LOCK_UPDATE,
        }
    }
}

/// Applies pending migrations, one process at a time; returns how many were applied.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    match Dialect::of_url(url)? {
        Dialect::Sqlite => sqlite::migrate(url).await,
        Dialect::Postgres => postgres::migrate(url).await,
    }
}

/// Which migrations the database has, and which this wharf would apply.
pub async fn migration_status(url: &str) -> anyhow::Result<MigrationStatus> {
    match Dialect::of_url(url)? {
        Dialect::Sqlite => sqlite::status(url).await,
        Dialect::Postgres => postgres::status(url).await,
    }
}

/// A migration: version and name (`V3__gc_review_queue` is 3, `gc_review_queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationInfo {
    pub version: u32,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub applied: Vec<MigrationInfo>,
    /// Known to this wharf and not applied yet.
    pub pending: Vec<MigrationInfo>,
    /// Applied by a newer wharf: this one does not know them.
    pub unknown: Vec<MigrationInfo>,
}

impl MigrationStatus {
    fn new(applied: &[refinery::Migration], known: &[refinery::Migration]) -> Self {
        let info = |m: &refinery::Migration| MigrationInfo {
            version: m.version(),
            name: m.name().to_owned(),
        };
        let applied_versions: Vec<u32> = applied.iter().map(|m| m.version()).collect();
        let known_versions: Vec<u32> = known.iter().map(|m| m.version()).collect();
        MigrationStatus {
            applied: applied.iter().map(info).collect(),
            pending: known
                .iter()
                .filter(|m| !applied_versions.contains(&m.version()))
                .map(info)
                .collect(),
            unknown: applied
                .iter()
                .filter(|m| !known_versions.contains(&m.version()))
                .map(info)
                .collect(),
        }
    }
}

/// A database migrated by a newer wharf may hold what this one cannot read correctly (new
/// states, new tables it would not maintain): refuse to run against it, naming both versions.
fn refuse_unknown(
    applied: &[refinery::Migration],
    known: &[refinery::Migration],
) -> anyhow::Result<()> {
    let status = MigrationStatus::new(applied, known);
    if let Some(newest) = status.unknown.iter().max_by_key(|m| m.version) {
        let ours = known.iter().map(|m| m.version()).max().unwrap_or(0);
        anyhow::bail!(
            "the database schema is at version {} ({}), applied by a newer wharf; this wharf knows \
             versions up to {ours}. Run the newer wharf, or restore a backup taken before the upgrade",
            newest.version,
            newest.name
        );
    }
    Ok(())
}

#[derive(Clone)]
pub struct MetaStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite only: in-process writers queue here rather than in SQLite's busy handler.
    write_gate: Option<Arc<Mutex<()>>>,
    /// SQLite only: one connection whose commits do not wait for the disk (see
    /// [`MetaStore::write_relaxed`]).
    relaxed: Option<AnyPool>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// The manifest (or blob) is still referenced by this manifest.
    ReferencedBy(crate::oci::Digest),
}

/// A write transaction (plus, on SQLite, this process's place at the write gate).
/// Dropping it without `commit` rolls back.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    dialect: Dialect,
    /// GC reviews collected by the statements so far, written at commit.
    reviews: reviews::PendingReviews,
    _gate: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// The transaction's connection, for the statements of the table modules.
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Writes the collected GC reviews (the transaction's last locks, in the global order),
    /// then commits.
    pub async fn commit(mut self) -> MetaResult<()> {
        self.write_reviews().await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Pool options whose connections first run `setup`, then `extra`.
fn with_setup(
    options: AnyPoolOptions,
    setup: &'static [&'static str],
    extra: &'static [&'static str],
) -> AnyPoolOptions {
    options.after_connect(move |conn, _| {
        Box::pin(async move {
            for stmt in setup.iter().chain(extra) {
                sqlx::query(stmt).execute(&mut *conn).await?;
            }
            Ok(())
        })
    })
}

impl MetaStore {
    /// Runs migrations, then opens the pool.
    pub async fn open(url: &str, max_connections: u32) -> MetaResult<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        let applied = migrate(url).await?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        let options = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30));
        let setup = match dialect {
            Dialect::Sqlite => sqlite::CONNECTION_SETUP,
            Dialect::Postgres => postgres::CONNECTION_SETUP,
        };
        let pool = with_setup(options, setup, &[])
            .connect(url)
            .await
            .with_context(|| format!("cannot open database {}", crate::config::redact_url(url)))?;
        let relaxed = match dialect {
            Dialect::Sqlite => Some(
                with_setup(
                    AnyPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(30)),
                    setup,
                    sqlite::RELAXED_SETUP,
                )
                .connect_lazy(url)
                .with_context(|| {
                    format!("cannot open database {}", crate::config::redact_url(url))
                })?,
            ),
            Dialect::Postgres => None,
        };
        let store = MetaStore {
            pool,
            dialect,
            write_gate: (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(()))),
            relaxed,
        };
        store.backfill_namespaces().await?;
        store.ensure_usage_built().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Connections of the pool: (in use, idle).
    pub fn pool_usage(&self) -> (u32, u32) {
        let idle = self.pool.num_idle() as u32;
        (self.pool.size().saturating_sub(idle), idle)
    }

    pub async fn ping(&self) -> MetaResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Whether a commit of [`MetaStore::write_relaxed`] can be lost by a crash of the
    /// operating system (never by a crash of the process).
    pub fn relaxed_writes_may_be_lost(&self) -> bool {
        self.relaxed.is_some()
    }

    /// One write statement that is its own transaction, for state whose latest commits the
    /// caller can afford to lose in an operating-system crash or power loss (an upload's
    /// progress: the bytes it describes are not synced either). On SQLite it waits at the
    /// writer gate like a transaction would but costs no BEGIN and COMMIT round trips, and it
    /// commits without syncing the WAL (`synchronous = NORMAL`); the next durable commit syncs
    /// it with its own, and a crash can only take the database back to an earlier state, never
    /// to an inconsistent one. On PostgreSQL it is an ordinary durable commit.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn write_relaxed<'q>(
        &self,
        statement: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> MetaResult<sqlx::any::AnyQueryResult> {
        let started = std::time::Instant::now();
        let _gate = match &self.write_gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        metrics::histogram!(crate::metrics::DB_WRITE_WAIT).record(started.elapsed().as_secs_f64());
        Ok(statement
            .execute(self.relaxed.as_ref().unwrap_or(&self.pool))
            .await?)
    }

    /// The one way to write a transaction. On SQLite it first takes the in-process writer
    /// gate: a write that bypassed it would meet SQLite's busy handler, which sleeps for up to
    /// 100 ms at a time.
    #[tracing::instrument(skip_all)]

    pub async fn begin_write(&self) -> MetaResult<WriteTx> {
        let started = std::time::Instant::now();
        let gate = match &self.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        let tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        metrics::histogram!(crate::metrics::DB_WRITE_WAIT).record(started.elapsed().as_secs_f64());
        Ok(WriteTx {
            tx,
            dialect: self.dialect,
            reviews: Default::default(),
            _gate: gate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn synchronous(pool: &AnyPool) -> i64 {
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        level
    }

    /// Only the relaxed connection may commit without syncing: every other write (blobs,
    /// manifests, tags) must survive power loss.
    #[tokio::test]
    async fn only_relaxed_writes_skip_the_sync_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/wharf.db", dir.path().display());
        let store = MetaStore::open(&url, 4).await.unwrap();
        assert!(store.relaxed_writes_may_be_lost());
        // 2 = FULL, 1 = NORMAL.
        assert_eq!(synchronous(&store.pool).await, 2);
        assert_eq!(synchronous(store.relaxed.as_ref().unwrap()).await, 1);
        let mut tx = store.begin_write().await.unwrap();
        assert_eq!(
            sqlx::query_as::<_, (i64,)>("PRAGMA synchronous")
                .fetch_one(tx.conn())
                .await
                .unwrap()
                .0,
            2
        );
        tx.commit().await.unwrap();
    }
}
