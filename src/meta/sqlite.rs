//! SQLite: everything that differs from PostgreSQL.
//!
//! SQLite has one writer at a time. Write transactions start with `BEGIN IMMEDIATE`, which takes
//! the write lock up front: a read-then-write transaction can then never fail to upgrade, and
//! every check made inside a write transaction stays true until it commits (this is the
//! SQLite half of the locking argument that PostgreSQL gets from row locks). In-process writers
//! queue on an async gate instead of SQLite's sleeping busy handler.

use std::path::PathBuf;

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// Row locks are implied by the database-wide write lock.
pub const LOCK_SHARE: &str = "";
pub const LOCK_UPDATE: &str = "";

/// Statements run on every new connection.
pub const CONNECTION_SETUP: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    // FULL: a committed transaction survives power loss, not only a process crash.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 30000",
];

/// `sqlite://path/to/db?opts` → the file path.
pub fn path_of(url: &str) -> anyhow::Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .context("a SQLite database URL starts with sqlite://")?;
    let path = rest.split('?').next().unwrap_or_default();
    anyhow::ensure!(
        !path.is_empty() && path != ":memory:",
        "database.url {url:?} names no file: use sqlite://path/to/wharf.db (an in-memory database would lose everything)"
    );
    Ok(PathBuf::from(path))
}

/// Creates the file if needed and applies pending migrations.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let path = path_of(url)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the database directory {}", dir.display())
            })?;
        }
        let mut conn = rusqlite::Connection::open(&path)
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let report = embedded::migrations::runner()
            .run(&mut conn)
            .context("applying SQLite migrations")?;
        Ok(report.applied_migrations().len())
    })
    .await?
}
