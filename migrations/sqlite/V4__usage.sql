-- Usage reporting. Every proper path prefix of every repository name ("team" and "team/app"
-- for "team/app/web"), written with the repository (prefixes are computed in Rust, so neither
-- dialect needs string splitting), so namespace roll-ups are index lookups.
CREATE TABLE repository_namespaces (
    namespace      TEXT NOT NULL,
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    PRIMARY KEY (namespace, repository_id)
);
CREATE INDEX repository_namespaces_by_repository ON repository_namespaces (repository_id);

-- Per blob: how many manifests and repositories reference it, and how many repositories
-- link it (uploaded or mounted there).
CREATE VIEW blob_refcounts AS
SELECT b.digest, b.size, b.status, b.created_at,
       (SELECT COUNT(*) FROM manifest_blobs mb WHERE mb.blob_digest = b.digest) AS manifest_refs,
       (SELECT COUNT(DISTINCT mb.repository_id) FROM manifest_blobs mb WHERE mb.blob_digest = b.digest) AS repository_refs,
       (SELECT COUNT(*) FROM repository_blobs rb WHERE rb.blob_digest = b.digest) AS links
FROM blobs b;

-- Per repository. untagged_manifests: manifests no tag points at and no index lists (index
-- children are neither tagged nor untagged). logical_size: the distinct blobs its manifests reference (tagged or not);
-- exclusive_size: those no other repository's manifests reference (what deleting the
-- repository would free); shared_size: the rest. Sizes in bytes, times in Unix ms.
CREATE VIEW repository_usage AS
WITH repo_refs AS (SELECT DISTINCT repository_id, blob_digest FROM manifest_blobs),
     blob_repos AS (SELECT blob_digest, COUNT(*) AS repos FROM repo_refs GROUP BY blob_digest),
     repo_sizes AS (
       SELECT rr.repository_id, COUNT(*) AS blobs,
              CAST(SUM(b.size) AS BIGINT) AS logical_size,
              CAST(SUM(CASE WHEN br.repos = 1 THEN b.size ELSE 0 END) AS BIGINT) AS exclusive_size
       FROM repo_refs rr
       JOIN blob_repos br ON br.blob_digest = rr.blob_digest
       JOIN blobs b ON b.digest = rr.blob_digest
       GROUP BY rr.repository_id),
     repo_manifests AS (
       SELECT m.repository_id, COUNT(*) AS manifests,
              SUM(CASE WHEN EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) THEN 1 ELSE 0 END) AS tagged_manifests,
              SUM(CASE WHEN NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
                        AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.child_id = m.id)
                       THEN 1 ELSE 0 END) AS untagged_manifests,
              MAX(m.created_at) AS last_push_ms
       FROM manifests m GROUP BY m.repository_id),
     repo_tags AS (SELECT repository_id, COUNT(*) AS tags FROM tags GROUP BY repository_id)
SELECT r.id AS repository_id, r.name AS repository,
       COALESCE(t.tags, 0) AS tags,
       COALESCE(m.manifests, 0) AS manifests,
       COALESCE(m.tagged_manifests, 0) AS tagged_manifests,
       COALESCE(m.untagged_manifests, 0) AS untagged_manifests,
       COALESCE(s.blobs, 0) AS blobs,
       COALESCE(s.logical_size, 0) AS logical_size,
       COALESCE(s.exclusive_size, 0) AS exclusive_size,
       COALESCE(s.logical_size, 0) - COALESCE(s.exclusive_size, 0) AS shared_size,
       m.last_push_ms
FROM repositories r
LEFT JOIN repo_tags t ON t.repository_id = r.id
LEFT JOIN repo_manifests m ON m.repository_id = r.id
LEFT JOIN repo_sizes s ON s.repository_id = r.id;

