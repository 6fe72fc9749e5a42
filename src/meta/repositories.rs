//! Repositories and their namespaces (`repositories`, `repository_namespaces`), and the
//! catalog.

use sqlx::{Any, Executor, Row};

use super::names::Names;
use super::sql::now_ms;
use super::{MetaError, MetaResult, MetaStore, WriteTx};
use crate::oci::RepoName;

/// Every proper path prefix of a repository name: "team/app/web" → "team", "team/app".
pub fn namespaces_of(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

/// The repository's id, on the pool or inside a transaction.
pub(super) async fn id_of<'c, E>(db: E, repo: &RepoName) -> MetaResult<Option<i64>>
where
    E: Executor<'c, Database = Any>,
{
    let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
        .bind(repo.as_str())
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
}

impl MetaStore {
    pub async fn repository_exists(&self, repo: &RepoName) -> MetaResult<bool> {
        Ok(id_of(&self.pool, repo).await?.is_some())
    }

    pub(super) async fn repository_id(&self, repo: &RepoName) -> MetaResult<Option<i64>> {
        id_of(&self.pool, repo).await
    }

    /// Repositories holding at least one manifest, after `last` in byte order.
    #[tracing::instrument(skip_all)]
    pub async fn catalog(&self, last: Option<&str>, limit: Option<u32>) -> MetaResult<Names> {
        // One row of joined names rather than a row per name: at 100k the per-row cost of the
        // driver dominates. Repository names cannot hold a comma.
        let joined: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(name, ',') FROM (
                 SELECT r.name FROM repositories r
                 WHERE r.name > $1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
                 ORDER BY r.name LIMIT $2
             ) page",
        )
        .bind(last.unwrap_or(""))
        .bind(limit.map_or(i64::MAX, i64::from))
        .fetch_one(&self.pool)
        .await?;
        Ok(Names::from_joined(joined))
    }

    /// Repositories created before namespaces were recorded get theirs (once per database:
    /// done is recorded in wharf_state).
    pub(super) async fn backfill_namespaces(&self) -> MetaResult<()> {
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
            tx.insert_namespaces(r.try_get(0)?, &r.try_get::<String, _>(1)?)
                .await?;
        }
        sqlx::query(
            "INSERT INTO wharf_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(DONE)
        .bind(rows.len().to_string())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }
}

impl WriteTx {
    pub(super) async fn repository_id(&mut self, repo: &RepoName) -> MetaResult<Option<i64>> {
        id_of(self.conn(), repo).await
    }

    /// The repository's id, creating the repository (and its namespaces) if needed.
    pub(super) async fn ensure_repository(&mut self, repo: &RepoName) -> MetaResult<i64> {
        // Nearly always there already: one statement then.
        if let Some(id) = self.repository_id(repo).await? {
            return Ok(id);
        }
        let created = sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(repo.as_str())
        .bind(now_ms())
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1;
        let id = self.repository_id(repo).await?.ok_or_else(|| {
            MetaError::NotFound(format!(
                "repository {repo} vanished inside its own transaction"
            ))
        })?;
        if created {
            self.insert_namespaces(id, repo.as_str()).await?;
        }
        Ok(id)
    }

    async fn insert_namespaces(&mut self, repository_id: i64, name: &str) -> MetaResult<()> {
        for ns in namespaces_of(name) {
            sqlx::query(
                "INSERT INTO repository_namespaces (namespace, repository_id) VALUES ($1, $2)
                 ON CONFLICT (namespace, repository_id) DO NOTHING",
            )
            .bind(ns)
            .bind(repository_id)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::namespaces_of;

    #[test]
    fn namespaces_are_proper_prefixes() {
        assert_eq!(
            namespaces_of("team/app/web").collect::<Vec<_>>(),
            ["team", "team/app"]
        );
        assert_eq!(namespaces_of("alpine").count(), 0);
    }
}
