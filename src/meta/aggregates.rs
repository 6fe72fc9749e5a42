//! Maintained usage aggregates (`usage_*` tables, migration V9; the argument is in
//! docs/usage.md).
//!
//! Writers never touch the aggregates: triggers journal what each edit touched, in the edit's
//! transaction. The fold (one at a time across all replicas: an advisory lock on PostgreSQL,
//! the writer gate on SQLite) takes a batch of journal entries and, for each touched
//! (repository, blob) pair and each touched manifest, compares what the aggregates account
//! for with what the edge tables say now, and moves the aggregates by the difference. A
//! fold's cost follows the entries, never the size of a repository. An entry only says where
//! to look, so folding
//! one twice, or late, changes nothing: after the writes stop and a fold runs, the aggregates
//! equal what the views compute (checked by `wharf fsck` and tests/usage.rs).
//!
//! Two folds must never decide about one blob at once (each decides from what is accounted,
//! and would not see the other's uncommitted decision): the fold lock serializes them.
//! Overlapping batches would also queue on the journal rows' locks, but a fold must not rely
//! on that. tests/usage.rs `concurrent_folds_take_turns` pauses a fold mid-decision, and
//! fails when folds do not take turns (seen with the lock removed and the journal read with
//! `SKIP LOCKED`).
//!
//! The rebuild (first start after the migration, `wharf fsck --repair`, bulk seeding) writes
//! every aggregate from the edge tables. It deletes the journal *before* it reads the edges,
//! so an edit it does not see keeps its entry and is folded later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{AddAssign, Sub};

use serde::Serialize;
use sqlx::Row;

use super::repositories::namespaces_of;
use super::{Dialect, MetaResult, MetaStore, WriteTx};

/// Journal entries per fold transaction: a transaction stays short, and a report waits for
/// at most a few of them.
const FOLD_BATCH: i64 = 2000;

/// The advisory lock every folder holds (PostgreSQL; any 64-bit key of ours).
const FOLD_LOCK: i64 = 0x7768_6172_665f_7573; // "wharf_us"

/// What a fold did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct FoldOutcome {
    pub entries: u64,
    /// (repository, blob) pairs that started or stopped being referenced.
    pub pairs_changed: u64,
    /// Manifests created, deleted, tagged or untagged.
    pub manifests_changed: u64,
}

/// The additive figures of a repository or namespace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Figures {
    repositories: i64,
    tags: i64,
    manifests: i64,
    tagged: i64,
    untagged: i64,
    blobs: i64,
    logical: i64,
    exclusive: i64,
}

impl AddAssign for Figures {
    fn add_assign(&mut self, o: Figures) {
        self.repositories += o.repositories;
        self.tags += o.tags;
        self.manifests += o.manifests;
        self.tagged += o.tagged;
        self.untagged += o.untagged;
        self.blobs += o.blobs;
        self.logical += o.logical;
        self.exclusive += o.exclusive;
    }
}

impl Sub for Figures {
    type Output = Figures;
    fn sub(self, o: Figures) -> Figures {
        Figures {
            repositories: self.repositories - o.repositories,
            tags: self.tags - o.tags,
            manifests: self.manifests - o.manifests,
            tagged: self.tagged - o.tagged,
            untagged: self.untagged - o.untagged,
            blobs: self.blobs - o.blobs,
            logical: self.logical - o.logical,
            exclusive: self.exclusive - o.exclusive,
        }
    }
}

impl Figures {
    fn is_zero(&self) -> bool {
        *self == Figures::default()
    }
    fn blob(size: i64, sign: i64) -> Figures {
        Figures {
            blobs: sign,
            logical: sign * size,
            ..Default::default()
        }
    }
    fn exclusive(size: i64) -> Figures {
        Figures {
            exclusive: size,
            ..Default::default()
        }
    }
}

/// What the aggregates know of one manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ManifestState {
    repository_id: i64,
    created_at: i64,
    tags: i64,
    parents: i64,
}

impl ManifestState {
    fn from_row(r: &sqlx::any::AnyRow) -> MetaResult<Self> {
        Ok(ManifestState {
            repository_id: r.try_get("repository_id")?,
            created_at: r.try_get("created_at")?,
            tags: r.try_get("tags")?,
            parents: r.try_get("parents")?,
        })
    }

