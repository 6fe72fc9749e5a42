//! The metadata store: the single source of truth for what the registry holds.
//!
//! Every statement is written once, in SQL both dialects accept (`$n` placeholders, `ON
//! CONFLICT`, `RETURNING`), and runs through sqlx's `Any` driver. What differs — how a write
//! transaction starts, row-lock clauses, migrations, connection setup — lives in `sqlite.rs`
//! and `postgres.rs`. Callers never learn which database they talk to.

mod gc;
mod postgres;
mod sqlite;
mod usage;

pub use gc::{BlobDelete, GcBlob, GcManifest, GcPlan, GcPolicy};
pub use usage::{
    LargestBlob, LargestImage, NamespaceUsage, RegistryUsage, RepositoryUsage, UsageFigures,
};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::oci::{Digest, RepoName, Tag};

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

/// Applies pending migrations; returns how many were applied.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    match Dialect::of_url(url)? {
        Dialect::Sqlite => sqlite::migrate(url).await,
        Dialect::Postgres => postgres::migrate(url).await,
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct MetaStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite only: in-process writers queue here rather than in SQLite's busy handler.
    write_gate: Option<Arc<Mutex<()>>>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repository: String,
    pub size: u64,
    pub hash_state: Vec<u8>,
    pub driver_state: String,
}

#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub payload: Vec<u8>,
}

/// Everything recorded for a manifest PUT.
pub struct NewManifest<'a> {
    pub repository: &'a RepoName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub config: Option<&'a Digest>,
    pub subject: Option<&'a Digest>,
    pub payload: &'a [u8],
    pub blobs: &'a [Digest],
    pub children: &'a [Digest],
    pub tag: Option<&'a Tag>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PutManifestOutcome {
    Stored,
    MissingBlob(Digest),
    MissingChild(Digest),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// The manifest (or blob) is still referenced by this manifest.
    ReferencedBy(Digest),
}

/// A write transaction (plus, on SQLite, this process's place at the write gate).
/// Dropping it without `commit` rolls back.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    dialect: Dialect,
    _gate: Option<OwnedMutexGuard<()>>,
}

/// An open commit of an uploaded blob: the blob row is locked until `finish` or drop.
pub struct BlobCommit {
    tx: WriteTx,
    needs_object: bool,
}

fn digest_col(row: &AnyRow, col: &str) -> anyhow::Result<Digest> {
    let s: String = row.try_get(col)?;
    s.parse()
        .with_context(|| format!("corrupt digest {s:?} in the database"))
}

