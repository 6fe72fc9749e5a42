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
SELECT u.*, u.logical_size - u.exclusive_size AS shared_size
FROM (
  SELECT r.id AS repository_id, r.name AS repository,
    (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id) AS tags,
    (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id) AS manifests,
    (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id
        AND EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)) AS tagged_manifests,
    (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id
        AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
        AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.child_id = m.id)) AS untagged_manifests,
    (SELECT COUNT(DISTINCT mb.blob_digest) FROM manifest_blobs mb WHERE mb.repository_id = r.id) AS blobs,
    (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b
      WHERE b.digest IN (SELECT mb.blob_digest FROM manifest_blobs mb WHERE mb.repository_id = r.id)) AS logical_size,
    (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b
      WHERE b.digest IN (SELECT mb.blob_digest FROM manifest_blobs mb WHERE mb.repository_id = r.id)
        AND NOT EXISTS (SELECT 1 FROM manifest_blobs o WHERE o.blob_digest = b.digest AND o.repository_id <> r.id)) AS exclusive_size,
    (SELECT MAX(m.created_at) FROM manifests m WHERE m.repository_id = r.id) AS last_push_ms
  FROM repositories r
) u;

-- Per namespace (every proper path prefix), deduplicated across its repositories:
-- exclusive_size counts blobs that no repository outside the namespace references.
CREATE VIEW namespace_usage AS
SELECT u.*, u.logical_size - u.exclusive_size AS shared_size
FROM (
  SELECT n.namespace,
    (SELECT COUNT(*) FROM repository_namespaces rn WHERE rn.namespace = n.namespace) AS repositories,
    (SELECT COUNT(*) FROM tags t JOIN repository_namespaces rn ON rn.repository_id = t.repository_id
      WHERE rn.namespace = n.namespace) AS tags,
    (SELECT COUNT(*) FROM manifests m JOIN repository_namespaces rn ON rn.repository_id = m.repository_id
      WHERE rn.namespace = n.namespace) AS manifests,
    (SELECT COUNT(*) FROM manifests m JOIN repository_namespaces rn ON rn.repository_id = m.repository_id
      WHERE rn.namespace = n.namespace AND EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)) AS tagged_manifests,
    (SELECT COUNT(*) FROM manifests m JOIN repository_namespaces rn ON rn.repository_id = m.repository_id
      WHERE rn.namespace = n.namespace AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
        AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.child_id = m.id)) AS untagged_manifests,
    (SELECT COUNT(*) FROM blobs b WHERE b.digest IN (
        SELECT mb.blob_digest FROM manifest_blobs mb JOIN repository_namespaces rn ON rn.repository_id = mb.repository_id
        WHERE rn.namespace = n.namespace)) AS blobs,
    (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b WHERE b.digest IN (
        SELECT mb.blob_digest FROM manifest_blobs mb JOIN repository_namespaces rn ON rn.repository_id = mb.repository_id
        WHERE rn.namespace = n.namespace)) AS logical_size,
    (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b WHERE b.digest IN (
        SELECT mb.blob_digest FROM manifest_blobs mb JOIN repository_namespaces rn ON rn.repository_id = mb.repository_id
        WHERE rn.namespace = n.namespace)
      AND NOT EXISTS (SELECT 1 FROM manifest_blobs o WHERE o.blob_digest = b.digest
        AND o.repository_id NOT IN (SELECT rn2.repository_id FROM repository_namespaces rn2 WHERE rn2.namespace = n.namespace))) AS exclusive_size,
    (SELECT MAX(m.created_at) FROM manifests m JOIN repository_namespaces rn ON rn.repository_id = m.repository_id
      WHERE rn.namespace = n.namespace) AS last_push_ms
  FROM (SELECT DISTINCT namespace FROM repository_namespaces) n
) u;

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
  (SELECT CAST(COALESCE(SUM(logical_size), 0) AS BIGINT) FROM repository_usage) AS logical_size,
  (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b
    WHERE b.status = 'deleting' OR NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)) AS pending_gc_size;