    /// Its part in its repository's figures, added (`sign` 1) or taken away (-1).
    fn figures(&self, sign: i64) -> Figures {
        Figures {
            manifests: sign,
            tags: sign * self.tags,
            tagged: sign * i64::from(self.tags > 0),
            untagged: sign * i64::from(self.tags == 0 && self.parents == 0),
            ..Default::default()
        }
    }
}

/// The deltas one fold transaction accumulates, written once per row at the end.
#[derive(Default)]
struct Deltas {
    repositories: BTreeMap<i64, Figures>,
    namespaces: BTreeMap<String, Figures>,
    referenced_size: i64,
}

impl Deltas {
    fn repository(&mut self, id: i64, f: Figures) {
        *self.repositories.entry(id).or_default() += f;
    }
    fn namespace(&mut self, ns: &str, f: Figures) {
        *self.namespaces.entry(ns.to_owned()).or_default() += f;
    }
}

impl Dialect {
    /// The statement that takes the fold lock for the rest of the transaction (None: the
    /// write transaction is exclusive already). `wait`: queue for it rather than give up.
    fn fold_lock(self, wait: bool) -> Option<&'static str> {
        match (self, wait) {
            (Dialect::Sqlite, _) => None,
            (Dialect::Postgres, true) => {
                Some("SELECT true FROM (SELECT pg_advisory_xact_lock($1)) locked")
            }
            (Dialect::Postgres, false) => Some("SELECT pg_try_advisory_xact_lock($1)"),
        }
    }
}

