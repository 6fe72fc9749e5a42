//! SQLite: everything that differs from PostgreSQL.
//!
//! SQLite has one writer at a time. Write transactions start with `BEGIN IMMEDIATE`, which takes
//! the write lock up front: a read-then-write transaction can then never fail to upgrade, and
//! every check made inside a write transaction stays true until it commits (this is the
//! SQLite half of the locking argument that PostgreSQL gets from row locks). In-process writers
//! queue on an async gate instead of SQLite's sleeping busy handler.

use std::path::{Path, PathBuf};

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

/// Run after [`CONNECTION_SETUP`] on the connection of relaxed writes: its commits survive a
/// crash of the process but may be lost (whole, in commit order) in a crash of the system.
pub const RELAXED_SETUP: &[&str] = &["PRAGMA synchronous = NORMAL"];

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

/// Holds an exclusive lock on `<db>.migrate.lock` until dropped: processes that start
/// together on one database file migrate one after the other.
struct MigrationLock {
    _file: std::fs::File,
}

impl MigrationLock {
    fn take(db: &Path) -> anyhow::Result<Self> {
        use std::os::unix::io::AsRawFd;
        let mut name = db.as_os_str().to_owned();
        name.push(".migrate.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .with_context(|| {
                format!(
                    "cannot open the migration lock {}",
                    Path::new(&name).display()
                )
            })?;
        // SAFETY: flock on a valid open descriptor; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("taking the migration lock");
        }
        Ok(MigrationLock { _file: file })
    }
}

/// Migrations applied so far (none on a new database).
fn applied(
    runner: &refinery::Runner,
    conn: &mut rusqlite::Connection,
) -> anyhow::Result<Vec<refinery::Migration>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refinery_schema_history')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    runner
        .get_applied_migrations(conn)
        .context("reading the applied SQLite migrations")
}

fn open(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database directory {}", dir.display()))?;
    }
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// Creates the file if needed and applies pending migrations, one process at a time. Refuses
/// a schema newer than this wharf knows.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let path = path_of(url)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut conn = open(&path)?;
        let _lock = MigrationLock::take(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let runner = embedded::migrations::runner();
        let applied = applied(&runner, &mut conn)?;
        super::refuse_unknown(&applied, runner.get_migrations())?;
        let report = runner
            .run(&mut conn)
            .context("applying SQLite migrations")?;
        Ok(report.applied_migrations().len())
    })
    .await?
}

/// Applied and known migrations (`wharf migrate --status`).
pub async fn status(url: &str) -> anyhow::Result<super::MigrationStatus> {
    let path = path_of(url)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<super::MigrationStatus> {
        let mut conn = open(&path)?;
        let runner = embedded::migrations::runner();
        let applied = applied(&runner, &mut conn)?;
        Ok(super::MigrationStatus::new(
            &applied,
            runner.get_migrations(),
        ))
    })
    .await?
}