-- Per namespace (every proper path prefix), deduplicated across its repositories:
-- exclusive_size counts blobs that no repository outside the namespace references (a blob is
-- exclusive when the namespace's repositories are all the repositories that reference it).
-- Set-based (one pass over the edges) rather than per-namespace subqueries.
CREATE VIEW namespace_usage AS
WITH repo_refs AS (SELECT DISTINCT repository_id, blob_digest FROM manifest_blobs),
     blob_repos AS (SELECT blob_digest, COUNT(*) AS repos FROM repo_refs GROUP BY blob_digest),
     ns_blobs AS (
       SELECT rn.namespace, rr.blob_digest, COUNT(*) AS repos
       FROM repository_namespaces rn JOIN repo_refs rr ON rr.repository_id = rn.repository_id
       GROUP BY rn.namespace, rr.blob_digest),
     ns_sizes AS (
       SELECT nb.namespace, COUNT(*) AS blobs,
              CAST(SUM(b.size) AS BIGINT) AS logical_size,
              CAST(SUM(CASE WHEN nb.repos = br.repos THEN b.size ELSE 0 END) AS BIGINT) AS exclusive_size
       FROM ns_blobs nb
       JOIN blob_repos br ON br.blob_digest = nb.blob_digest
       JOIN blobs b ON b.digest = nb.blob_digest
       GROUP BY nb.namespace),
     ns_manifests AS (
       SELECT rn.namespace, COUNT(*) AS manifests,
              SUM(CASE WHEN EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id) THEN 1 ELSE 0 END) AS tagged_manifests,
              SUM(CASE WHEN NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
                        AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.child_id = m.id)
                       THEN 1 ELSE 0 END) AS untagged_manifests,
              MAX(m.created_at) AS last_push_ms
       FROM repository_namespaces rn JOIN manifests m ON m.repository_id = rn.repository_id
       GROUP BY rn.namespace),
     ns_tags AS (
       SELECT rn.namespace, COUNT(*) AS tags
       FROM repository_namespaces rn JOIN tags t ON t.repository_id = rn.repository_id
       GROUP BY rn.namespace),
     ns_repos AS (SELECT namespace, COUNT(*) AS repositories FROM repository_namespaces GROUP BY namespace)
SELECT r.namespace, r.repositories,
       COALESCE(t.tags, 0) AS tags,
       COALESCE(m.manifests, 0) AS manifests,
       COALESCE(m.tagged_manifests, 0) AS tagged_manifests,
       COALESCE(m.untagged_manifests, 0) AS untagged_manifests,
       COALESCE(s.blobs, 0) AS blobs,
       COALESCE(s.logical_size, 0) AS logical_size,
       COALESCE(s.exclusive_size, 0) AS exclusive_size,
       COALESCE(s.logical_size, 0) - COALESCE(s.exclusive_size, 0) AS shared_size,
       m.last_push_ms
FROM ns_repos r
LEFT JOIN ns_tags t ON t.namespace = r.namespace
LEFT JOIN ns_manifests m ON m.namespace = r.namespace
LEFT JOIN ns_sizes s ON s.namespace = r.namespace;

-- The whole registry, one row. physical_size: distinct stored bytes; logical_size: the sum of
-- the repositories' logical sizes (logical / physical is the deduplication ratio);
-- pending_gc_size: stored blobs no manifest references (collected once their grace period and
-- links run out) and blobs being deleted.
CREATE VIEW registry_usage AS
SELECT
  (SELECT COUNT(*) FROM repositories) AS repositories,
  (SELECT COUNT(*) FROM manifests) AS manifests,
  (SELECT COUNT(*) FROM tags) AS tags,
  (SELECT COUNT(*) FROM blobs WHERE status = 'active') AS blobs,
  (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs WHERE status = 'active') AS physical_size,
  (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT)
     FROM (SELECT DISTINCT repository_id, blob_digest FROM manifest_blobs) rr JOIN blobs b ON b.digest = rr.blob_digest) AS logical_size,
  (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b WHERE b.status = 'deleting')
  + (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b
     WHERE b.status = 'active' AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)) AS pending_gc_size;
