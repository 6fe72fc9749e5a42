//! Tags (`tags`): names pointing at manifests.

use sqlx::Row;

use super::names::Names;
use super::{MetaResult, MetaStore, WriteTx};
use crate::oci::{RepoName, Tag};

impl MetaStore {
    /// Tags after `last` in byte order, at most `limit` (None: all). None if the repository
    /// does not exist.
    #[tracing::instrument(skip_all)]
    pub async fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: Option<u32>,
    ) -> MetaResult<Option<Names>> {
        // One row, the names joined, rather than a row per tag: at 100k tags the per-row cost
        // of the driver dominates. Tag names cannot hold a comma. The names come off the
        // primary key in order; `Names` checks the order rather than sorting again here.
        let Some(limit) = limit else {
            // The whole list: one statement, and no subquery between the index and the
            // aggregate (on SQLite that halves the cost of a 10k-tag list).
            let row: Option<(i64, Option<String>)> = sqlx::query_as(
                "SELECT r.id, (SELECT string_agg(t.name, ',') FROM tags t
                                WHERE t.repository_id = r.id AND t.name > $2)
                 FROM repositories r WHERE r.name = $1",
            )
            .bind(repo.as_str())
            .bind(last.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
            return Ok(row.map(|(_, joined)| Names::from_joined(joined)));
        };
        let Some(repo_id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        let joined: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(name, ',') FROM (
                 SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3
             ) page",
        )
        .bind(repo_id)
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(Names::from_joined(joined)))
    }

    /// Removes a tag; its manifest is queued for GC review. False if there was no such tag.
    #[tracing::instrument(skip_all)]
    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> MetaResult<bool> {
        retrying!("delete_tag", self.delete_tag_once(repo, tag))
    }

    async fn delete_tag_once(&self, repo: &RepoName, tag: &Tag) -> MetaResult<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)
             RETURNING manifest_id",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = deleted else {
            return Ok(false);
        };
        tx.review_manifest(row.try_get(0)?, 0);
        tx.commit().await?;
        Ok(true)
    }
}

impl WriteTx {
    /// Points `tag` at the manifest; the manifest it pointed at before (which may now be
    /// untagged) is queued for GC review.
    pub(super) async fn set_tag(
        &mut self,
        repo_id: i64,
        tag: &Tag,
        manifest_id: i64,
        now: i64,
    ) -> MetaResult<()> {
        let previous =
            sqlx::query("SELECT manifest_id FROM tags WHERE repository_id = $1 AND name = $2")
                .bind(repo_id)
                .bind(tag.as_str())
                .fetch_optional(self.conn())
                .await?;
        if let Some(prev) = previous {
            let prev: i64 = prev.try_get(0)?;
            if prev != manifest_id {
                self.review_manifest(prev, 0);
            }
        }
        sqlx::query(
            "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id, updated_at = excluded.updated_at",
        )
        .bind(repo_id)
        .bind(tag.as_str())
        .bind(manifest_id)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