impl MetaStore {
    /// Folds the journal into the aggregates until it is empty (or, with `wait` false, does
    /// nothing when another folder is at work). Reports call this first, so they answer
    /// for everything committed before them.
    pub async fn fold_usage(&self, wait: bool) -> MetaResult<FoldOutcome> {
        let mut total = FoldOutcome::default();
        loop {
            let Some(done) = retrying!("fold_usage", self.fold_batch(wait))? else {
                return Ok(total);
            };
            total.entries += done.entries;
            total.pairs_changed += done.pairs_changed;
            total.manifests_changed += done.manifests_changed;
            if done.entries < FOLD_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn fold_batch(&self, wait: bool) -> MetaResult<Option<FoldOutcome>> {
        let mut tx = self.begin_write().await?;
        if !tx.take_fold_lock(wait).await? {
            return Ok(None);
        }
        if !tx.usage_built().await? {
            tx.rebuild_usage().await?;
            tx.commit().await?;
            return Ok(Some(FoldOutcome::default()));
        }
        let outcome = tx.fold().await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    /// Writes every aggregate from the edge tables (first start, `fsck --repair`, seeding).
    pub async fn rebuild_usage(&self) -> MetaResult<()> {
        retrying!("rebuild_usage", async {
            let mut tx = self.begin_write().await?;
            tx.take_fold_lock(true).await?;
            tx.rebuild_usage().await?;
            tx.commit().await
        })
    }

    /// Builds the aggregates if this database never had them (the first start after the
    /// migration that added them).
    pub(super) async fn ensure_usage_built(&self) -> MetaResult<()> {
        let built = sqlx::query("SELECT 1 FROM usage_registry WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !built {
            tracing::info!("building the usage aggregates from the edge tables");
            self.fold_usage(true).await?;
        }
        Ok(())
    }
}

impl WriteTx {
    async fn take_fold_lock(&mut self, wait: bool) -> MetaResult<bool> {
        let Some(sql) = self.dialect.fold_lock(wait) else {
            return Ok(true);
        };
        let got: bool = sqlx::query_scalar(sql)
            .bind(FOLD_LOCK)
            .fetch_one(self.conn())
            .await?;
        Ok(got)
    }

    async fn usage_built(&mut self) -> MetaResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM usage_registry WHERE id = 1")
            .fetch_optional(self.conn())
            .await?
            .is_some())
    }

    /// One batch of the journal.
    async fn fold(&mut self) -> MetaResult<FoldOutcome> {
        let entries = sqlx::query(
            "DELETE FROM usage_journal WHERE seq IN (SELECT seq FROM usage_journal ORDER BY seq LIMIT $1)
             RETURNING repository_id, blob_digest, manifest_id",
        )
        .bind(FOLD_BATCH)
        .fetch_all(self.conn())
        .await?;
        let mut outcome = FoldOutcome {
            entries: entries.len() as u64,
            ..Default::default()
        };
        // Pairs grouped by blob (every change to one blob's repository set is decided at
        // once), manifests to look at again, and every repository concerned.
        let mut pairs: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        let mut manifests: BTreeMap<i64, ()> = BTreeMap::new();
        let mut repositories: BTreeSet<i64> = BTreeSet::new();
        for e in &entries {
            let repo: i64 = e.try_get("repository_id")?;
            repositories.insert(repo);
            if let Some(d) = e.try_get::<Option<String>, _>("blob_digest")? {
                pairs.entry(d).or_default().insert(repo);
            } else if let Some(m) = e.try_get::<Option<i64>, _>("manifest_id")? {
                manifests.insert(m, ());
            }
        }
        let mut names = RepositoryNames::default();
        let mut deltas = Deltas::default();
        for &repo in &repositories {
            self.account_repository(repo, &mut names, &mut deltas)
                .await?;
        }
        for (blob, repos) in &pairs {
            outcome.pairs_changed += self.fold_blob(blob, repos, &mut names, &mut deltas).await?;
        }
        let mut pushed: BTreeSet<i64> = BTreeSet::new();
        for &manifest in manifests.keys() {
            let (was, now) = self.fold_manifest(manifest).await?;
            if was == now {
                continue;
            }
            outcome.manifests_changed += 1;
            // A manifest id can come back in another repository (SQLite reuses the highest
            // rowid): the old state leaves the repository it was in.
            for (state, sign) in [(was, -1), (now, 1)] {
                let Some(m) = state else { continue };
                let f = m.figures(sign);
                deltas.repository(m.repository_id, f);
                for ns in namespaces_of(&names.get(self, m.repository_id).await?) {
                    deltas.namespace(ns, f);
                }
                pushed.insert(m.repository_id);
            }
        }
        for &repo in &pushed {
            self.fold_last_push(repo, &mut names).await?;
        }
        self.apply(&deltas).await?;
        self.fold_blob_journal(deltas.referenced_size).await?;
        Ok(outcome)
    }

    /// Brings the accounted pairs of `blob` with `repos` in line with `manifest_blobs`, and
    /// moves the logical and exclusive figures of the repositories and namespaces concerned.
    async fn fold_blob(
        &mut self,
        blob: &str,
        repos: &BTreeSet<i64>,
        names: &mut RepositoryNames,
        deltas: &mut Deltas,
    ) -> MetaResult<u64> {
        // Gained: referenced now, not accounted; lost: accounted, referenced no more.
        let mut gained: Vec<(i64, i64)> = Vec::new();
        let mut lost: Vec<(i64, i64)> = Vec::new();
        for &repo in repos {
            // One statement: the edge and the size from one snapshot.
            let now = sqlx::query(
                "SELECT b.size FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.blob_digest
                 WHERE mb.repository_id = $1 AND mb.blob_digest = $2 LIMIT 1",
            )
            .bind(repo)
            .bind(blob)
            .fetch_optional(self.conn())
            .await?;
            let was = sqlx::query(
                "SELECT size FROM usage_repository_blobs WHERE repository_id = $1 AND blob_digest = $2",
            )
            .bind(repo)
            .bind(blob)
            .fetch_optional(self.conn())
            .await?;
            match (now, was) {
                (Some(r), None) => gained.push((repo, r.try_get(0)?)),
                (None, Some(r)) => lost.push((repo, r.try_get(0)?)),
                _ => {}
            }
        }
        if gained.is_empty() && lost.is_empty() {
            return Ok(0);
        }
        let size = gained.iter().chain(&lost).map(|p| p.1).next().unwrap_or(0);
        let old_refs: i64 =
            sqlx::query_scalar("SELECT repositories FROM usage_blobs WHERE blob_digest = $1")
                .bind(blob)
                .fetch_optional(self.conn())
                .await?
                .unwrap_or(0);
        let old_holder = self.sole_holder(blob, old_refs).await?;
        let old_exclusive = self.exclusive_namespaces(blob, old_refs).await?;
        // Decided from what is accounted now: another folder must not change it before this
        // transaction commits (tests/usage.rs `concurrent_folds_take_turns`).
        crate::failpoint::hit("usage.fold_blob", blob).await;

        for &(repo, _) in &gained {
            sqlx::query(
                "INSERT INTO usage_repository_blobs (repository_id, blob_digest, size) VALUES ($1, $2, $3)",
            )
            .bind(repo)
            .bind(blob)
            .bind(size)
            .execute(self.conn())
            .await?;
            deltas.repository(repo, Figures::blob(size, 1));
            for ns in namespaces_of(&names.get(self, repo).await?) {
                let n: i64 = sqlx::query_scalar(
                    "INSERT INTO usage_namespace_blobs (namespace, blob_digest, repositories) VALUES ($1, $2, 1)
                     ON CONFLICT (blob_digest, namespace) DO UPDATE SET repositories = usage_namespace_blobs.repositories + 1
                     RETURNING repositories",
                )
                .bind(ns)
                .bind(blob)
                .fetch_one(self.conn())
                .await?;
                if n == 1 {
                    deltas.namespace(ns, Figures::blob(size, 1));
                }
            }
        }
        for &(repo, _) in &lost {
            sqlx::query(
                "DELETE FROM usage_repository_blobs WHERE repository_id = $1 AND blob_digest = $2",
            )
            .bind(repo)
            .bind(blob)
            .execute(self.conn())
            .await?;
            deltas.repository(repo, Figures::blob(size, -1));
            for ns in namespaces_of(&names.get(self, repo).await?) {
                let n: i64 = sqlx::query_scalar(
                    "UPDATE usage_namespace_blobs SET repositories = repositories - 1
                     WHERE namespace = $1 AND blob_digest = $2 RETURNING repositories",
                )
                .bind(ns)
                .bind(blob)
                .fetch_one(self.conn())
                .await?;
                if n == 0 {
                    sqlx::query(
                        "DELETE FROM usage_namespace_blobs WHERE namespace = $1 AND blob_digest = $2",
                    )
                    .bind(ns)
                    .bind(blob)
                    .execute(self.conn())
                    .await?;
                    deltas.namespace(ns, Figures::blob(size, -1));
                }
            }
        }
        let new_refs = old_refs + gained.len() as i64 - lost.len() as i64;
        if new_refs == 0 {
            sqlx::query("DELETE FROM usage_blobs WHERE blob_digest = $1")
                .bind(blob)
                .execute(self.conn())
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO usage_blobs (blob_digest, size, repositories) VALUES ($1, $2, $3)
                 ON CONFLICT (blob_digest) DO UPDATE SET repositories = excluded.repositories",
            )
            .bind(blob)
            .bind(size)
            .bind(new_refs)
            .execute(self.conn())
            .await?;
        }
        // Exclusive bytes: the blob leaves the old exclusive holders and joins the new ones
        // (often the same: then the two deltas cancel).
        if let Some(r) = old_holder {
            deltas.repository(r, Figures::exclusive(-size));
        }
        if let Some(r) = self.sole_holder(blob, new_refs).await? {
            deltas.repository(r, Figures::exclusive(size));
        }
        for ns in &old_exclusive {
            deltas.namespace(ns, Figures::exclusive(-size));
        }
        for ns in self.exclusive_namespaces(blob, new_refs).await? {
            deltas.namespace(&ns, Figures::exclusive(size));
        }
        match (old_refs > 0, new_refs > 0) {
            (false, true) => deltas.referenced_size += size,
            (true, false) => deltas.referenced_size -= size,
            _ => {}
        }
        Ok((gained.len() + lost.len()) as u64)
    }