/// `$start, $start+1, …` for `n` values.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MetaStore {
    /// Runs migrations, then opens the pool.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url)?;
        let applied = migrate(url).await?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        let options = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30));
        let options = match dialect {
            Dialect::Sqlite => options.after_connect(|conn, _| {
                Box::pin(async move {
                    for stmt in sqlite::CONNECTION_SETUP {
                        sqlx::query(stmt).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            }),
            Dialect::Postgres => options,
        };
        let pool = options
            .connect(url)
            .await
            .with_context(|| format!("cannot open database {}", crate::config::redact_url(url)))?;
        let store = MetaStore {
            pool,
            dialect,
            write_gate: (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(()))),
        };
        store.backfill_namespaces().await?;
        Ok(store)
    }

    /// Repositories created before namespaces were recorded get theirs (once per database:
    /// done is recorded in wharf_state).
    async fn backfill_namespaces(&self) -> anyhow::Result<()> {
        const DONE: &str = "namespaces_backfilled";
        let done: Option<String> =
            sqlx::query_scalar("SELECT value FROM wharf_state WHERE key = $1")
                .bind(DONE)
                .fetch_optional(&self.pool)
                .await?;
        if done.is_some() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT r.id, r.name FROM repositories r
             WHERE r.name LIKE '%/%' AND NOT EXISTS (SELECT 1 FROM repository_namespaces rn WHERE rn.repository_id = r.id)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tx = self.begin_write().await?;
        for r in &rows {
            insert_namespaces(&mut tx.tx, r.try_get(0)?, &r.try_get::<String, _>(1)?).await?;
        }
        sqlx::query(
            "INSERT INTO wharf_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(DONE)
        .bind(rows.len().to_string())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// On SQLite, the in-process writer gate (None on PostgreSQL). Every write takes it, also
    /// single-statement ones: a write that bypassed it would meet SQLite's busy handler, which
    /// sleeps for up to 100 ms at a time.
    async fn gate(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        }
    }

    pub async fn begin_write(&self) -> anyhow::Result<WriteTx> {
        let gate = self.gate().await;
        let tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        Ok(WriteTx {
            tx,
            dialect: self.dialect,
            _gate: gate,
        })
    }

    // ---- reads -------------------------------------------------------------------------

    /// Size of `digest` if this repository may serve it: the blob is stored (active) and is
    /// linked to the repository (uploaded or mounted there) or referenced by one of its
    /// manifests.
    pub async fn blob_in_repository(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> anyhow::Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM blobs b, repositories r
             WHERE r.name = $1 AND b.digest = $2 AND b.status = 'active'
               AND (EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = r.id AND rb.blob_digest = b.digest)
                 OR EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = r.id AND mb.blob_digest = b.digest))",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Size of `digest` if it is stored anywhere in the registry.
    pub async fn blob_stored(&self, digest: &Digest) -> anyhow::Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1 AND status = 'active'")
            .bind(digest.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    /// Every blob row: digest, size, status (fsck).
    pub async fn all_blobs(&self) -> anyhow::Result<Vec<(Digest, u64, String)>> {
        let rows = sqlx::query("SELECT digest, size, status FROM blobs ORDER BY digest")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    digest_col(r, "digest")?,
                    r.try_get::<i64, _>(1)? as u64,
                    r.try_get(2)?,
                ))
            })
            .collect()
    }

    /// Whether a row exists for the blob, whatever its status.
    pub async fn blob_row_exists(&self, digest: &Digest) -> anyhow::Result<bool> {
        let row = sqlx::query("SELECT 1 FROM blobs WHERE digest = $1")
            .bind(digest.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn repository_exists(&self, repo: &RepoName) -> anyhow::Result<bool> {
        let row = sqlx::query("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> anyhow::Result<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.payload FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| manifest_record(&r)).transpose()
    }

    pub async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> anyhow::Result<Option<ManifestRecord>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.payload
             FROM repositories r JOIN tags t ON t.repository_id = r.id JOIN manifests m ON m.id = t.manifest_id
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| manifest_record(&r)).transpose()
    }

    /// Tags after `last` in byte order, at most `limit` (None: all). None if the repository
    /// does not exist.
    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: Option<u32>,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let Some(repo_id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        // One row, the names joined, rather than a row per tag: at 100k tags the per-row cost
        // of the driver dominates. Tag names cannot hold a comma.
        let joined: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(name, ',' ORDER BY name) FROM (
                 SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3
             ) page",
        )
        .bind(repo_id)
        .bind(last.unwrap_or(""))
        .bind(limit.map_or(i64::MAX, i64::from))
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(split_names(joined)))
    }

    /// Repositories holding at least one manifest, after `last` in byte order.
    pub async fn catalog(
        &self,
        last: Option<&str>,
        limit: Option<u32>,
    ) -> anyhow::Result<Vec<String>> {
        // As for tags: one row of joined names. Repository names cannot hold a comma.
        let joined: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(name, ',' ORDER BY name) FROM (
                 SELECT r.name FROM repositories r
                 WHERE r.name > $1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
                 ORDER BY r.name LIMIT $2
             ) page",
        )
        .bind(last.unwrap_or(""))
        .bind(limit.map_or(i64::MAX, i64::from))
        .fetch_one(&self.pool)
        .await?;
        Ok(split_names(joined))
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> anyhow::Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.artifact_type, m.payload
             FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.subject_digest = $2 AND ($3 = '' OR m.artifact_type = $3)
             ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: digest_col(r, "digest")?,
                    media_type: r.try_get("media_type")?,
                    artifact_type: r.try_get("artifact_type")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    pub async fn upload(&self, id: &str) -> anyhow::Result<Option<UploadRecord>> {
        let row = sqlx::query(
            "SELECT u.id, r.name, u.size, u.hash_state, u.driver_state
             FROM uploads u JOIN repositories r ON r.id = u.repository_id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UploadRecord {
                id: r.try_get(0)?,
                repository: r.try_get(1)?,
                size: r.try_get::<i64, _>(2)? as u64,
                hash_state: r.try_get(3)?,
                driver_state: r.try_get(4)?,
            })
        })
        .transpose()
    }

    async fn repository_id(&self, repo: &RepoName) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0)))
    }

    // ---- uploads -----------------------------------------------------------------------

    pub async fn create_upload(
        &self,
        repo: &RepoName,
        id: &str,
        hash_state: &[u8],
        driver_state: &str,
    ) -> anyhow::Result<()> {
        let mut tx = self.begin_write().await?;
        let repo_id = tx.ensure_repository(repo).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO uploads (id, repository_id, size, hash_state, driver_state, created_at, updated_at)
             VALUES ($1, $2, 0, $3, $4, $5, $5)",
        )
        .bind(id)
        .bind(repo_id)
        .bind(hash_state)
        .bind(driver_state)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Records an upload's progress if it is still at `expected_size` (another request may have
    /// moved it on). Returns false if it was not.
    pub async fn save_upload_progress(
        &self,
        id: &str,
        expected_size: u64,
        size: u64,
        hash_state: &[u8],
        driver_state: &str,
    ) -> anyhow::Result<bool> {
        let query = sqlx::query(
            "UPDATE uploads SET size = $3, hash_state = $4, driver_state = $5, updated_at = $6
             WHERE id = $1 AND size = $2",
        )
        .bind(id)
        .bind(expected_size as i64)
        .bind(size as i64)
        .bind(hash_state)
        .bind(driver_state)
        .bind(now_ms());
        let _gate = self.gate().await;
        let done = query.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delete_upload(&self, id: &str) -> anyhow::Result<bool> {
        let query = sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id);
        let _gate = self.gate().await;
        let done = query.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uploads not touched since `before_ms`.
    pub async fn stale_uploads(&self, before_ms: i64) -> anyhow::Result<Vec<UploadRecord>> {
        let rows = sqlx::query(
            "SELECT u.id, r.name, u.size, u.hash_state, u.driver_state
             FROM uploads u JOIN repositories r ON r.id = u.repository_id WHERE u.updated_at < $1",
        )
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UploadRecord {
                    id: r.try_get(0)?,
                    repository: r.try_get(1)?,
                    size: r.try_get::<i64, _>(2)? as u64,
                    hash_state: r.try_get(3)?,
                    driver_state: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Starts committing an uploaded blob. The blob row is created or locked; if
    /// [`BlobCommit::needs_object`] the caller must put the object in place before
    /// [`BlobCommit::finish`] (the row lock keeps GC from deleting it meanwhile).
    pub async fn begin_blob_commit(
        &self,
        digest: &Digest,
        size: u64,
    ) -> anyhow::Result<BlobCommit> {
        let mut tx = self.begin_write().await?;
        // A few rounds at most: a row can vanish between our insert and our lock only when GC
        // finishes deleting it in between, and then the next insert succeeds.
        for _ in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO blobs (digest, size, status, created_at) VALUES ($1, $2, 'active', $3)
                 ON CONFLICT (digest) DO NOTHING",
            )
            .bind(digest.as_str())
            .bind(size as i64)
            .bind(now_ms())
            .execute(&mut *tx.tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                return Ok(BlobCommit {
                    tx,
                    needs_object: true,
                });
            }
            let sql = format!(
                "SELECT status FROM blobs WHERE digest = $1{}",
                tx.dialect.lock_update()
            );
            let Some(row) = sqlx::query(&sql)
                .bind(digest.as_str())
                .fetch_optional(&mut *tx.tx)
                .await?
            else {
                continue;
            };
            let status: String = row.try_get(0)?;
            if status == "active" {
                return Ok(BlobCommit {
                    tx,
                    needs_object: false,
                });
            }
            // GC has committed to deleting this object and may have removed it already; the
            // upload writes it again, under this row lock, and revives the row.
            sqlx::query("UPDATE blobs SET status = 'active', created_at = $2 WHERE digest = $1")
                .bind(digest.as_str())
                .bind(now_ms())
                .execute(&mut *tx.tx)
                .await?;
            return Ok(BlobCommit {
                tx,
                needs_object: true,
            });
        }
        anyhow::bail!("blob {digest} kept changing under the upload; retry")
    }

    /// Links a stored blob into `repo` (a cross-repository mount). Returns its size, or None if
    /// the blob is not stored.
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> anyhow::Result<Option<u64>> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT size FROM blobs WHERE digest = $1 AND status = 'active'{}",
            tx.dialect.lock_share()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx.tx)
            .await?
        else {
            return Ok(None);
        };
        let size = row.try_get::<i64, _>(0)? as u64;
        let repo_id = tx.ensure_repository(repo).await?;
        tx.link(repo_id, digest).await?;
        tx.review_blob(digest, now_ms()).await?;
        tx.commit().await?;
        Ok(Some(size))
    }

    /// Removes a blob's link from a repository, unless a manifest there still references it.
    pub async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> anyhow::Result<DeleteOutcome> {
        let mut tx = self.begin_write().await?;
        let Some(repo_id) = tx.repository_id(repo).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let user = sqlx::query(
            "SELECT m.digest FROM manifest_blobs mb JOIN manifests m ON m.id = mb.manifest_id
             WHERE mb.repository_id = $1 AND mb.blob_digest = $2 LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
        if let Some(row) = user {
            return Ok(DeleteOutcome::ReferencedBy(digest_col(&row, "digest")?));
        }
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE repository_id = $1 AND blob_digest = $2",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .execute(&mut *tx.tx)
        .await?;
        if done.rows_affected() == 1 {
            tx.review_blob(digest, 0).await?;
        }
        tx.commit().await?;
        Ok(if done.rows_affected() == 1 {
            DeleteOutcome::Deleted
        } else {
            DeleteOutcome::NotFound
        })
    }

    // ---- manifests and tags ------------------------------------------------------------

    /// Records a manifest, its edges and its tag in one transaction. Every referenced blob
    /// must be stored and servable in the repository, and every child must be a manifest of
    /// the repository; they stay locked until commit so that GC cannot remove them meanwhile.
    pub async fn put_manifest(&self, m: &NewManifest<'_>) -> anyhow::Result<PutManifestOutcome> {
        let mut tx = self.begin_write().await?;
        let repo_id = tx.ensure_repository(m.repository).await?;
        let now = now_ms();

        let mut referenced_size: i64 = 0;
        if !m.blobs.is_empty() {
            let sql = format!(
                "SELECT b.digest, b.size FROM blobs b
                 WHERE b.digest IN ({}) AND b.status = 'active'
                   AND (EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = $1 AND rb.blob_digest = b.digest)
                     OR EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = $1 AND mb.blob_digest = b.digest)){}",
                placeholders(2, m.blobs.len()),
                tx.dialect.lock_share()
            );
            let mut q = sqlx::query(&sql).bind(repo_id);
            for d in m.blobs {
                q = q.bind(d.as_str());
            }
            let rows = q.fetch_all(&mut *tx.tx).await?;
            let found: HashSet<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
            if let Some(missing) = m.blobs.iter().find(|d| !found.contains(d.as_str())) {
                return Ok(PutManifestOutcome::MissingBlob(missing.clone()));
            }
            referenced_size = rows.iter().map(|r| r.get::<i64, _>(1)).sum();
        }

        let mut child_ids = Vec::with_capacity(m.children.len());
        if !m.children.is_empty() {
            let sql = format!(
                "SELECT id, digest, total_size FROM manifests WHERE repository_id = $1 AND digest IN ({}){}",
                placeholders(2, m.children.len()),
                tx.dialect.lock_share()
            );
            let mut q = sqlx::query(&sql).bind(repo_id);
            for d in m.children {
                q = q.bind(d.as_str());
            }
            let rows = q.fetch_all(&mut *tx.tx).await?;
            let found: HashSet<String> = rows.iter().map(|r| r.get::<String, _>(1)).collect();
            if let Some(missing) = m.children.iter().find(|d| !found.contains(d.as_str())) {
                return Ok(PutManifestOutcome::MissingChild(missing.clone()));
            }
            for r in &rows {
                child_ids.push(r.get::<i64, _>(0));
                referenced_size += r.get::<i64, _>(2);
            }
        }

        // A re-push of a stored manifest refreshes its age (GC's grace period counts from the
        // latest push) and, on PostgreSQL, locks its row: if GC is deleting it, this waits and
        // then inserts it afresh. Edges are idempotent, so both paths write them.
        let manifest_id: i64 = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, config_digest, subject_digest,
                                    payload, total_size, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at
             RETURNING id",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.config.map(Digest::as_str))
        .bind(m.subject.map(Digest::as_str))
        .bind(m.payload)
        .bind(m.payload.len() as i64 + referenced_size)
        .bind(now)
        .fetch_one(&mut *tx.tx)
        .await?
        .try_get(0)?;
        tx.insert_edges(manifest_id, repo_id, m.blobs, &child_ids)
            .await?;
        // Untagged (or untagged later) it becomes garbage once the grace period is over.
        tx.review_manifest(manifest_id, now).await?;

        if let Some(tag) = m.tag {
            // A tag that moves may leave its previous manifest untagged.
            let previous =
                sqlx::query("SELECT manifest_id FROM tags WHERE repository_id = $1 AND name = $2")
                    .bind(repo_id)
                    .bind(tag.as_str())
                    .fetch_optional(&mut *tx.tx)
                    .await?;
            if let Some(prev) = previous
                .map(|r| r.get::<i64, _>(0))
                .filter(|p| *p != manifest_id)
            {
                tx.review_manifest(prev, 0).await?;
            }
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag.as_str())
            .bind(manifest_id)
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(PutManifestOutcome::Stored)
    }

    /// Deletes a manifest (and the tags pointing at it) unless an index in the repository
    /// still lists it.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> anyhow::Result<DeleteOutcome> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = $1 AND m.digest = $2{}",
            tx.dialect.lock_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(repo.as_str())
            .bind(digest.as_str())
            .fetch_optional(&mut *tx.tx)
            .await?
        else {
            return Ok(DeleteOutcome::NotFound);
        };
        let id: i64 = row.try_get(0)?;
        let parent = sqlx::query(
            "SELECT p.digest FROM manifest_children c JOIN manifests p ON p.id = c.parent_id WHERE c.child_id = $1 LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        if let Some(p) = parent {
            return Ok(DeleteOutcome::ReferencedBy(digest_col(&p, "digest")?));
        }
        tx.review_dependents(id).await?;
        // Tags and edges go with the row (ON DELETE CASCADE).
        sqlx::query("DELETE FROM manifests WHERE id = $1")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> anyhow::Result<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)
             RETURNING manifest_id",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
        let Some(row) = deleted else {
            return Ok(false);
        };
        tx.review_manifest(row.try_get(0)?, 0).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Every proper path prefix of a repository name: "team/app/web" → "team", "team/app".
