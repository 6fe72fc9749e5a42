//! Usage reports. They read the maintained aggregates (`usage_*` tables, kept by
//! aggregates.rs), so each costs what it returns. The SQL views the migrations define
//! (`repository_usage`, `namespace_usage`, `registry_usage`, `blob_refcounts`) compute the
//! same figures from the edge tables of the whole registry: they are the reference
//! implementation (`reference_*` here, `wharf fsck`, the tests), and operators can query
//! either with psql or sqlite3.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{digest_col, u64_col};
use super::{MetaResult, MetaStore};

/// The figures a repository and a namespace share.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageFigures {
    pub tags: u64,
    pub manifests: u64,
    pub tagged_manifests: u64,
    /// Manifests no tag points at and no index lists.
    pub untagged_manifests: u64,
    pub blobs: u64,
    pub logical_size: u64,
    pub exclusive_size: u64,
    pub shared_size: u64,
    pub last_push_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RepositoryUsage {
    pub repository: String,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NamespaceUsage {
    pub namespace: String,
    pub repositories: u64,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegistryUsage {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub physical_size: u64,
    pub logical_size: u64,
    /// logical / physical: how many times, on average, a stored byte is used.
    pub dedup_ratio: f64,
    pub pending_gc_size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LargestImage {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LargestBlob {
    pub digest: String,
    pub size: u64,
    pub repositories: u64,
}

impl UsageFigures {
    /// From a row of `repository_usage` or `namespace_usage` (same column names).
    fn from_row(r: &AnyRow) -> MetaResult<Self> {
        Ok(UsageFigures {
            tags: u64_col(r, "tags")?,
            manifests: u64_col(r, "manifests")?,
            tagged_manifests: u64_col(r, "tagged_manifests")?,
            untagged_manifests: u64_col(r, "untagged_manifests")?,
            blobs: u64_col(r, "blobs")?,
            logical_size: u64_col(r, "logical_size")?,
            exclusive_size: u64_col(r, "exclusive_size")?,
            shared_size: u64_col(r, "shared_size")?,
            last_push_ms: r.try_get("last_push_ms")?,
        })
    }
}

/// `namespace` or anything below it (`team` matches `team/app`, not `teamx`).
const UNDER: &str = "(CAST($1 AS TEXT) = '' OR {col} = $1 OR substr({col}, 1, length(CAST($1 AS TEXT)) + 1) = $1 || '/')";

const REPOSITORY_COLUMNS: &str = "r.name AS repository, u.tags, u.manifests, u.tagged_manifests,
    u.untagged_manifests, u.blobs, u.logical_size, u.exclusive_size,
    u.logical_size - u.exclusive_size AS shared_size, u.last_push_ms";

const NAMESPACE_COLUMNS: &str = "namespace, repositories, tags, manifests, tagged_manifests,
    untagged_manifests, blobs, logical_size, exclusive_size,
    logical_size - exclusive_size AS shared_size, last_push_ms";

fn repository_rows(rows: &[AnyRow]) -> MetaResult<Vec<RepositoryUsage>> {
    rows.iter()
        .map(|r| {
            Ok(RepositoryUsage {
                repository: r.try_get("repository")?,
                figures: UsageFigures::from_row(r)?,
            })
        })
        .collect()
}

fn namespace_rows(rows: &[AnyRow]) -> MetaResult<Vec<NamespaceUsage>> {
    rows.iter()
        .map(|r| {
            Ok(NamespaceUsage {
                namespace: r.try_get("namespace")?,
                repositories: u64_col(r, "repositories")?,
                figures: UsageFigures::from_row(r)?,
            })
        })
        .collect()
}

fn registry_row(r: &AnyRow) -> MetaResult<RegistryUsage> {
    let physical = u64_col(r, "physical_size")?;
    let logical = u64_col(r, "logical_size")?;
    Ok(RegistryUsage {
        repositories: u64_col(r, "repositories")?,
        manifests: u64_col(r, "manifests")?,
        tags: u64_col(r, "tags")?,
        blobs: u64_col(r, "blobs")?,
        physical_size: physical,
        logical_size: logical,
        dedup_ratio: if physical == 0 {
            0.0
        } else {
            logical as f64 / physical as f64
        },
        pending_gc_size: u64_col(r, "pending_gc_size")?,
    })
}

fn largest_blob_rows(rows: &[AnyRow]) -> MetaResult<Vec<LargestBlob>> {
    rows.iter()
        .map(|r| {
            Ok(LargestBlob {
                digest: digest_col(r, "digest")?.to_string(),
                size: u64_col(r, "size")?,
                repositories: u64_col(r, "repository_refs")?,
            })
        })
        .collect()
}

/// The reports read the maintained aggregates (aggregates.rs): each costs what it returns.
/// They answer as of the last fold; `crate::usage::report` folds first.
impl MetaStore {
    /// Repositories in `namespace` (all when empty), largest logical size first.
    pub async fn repository_usage(&self, namespace: &str) -> MetaResult<Vec<RepositoryUsage>> {
        let rows = if namespace.is_empty() {
            let sql = format!(
                "SELECT {REPOSITORY_COLUMNS} FROM usage_repositories u
                 JOIN repositories r ON r.id = u.repository_id
                 ORDER BY u.logical_size DESC, r.name"
            );
            sqlx::query(&sql).fetch_all(&self.pool).await?
        } else {
            let sql = format!(
                "SELECT {REPOSITORY_COLUMNS} FROM usage_repositories u
                 JOIN repositories r ON r.id = u.repository_id
                 WHERE r.name = $1
                    OR u.repository_id IN (SELECT repository_id FROM repository_namespaces WHERE namespace = $1)
                 ORDER BY u.logical_size DESC, r.name"
            );
            sqlx::query(&sql)
                .bind(namespace)
                .fetch_all(&self.pool)
                .await?
        };
        repository_rows(&rows)
    }

    /// Namespaces equal to or below `namespace` (all when empty), in name order.
    pub async fn namespace_usage(&self, namespace: &str) -> MetaResult<Vec<NamespaceUsage>> {
        let rows = if namespace.is_empty() {
            let sql =
                format!("SELECT {NAMESPACE_COLUMNS} FROM usage_namespaces ORDER BY namespace");
            sqlx::query(&sql).fetch_all(&self.pool).await?
        } else {
            // Names below `team` sort from "team/" up to, not including, "team0" ('0' follows
            // '/'): an index range.
            let sql = format!(
                "SELECT {NAMESPACE_COLUMNS} FROM usage_namespaces
                 WHERE namespace = $1 OR (namespace >= $2 AND namespace < $3) ORDER BY namespace"
            );
            sqlx::query(&sql)
                .bind(namespace)
                .bind(format!("{namespace}/"))
                .bind(format!("{namespace}0"))
                .fetch_all(&self.pool)
                .await?
        };
        namespace_rows(&rows)
    }

    pub async fn registry_usage(&self) -> MetaResult<RegistryUsage> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM repositories) AS repositories,
                    (SELECT CAST(COALESCE(SUM(manifests), 0) AS BIGINT) FROM usage_repositories) AS manifests,
                    (SELECT CAST(COALESCE(SUM(tags), 0) AS BIGINT) FROM usage_repositories) AS tags,
                    g.blobs, g.physical_size,
                    (SELECT CAST(COALESCE(SUM(logical_size), 0) AS BIGINT) FROM usage_repositories) AS logical_size,
                    g.deleting_size + g.physical_size - g.referenced_size AS pending_gc_size
             FROM usage_registry g WHERE g.id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        registry_row(&r)
    }

    /// The reference implementation of [`Self::repository_usage`]: the `repository_usage`
    /// view, computed from the edge tables of the whole registry.
    pub async fn reference_repository_usage(
        &self,
        namespace: &str,
    ) -> MetaResult<Vec<RepositoryUsage>> {
        let sql = format!(
            "SELECT * FROM repository_usage WHERE {} ORDER BY logical_size DESC, repository",
            UNDER.replace("{col}", "repository")
        );
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .fetch_all(&self.pool)
            .await?;
        repository_rows(&rows)
    }

    /// The reference implementation of [`Self::namespace_usage`] (the `namespace_usage` view).
    pub async fn reference_namespace_usage(
        &self,
        namespace: &str,
    ) -> MetaResult<Vec<NamespaceUsage>> {
        let sql = format!(
            "SELECT * FROM namespace_usage WHERE {} ORDER BY namespace",
            UNDER.replace("{col}", "namespace")
        );
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .fetch_all(&self.pool)
            .await?;
        namespace_rows(&rows)
    }

    /// The reference implementation of [`Self::registry_usage`] (the `registry_usage` view).
    pub async fn reference_registry_usage(&self) -> MetaResult<RegistryUsage> {
        let r = sqlx::query("SELECT * FROM registry_usage")
            .fetch_one(&self.pool)
            .await?;
        registry_row(&r)
    }

    /// The largest tagged images (manifest total size: payload plus distinct blobs, or
    /// children's totals for an index).
    pub async fn largest_images(
        &self,
        namespace: &str,
        limit: u32,
    ) -> MetaResult<Vec<LargestImage>> {
        let sql = format!(
            "SELECT r.name AS repository, t.name AS tag, m.digest, m.total_size
             FROM tags t JOIN manifests m ON m.id = t.manifest_id JOIN repositories r ON r.id = t.repository_id
             WHERE {} ORDER BY m.total_size DESC, r.name, t.name LIMIT $2",
            UNDER.replace("{col}", "r.name")
        );
        let rows = sqlx::query(&sql)
            .bind(namespace)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LargestImage {
                    repository: r.try_get("repository")?,
                    tag: r.try_get("tag")?,
                    digest: digest_col(r, "digest")?.to_string(),
                    size: u64_col(r, "total_size")?,
                })
            })
            .collect()
    }

    pub async fn largest_blobs(&self, limit: u32) -> MetaResult<Vec<LargestBlob>> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size, COALESCE(u.repositories, 0) AS repository_refs
             FROM blobs b LEFT JOIN usage_blobs u ON u.blob_digest = b.digest
             WHERE b.status = 'active' ORDER BY b.size DESC, b.digest LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        largest_blob_rows(&rows)
    }

    /// The reference implementation of [`Self::largest_blobs`] (the `blob_refcounts` view).
    pub async fn reference_largest_blobs(&self, limit: u32) -> MetaResult<Vec<LargestBlob>> {
        let rows = sqlx::query(
            "SELECT digest, size, repository_refs FROM blob_refcounts WHERE status = 'active'
             ORDER BY size DESC, digest LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        largest_blob_rows(&rows)
    }
}