    /// The one repository accounting for `blob`, when `refs` says there is exactly one.
    async fn sole_holder(&mut self, blob: &str, refs: i64) -> MetaResult<Option<i64>> {
        if refs != 1 {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(
            "SELECT repository_id FROM usage_repository_blobs WHERE blob_digest = $1 LIMIT 1",
        )
        .bind(blob)
        .fetch_optional(self.conn())
        .await?)
    }

    /// Namespaces holding `blob` exclusively: all `refs` repositories accounting for it are
    /// theirs.
    async fn exclusive_namespaces(&mut self, blob: &str, refs: i64) -> MetaResult<Vec<String>> {
        if refs == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT namespace FROM usage_namespace_blobs WHERE blob_digest = $1 AND repositories = $2",
        )
        .bind(blob)
        .bind(refs)
        .fetch_all(self.conn())
        .await?)
    }

    /// Gives a repository its row the first time a fold meets it, and counts it in its
    /// namespaces.
    async fn account_repository(
        &mut self,
        repo: i64,
        names: &mut RepositoryNames,
        deltas: &mut Deltas,
    ) -> MetaResult<()> {
        let created = sqlx::query(
            "INSERT INTO usage_repositories (repository_id, tags, manifests, tagged_manifests,
                 untagged_manifests, blobs, logical_size, exclusive_size, last_push_ms)
             VALUES ($1, 0, 0, 0, 0, 0, 0, 0, NULL) ON CONFLICT (repository_id) DO NOTHING",
        )
        .bind(repo)
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1;
        if created {
            let one = Figures {
                repositories: 1,
                ..Default::default()
            };
            for ns in namespaces_of(&names.get(self, repo).await?) {
                deltas.namespace(ns, one);
            }
        }
        Ok(())
    }

    /// Brings the accounted state of one manifest (repository, age, tags, parents) in line
    /// with the edge tables; returns what was accounted and what is now.
    async fn fold_manifest(
        &mut self,
        manifest: i64,
    ) -> MetaResult<(Option<ManifestState>, Option<ManifestState>)> {
        let now = sqlx::query(
            "SELECT m.repository_id, m.created_at,
                    (SELECT COUNT(*) FROM tags t WHERE t.manifest_id = m.id) AS tags,
                    (SELECT COUNT(*) FROM manifest_children c WHERE c.child_id = m.id) AS parents
             FROM manifests m WHERE m.id = $1",
        )
        .bind(manifest)
        .fetch_optional(self.conn())
        .await?
        .map(|r| ManifestState::from_row(&r))
        .transpose()?;
        let was = sqlx::query(
            "SELECT repository_id, created_at, tags, parents FROM usage_manifests WHERE manifest_id = $1",
        )
        .bind(manifest)
        .fetch_optional(self.conn())
        .await?
        .map(|r| ManifestState::from_row(&r))
        .transpose()?;
        if now == was {
            return Ok((was, now));
        }
        match &now {
            Some(n) => {
                sqlx::query(
                    "INSERT INTO usage_manifests (manifest_id, repository_id, tags, parents, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (manifest_id) DO UPDATE SET repository_id = excluded.repository_id,
                         tags = excluded.tags, parents = excluded.parents, created_at = excluded.created_at",
                )
                .bind(manifest)
                .bind(n.repository_id)
                .bind(n.tags)
                .bind(n.parents)
                .bind(n.created_at)
                .execute(self.conn())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM usage_manifests WHERE manifest_id = $1")
                    .bind(manifest)
                    .execute(self.conn())
                    .await?;
            }
        }
        Ok((was, now))
    }

    /// A repository's newest push (an index lookup), and its namespaces'.
    async fn fold_last_push(&mut self, repo: i64, names: &mut RepositoryNames) -> MetaResult<()> {
        let now: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(created_at) FROM usage_manifests WHERE repository_id = $1",
        )
        .bind(repo)
        .fetch_one(self.conn())
        .await?;
        let was: Option<i64> = sqlx::query_scalar(
            "SELECT last_push_ms FROM usage_repositories WHERE repository_id = $1",
        )
        .bind(repo)
        .fetch_one(self.conn())
        .await?;
        if now == was {
            return Ok(());
        }
        sqlx::query("UPDATE usage_repositories SET last_push_ms = $2 WHERE repository_id = $1")
            .bind(repo)
            .bind(now)
            .execute(self.conn())
            .await?;
        for ns in namespaces_of(&names.get(self, repo).await?) {
            self.namespace_last_push(ns, was, now).await?;
        }
        Ok(())
    }

    /// A namespace's newest push after one of its repositories' changed from `was` to `now`.
    async fn namespace_last_push(
        &mut self,
        ns: &str,
        was: Option<i64>,
        now: Option<i64>,
    ) -> MetaResult<()> {
        // Make sure the row exists (the counts' deltas are written later, with upserts).
        self.upsert_namespace(ns, Figures::default()).await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT last_push_ms FROM usage_namespaces WHERE namespace = $1")
                .bind(ns)
                .fetch_one(self.conn())
                .await?;
        let next = match (now, current) {
            (Some(n), Some(c)) if n >= c => Some(n),
            (Some(n), None) => Some(n),
            // The namespace's newest manifest went away: ask its repositories (rare).
            _ if was.is_some() && was == current => {
                sqlx::query_scalar(
                    "SELECT MAX(u.last_push_ms) FROM repository_namespaces rn
                     JOIN usage_repositories u ON u.repository_id = rn.repository_id
                     WHERE rn.namespace = $1",
                )
                .bind(ns)
                .fetch_one(self.conn())
                .await?
            }
            _ => current,
        };
        if next != current {
            sqlx::query("UPDATE usage_namespaces SET last_push_ms = $2 WHERE namespace = $1")
                .bind(ns)
                .bind(next)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    async fn upsert_namespace(&mut self, ns: &str, f: Figures) -> MetaResult<()> {
        sqlx::query(
            "INSERT INTO usage_namespaces (namespace, repositories, tags, manifests, tagged_manifests,
                 untagged_manifests, blobs, logical_size, exclusive_size, last_push_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)
             ON CONFLICT (namespace) DO UPDATE SET
                 repositories = usage_namespaces.repositories + excluded.repositories,
                 tags = usage_namespaces.tags + excluded.tags,
                 manifests = usage_namespaces.manifests + excluded.manifests,
                 tagged_manifests = usage_namespaces.tagged_manifests + excluded.tagged_manifests,
                 untagged_manifests = usage_namespaces.untagged_manifests + excluded.untagged_manifests,
                 blobs = usage_namespaces.blobs + excluded.blobs,
                 logical_size = usage_namespaces.logical_size + excluded.logical_size,
                 exclusive_size = usage_namespaces.exclusive_size + excluded.exclusive_size",
        )
        .bind(ns)
        .bind(f.repositories)
        .bind(f.tags)
        .bind(f.manifests)
        .bind(f.tagged)
        .bind(f.untagged)
        .bind(f.blobs)
        .bind(f.logical)
        .bind(f.exclusive)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Writes the accumulated deltas, a statement per changed row, in key order.
    async fn apply(&mut self, deltas: &Deltas) -> MetaResult<()> {
        for (&repo, f) in &deltas.repositories {
            if f.is_zero() {
                continue;
            }
            sqlx::query(
                "INSERT INTO usage_repositories (repository_id, tags, manifests, tagged_manifests,
                     untagged_manifests, blobs, logical_size, exclusive_size, last_push_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)
                 ON CONFLICT (repository_id) DO UPDATE SET
                     tags = usage_repositories.tags + excluded.tags,
                     manifests = usage_repositories.manifests + excluded.manifests,
                     tagged_manifests = usage_repositories.tagged_manifests + excluded.tagged_manifests,
                     untagged_manifests = usage_repositories.untagged_manifests + excluded.untagged_manifests,
                     blobs = usage_repositories.blobs + excluded.blobs,
                     logical_size = usage_repositories.logical_size + excluded.logical_size,
                     exclusive_size = usage_repositories.exclusive_size + excluded.exclusive_size",
            )
            .bind(repo)
            .bind(f.tags)
            .bind(f.manifests)
            .bind(f.tagged)
            .bind(f.untagged)
            .bind(f.blobs)
            .bind(f.logical)
            .bind(f.exclusive)
            .execute(self.conn())
            .await?;
        }
        for (ns, f) in &deltas.namespaces {
            if !f.is_zero() {
                self.upsert_namespace(ns, *f).await?;
            }
        }
        Ok(())
    }

    /// Adds the blobs table's changes (journaled as deltas, each folded exactly once: read
    /// and deleted here) and the change in referenced bytes to the registry row.
    async fn fold_blob_journal(&mut self, referenced: i64) -> MetaResult<()> {
        let rows = sqlx::query(
            "DELETE FROM usage_blob_journal WHERE seq IN (SELECT seq FROM usage_blob_journal ORDER BY seq LIMIT $1)
             RETURNING blobs, bytes, deleting_bytes",
        )
        .bind(FOLD_BATCH * 10)
        .fetch_all(self.conn())
        .await?;
        let (mut blobs, mut bytes, mut deleting) = (0i64, 0i64, 0i64);
        for r in &rows {
            blobs += r.try_get::<i64, _>("blobs")?;
            bytes += r.try_get::<i64, _>("bytes")?;
            deleting += r.try_get::<i64, _>("deleting_bytes")?;
        }
        if blobs == 0 && bytes == 0 && deleting == 0 && referenced == 0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE usage_registry SET blobs = blobs + $1, physical_size = physical_size + $2,
                 deleting_size = deleting_size + $3, referenced_size = referenced_size + $4
             WHERE id = 1",
        )
        .bind(blobs)
        .bind(bytes)
        .bind(deleting)
        .bind(referenced)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Every aggregate from the edge tables. The caller holds the fold lock.
    async fn rebuild_usage(&mut self) -> MetaResult<()> {
        // The journal first: an edit committed after this statement keeps its entry, and
        // folding it later is harmless whether or not the reads below saw the edit.
        sqlx::query("DELETE FROM usage_journal")
            .execute(self.conn())
            .await?;
        // Emptied in one statement (PostgreSQL: TRUNCATE, which leaves no dead rows for the
        // inserts to wade through; reports wait for the rebuild meanwhile).
        let empty = match self.dialect {
            Dialect::Postgres => "TRUNCATE ",
            Dialect::Sqlite => "DELETE FROM ",
        };
        for table in AGGREGATE_TABLES {
            sqlx::query(&format!("{empty}{table}"))
                .execute(self.conn())
                .await?;
        }
        for sql in REBUILD {
            sqlx::query(sql).execute(self.conn()).await?;
        }
        // The blob deltas and the blobs they describe must be read at one instant: one
        // statement on PostgreSQL; SQLite's writer is alone anyway.
        match self.dialect {
            Dialect::Postgres => {
                sqlx::query(&format!(
                    "WITH gone AS (DELETE FROM usage_blob_journal RETURNING seq) {REGISTRY_ROW}"
                ))
                .execute(self.conn())
                .await?;
            }
            Dialect::Sqlite => {
                sqlx::query("DELETE FROM usage_blob_journal")
                    .execute(self.conn())
                    .await?;
                sqlx::query(REGISTRY_ROW).execute(self.conn()).await?;
            }
        }
        Ok(())
    }
}