/// Names joined with commas by `string_agg` (NULL when there were none).
fn split_names(joined: Option<String>) -> Vec<String> {
    match joined {
        Some(j) if !j.is_empty() => j.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

pub fn namespaces_of(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

async fn insert_namespaces(
    tx: &mut Transaction<'static, Any>,
    repository_id: i64,
    name: &str,
) -> anyhow::Result<()> {
    for ns in namespaces_of(name) {
        sqlx::query(
            "INSERT INTO repository_namespaces (namespace, repository_id) VALUES ($1, $2)
             ON CONFLICT (namespace, repository_id) DO NOTHING",
        )
        .bind(ns)
        .bind(repository_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn manifest_record(r: &AnyRow) -> anyhow::Result<ManifestRecord> {
    Ok(ManifestRecord {
        digest: digest_col(r, "digest")?,
        media_type: r.try_get("media_type")?,
        payload: r.try_get("payload")?,
    })
}

impl WriteTx {
    pub async fn commit(self) -> anyhow::Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn repository_id(&mut self, repo: &RepoName) -> anyhow::Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0)))
    }

    async fn ensure_repository(&mut self, repo: &RepoName) -> anyhow::Result<i64> {
        let created = sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(repo.as_str())
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1;
        let id = self
            .repository_id(repo)
            .await?
            .context("repository row vanished inside its own transaction")?;
        if created {
            insert_namespaces(&mut self.tx, id, repo.as_str()).await?;
        }
        Ok(id)
    }

    /// Queues a manifest for GC review, no earlier than `due` (Unix ms; an earlier due wins).
    pub(crate) async fn review_manifest(&mut self, id: i64, due: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO gc_manifest_reviews (manifest_id, due) VALUES ($1, $2)
             ON CONFLICT (manifest_id) DO UPDATE SET due = CASE WHEN excluded.due < gc_manifest_reviews.due
                                                                THEN excluded.due ELSE gc_manifest_reviews.due END",
        )
        .bind(id)
        .bind(due)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Queues a blob for GC review (its links are reviewed with it).
    pub(crate) async fn review_blob(&mut self, digest: &Digest, due: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO gc_blob_reviews (blob_digest, due) VALUES ($1, $2)
             ON CONFLICT (blob_digest) DO UPDATE SET due = CASE WHEN excluded.due < gc_blob_reviews.due
                                                                THEN excluded.due ELSE gc_blob_reviews.due END",
        )
        .bind(digest.as_str())
        .bind(due)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Before manifest `id` is deleted: queues what its deletion may turn into garbage — its
    /// blobs, its children and its referrers.
    pub(crate) async fn review_dependents(&mut self, id: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO gc_blob_reviews (blob_digest, due)
             SELECT blob_digest, 0 FROM manifest_blobs WHERE manifest_id = $1
             ON CONFLICT (blob_digest) DO UPDATE SET due = 0",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO gc_manifest_reviews (manifest_id, due)
             SELECT child_id, 0 FROM manifest_children WHERE parent_id = $1
             ON CONFLICT (manifest_id) DO UPDATE SET due = 0",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO gc_manifest_reviews (manifest_id, due)
             SELECT r.id, 0 FROM manifests m
               JOIN manifests r ON r.repository_id = m.repository_id AND r.subject_digest = m.digest
             WHERE m.id = $1
             ON CONFLICT (manifest_id) DO UPDATE SET due = 0",
        )
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn link(&mut self, repo_id: i64, digest: &Digest) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, blob_digest, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (repository_id, blob_digest) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_edges(
        &mut self,
        manifest_id: i64,
        repo_id: i64,
        blobs: &[Digest],
        child_ids: &[i64],
    ) -> anyhow::Result<()> {
        // Batches keep every statement far below both databases' bound-parameter limits.
        for chunk in blobs.chunks(500) {
            let values = (0..chunk.len())
                .map(|i| format!("($1, $2, ${})", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO manifest_blobs (manifest_id, repository_id, blob_digest) VALUES {values}
                 ON CONFLICT (manifest_id, blob_digest) DO NOTHING"
            );
            let mut q = sqlx::query(&sql).bind(manifest_id).bind(repo_id);
            for d in chunk {
                q = q.bind(d.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        for chunk in child_ids.chunks(500) {
            let values = (0..chunk.len())
                .map(|i| format!("($1, ${})", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO manifest_children (parent_id, child_id) VALUES {values}
                 ON CONFLICT (parent_id, child_id) DO NOTHING"
            );
            let mut q = sqlx::query(&sql).bind(manifest_id);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

impl BlobCommit {
    /// True when no stored object backs the row yet: the caller must write it before `finish`.
    pub fn needs_object(&self) -> bool {
        self.needs_object
    }

    /// Links the blob into `repo`, closes the upload session and commits.
    pub async fn finish(
        mut self,
        repo: &RepoName,
        digest: &Digest,
        upload_id: &str,
    ) -> anyhow::Result<()> {
        let repo_id = self.tx.ensure_repository(repo).await?;
        self.tx.link(repo_id, digest).await?;
        // Unreferenced until a manifest uses it: GC looks again once the grace period is over.
        self.tx.review_blob(digest, now_ms()).await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(upload_id)
            .execute(&mut *self.tx.tx)
            .await?;
        self.tx.commit().await
    }
}