/// What a rebuild writes afresh.
const AGGREGATE_TABLES: &[&str] = &[
    "usage_repository_blobs",
    "usage_blobs",
    "usage_namespace_blobs",
    "usage_manifests",
    "usage_repositories",
    "usage_namespaces",
];

/// The rebuild, after the journal is cleared and the tables emptied, each inserted in key
/// order. The accounted pairs and manifests are written
/// first, from the edge tables; every figure is then computed from them, so the figures
/// agree with them exactly, whatever commits meanwhile (a later fold moves both together).
const REBUILD: &[&str] = &[
    "INSERT INTO usage_repository_blobs (repository_id, blob_digest, size)
     SELECT DISTINCT mb.repository_id, mb.blob_digest, b.size
     FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.blob_digest
     ORDER BY mb.blob_digest, mb.repository_id",
    "INSERT INTO usage_blobs (blob_digest, size, repositories)
     SELECT blob_digest, MAX(size), COUNT(*) FROM usage_repository_blobs
     GROUP BY blob_digest ORDER BY blob_digest",
    "INSERT INTO usage_namespace_blobs (namespace, blob_digest, repositories)
     SELECT rn.namespace, u.blob_digest, COUNT(*)
     FROM usage_repository_blobs u JOIN repository_namespaces rn ON rn.repository_id = u.repository_id
     GROUP BY u.blob_digest, rn.namespace ORDER BY u.blob_digest, rn.namespace",
    "INSERT INTO usage_manifests (manifest_id, repository_id, tags, parents, created_at)
     SELECT m.id, m.repository_id,
            (SELECT COUNT(*) FROM tags t WHERE t.manifest_id = m.id),
            (SELECT COUNT(*) FROM manifest_children c WHERE c.child_id = m.id),
            m.created_at
     FROM manifests m",
    "INSERT INTO usage_repositories (repository_id, tags, manifests, tagged_manifests,
         untagged_manifests, blobs, logical_size, exclusive_size, last_push_ms)
     SELECT r.id, COALESCE(m.tags, 0), COALESCE(m.manifests, 0), COALESCE(m.tagged, 0),
            COALESCE(m.untagged, 0), COALESCE(s.blobs, 0), COALESCE(s.logical_size, 0),
            COALESCE(s.exclusive_size, 0), m.last_push_ms
     FROM repositories r
     LEFT JOIN (SELECT repository_id, COUNT(*) AS manifests, SUM(tags) AS tags,
                       SUM(CASE WHEN tags > 0 THEN 1 ELSE 0 END) AS tagged,
                       SUM(CASE WHEN tags = 0 AND parents = 0 THEN 1 ELSE 0 END) AS untagged,
                       MAX(created_at) AS last_push_ms
                FROM usage_manifests GROUP BY repository_id) m ON m.repository_id = r.id
     LEFT JOIN (SELECT u.repository_id, COUNT(*) AS blobs, SUM(u.size) AS logical_size,
                       SUM(CASE WHEN ub.repositories = 1 THEN u.size ELSE 0 END) AS exclusive_size
                FROM usage_repository_blobs u JOIN usage_blobs ub ON ub.blob_digest = u.blob_digest
                GROUP BY u.repository_id) s ON s.repository_id = r.id",
    "INSERT INTO usage_namespaces (namespace, repositories, tags, manifests, tagged_manifests,
         untagged_manifests, blobs, logical_size, exclusive_size, last_push_ms)
     SELECT c.namespace, c.repositories, c.tags, c.manifests, c.tagged, c.untagged,
            COALESCE(s.blobs, 0), COALESCE(s.logical_size, 0), COALESCE(s.exclusive_size, 0),
            c.last_push_ms
     FROM (SELECT rn.namespace, COUNT(*) AS repositories, SUM(u.tags) AS tags,
                  SUM(u.manifests) AS manifests, SUM(u.tagged_manifests) AS tagged,
                  SUM(u.untagged_manifests) AS untagged, MAX(u.last_push_ms) AS last_push_ms
           FROM repository_namespaces rn JOIN usage_repositories u ON u.repository_id = rn.repository_id
           GROUP BY rn.namespace) c
     LEFT JOIN (SELECT n.namespace, COUNT(*) AS blobs, SUM(ub.size) AS logical_size,
                       SUM(CASE WHEN n.repositories = ub.repositories THEN ub.size ELSE 0 END) AS exclusive_size
                FROM usage_namespace_blobs n JOIN usage_blobs ub ON ub.blob_digest = n.blob_digest
                GROUP BY n.namespace) s ON s.namespace = c.namespace",
];

/// The registry row from the blobs table and the accounted blobs.
const REGISTRY_ROW: &str =
    "INSERT INTO usage_registry (id, blobs, physical_size, deleting_size, referenced_size)
     SELECT 1,
            (SELECT COUNT(*) FROM blobs WHERE status = 'active'),
            (SELECT COALESCE(SUM(size), 0) FROM blobs WHERE status = 'active'),
            (SELECT COALESCE(SUM(size), 0) FROM blobs WHERE status = 'deleting'),
            (SELECT COALESCE(SUM(size), 0) FROM usage_blobs)
     ON CONFLICT (id) DO UPDATE SET blobs = excluded.blobs, physical_size = excluded.physical_size,
         deleting_size = excluded.deleting_size, referenced_size = excluded.referenced_size";

/// Repository names a fold needs (for their namespaces), read once per fold.
#[derive(Default)]
struct RepositoryNames(HashMap<i64, String>);

impl RepositoryNames {
    async fn get(&mut self, tx: &mut WriteTx, id: i64) -> MetaResult<String> {
        if let Some(n) = self.0.get(&id) {
            return Ok(n.clone());
        }
        let name: String = sqlx::query_scalar("SELECT name FROM repositories WHERE id = $1")
            .bind(id)
            .fetch_one(tx.conn())
            .await?;
        self.0.insert(id, name.clone());
        Ok(name)
    }
}
