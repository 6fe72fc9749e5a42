-- Maintained usage aggregates (docs/usage.md). The views of V4 compute every report from the
-- whole registry; these tables hold the answers, so a report costs what it returns. The views
-- stay as the reference implementation: `wharf fsck` compares the two, and
-- `wharf fsck --repair` rebuilds the tables from the views.
--
-- Writers do not update the aggregates (every push would queue on its namespace's row).
-- Triggers append what an edit touched to a journal, in the edit's own transaction, so no
-- code path can forget it; one folder at a time (src/meta/aggregates.rs) reads the journal,
-- compares the touched (repository, blob) pairs and repositories with the edge tables, and
-- moves the aggregates by the difference. Folding is idempotent: an entry only names what
-- to look at again.
-- SQLite twin: migrations/sqlite/V9__usage_aggregates.sql.

-- What to look at again: a (repository, blob) pair whose manifest edges changed; a manifest
-- (manifest_id) created or deleted, or whose tags or parents changed; or, with both NULL, a
-- repository created.
CREATE TABLE usage_journal (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository_id  BIGINT NOT NULL,
    blob_digest    TEXT,
    manifest_id    BIGINT
);

-- Changes to the blobs table, as deltas (folded exactly once: read and deleted in the
-- folder's transaction).
CREATE TABLE usage_blob_journal (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    blobs           BIGINT NOT NULL,
    bytes           BIGINT NOT NULL,
    deleting_bytes  BIGINT NOT NULL
);

-- The (repository, blob) pairs the aggregates account for: a repository's manifests
-- reference the blob. Keyed blob first: the fold asks "who holds this blob", and the one
-- index is all a rebuild writes. Sizes are copied so that a pair can be let go after GC removed its
-- blob row.
CREATE TABLE usage_repository_blobs (
    repository_id  BIGINT NOT NULL,
    blob_digest    TEXT NOT NULL,
    size           BIGINT NOT NULL,
    PRIMARY KEY (blob_digest, repository_id)
);

-- Per blob: how many repositories account for it (absent: none).
CREATE TABLE usage_blobs (
    blob_digest   TEXT PRIMARY KEY,
    size          BIGINT NOT NULL,
    repositories  BIGINT NOT NULL
);

-- Per namespace and blob: how many of the namespace's repositories account for it. A
-- namespace holds a blob exclusively when this equals usage_blobs.repositories.
CREATE TABLE usage_namespace_blobs (
    namespace     TEXT COLLATE "C" NOT NULL,
    blob_digest   TEXT NOT NULL,
    repositories  BIGINT NOT NULL,
    PRIMARY KEY (blob_digest, namespace)
);

-- The manifests the aggregates account for, with what makes them tagged or untagged.
-- untagged: no tag and no parent index (parents = 0).
CREATE TABLE usage_manifests (
    manifest_id    BIGINT PRIMARY KEY,
    repository_id  BIGINT NOT NULL,
    tags           BIGINT NOT NULL,
    parents        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX usage_manifests_by_repository ON usage_manifests (repository_id, created_at);

-- The figures of repository_usage, per repository (the manifest figures are sums over its
-- usage_manifests rows, the blob figures over its usage_repository_blobs rows).
CREATE TABLE usage_repositories (
    repository_id       BIGINT PRIMARY KEY,
    tags                BIGINT NOT NULL,
    manifests           BIGINT NOT NULL,
    tagged_manifests    BIGINT NOT NULL,
    untagged_manifests  BIGINT NOT NULL,
    blobs               BIGINT NOT NULL,
    logical_size        BIGINT NOT NULL,
    exclusive_size      BIGINT NOT NULL,
    last_push_ms        BIGINT
);

-- The figures of namespace_usage, per namespace.
CREATE TABLE usage_namespaces (
    namespace           TEXT COLLATE "C" PRIMARY KEY,
    repositories        BIGINT NOT NULL,
    tags                BIGINT NOT NULL,
    manifests           BIGINT NOT NULL,
    tagged_manifests    BIGINT NOT NULL,
    untagged_manifests  BIGINT NOT NULL,
    blobs               BIGINT NOT NULL,
    logical_size        BIGINT NOT NULL,
    exclusive_size      BIGINT NOT NULL,
    last_push_ms        BIGINT
);

-- The registry's blob figures, one row. referenced_size: bytes of the blobs some
-- repository accounts for (the rest of the active bytes wait for GC).
CREATE TABLE usage_registry (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    blobs            BIGINT NOT NULL,
    physical_size    BIGINT NOT NULL,
    deleting_size    BIGINT NOT NULL,
    referenced_size  BIGINT NOT NULL
);

-- Largest images and blobs walk these instead of sorting everything.
CREATE INDEX manifests_by_total_size ON manifests (total_size);
CREATE INDEX blobs_by_size ON blobs (size);

-- The triggers: statement-level, one INSERT … SELECT over the statement's rows.
CREATE FUNCTION usage_journal_pairs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id, blob_digest)
    SELECT repository_id, blob_digest FROM changed;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_manifests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT repository_id, id FROM changed;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_tags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT DISTINCT repository_id, manifest_id FROM changed;
    RETURN NULL;
END $$;

-- A moved tag changes the manifest it left and the one it points at now.
CREATE FUNCTION usage_journal_tags_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT repository_id, manifest_id FROM old_rows
    UNION SELECT repository_id, manifest_id FROM new_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_repository_ids() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id) SELECT id FROM changed;
    RETURN NULL;
END $$;

-- An index's children are in the index's repository; the child outlives the edge.
CREATE FUNCTION usage_journal_children() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT DISTINCT m.repository_id, m.id FROM changed c JOIN manifests m ON m.id = c.child_id;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_blobs_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes)
    SELECT COUNT(*) FILTER (WHERE status = 'active'),
           COALESCE(SUM(size) FILTER (WHERE status = 'active'), 0),
           COALESCE(SUM(size) FILTER (WHERE status = 'deleting'), 0)
    FROM changed HAVING COUNT(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_blobs_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes)
    SELECT -COUNT(*) FILTER (WHERE status = 'active'),
           -COALESCE(SUM(size) FILTER (WHERE status = 'active'), 0),
           -COALESCE(SUM(size) FILTER (WHERE status = 'deleting'), 0)
    FROM changed HAVING COUNT(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_journal_blobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes)
    SELECT d.blobs, d.bytes, d.deleting_bytes FROM (
        SELECT SUM(CASE WHEN n.status = 'active' THEN 1 ELSE 0 END - CASE WHEN o.status = 'active' THEN 1 ELSE 0 END) AS blobs,
               SUM(CASE WHEN n.status = 'active' THEN n.size ELSE 0 END - CASE WHEN o.status = 'active' THEN o.size ELSE 0 END) AS bytes,
               SUM(CASE WHEN n.status = 'deleting' THEN n.size ELSE 0 END - CASE WHEN o.status = 'deleting' THEN o.size ELSE 0 END) AS deleting_bytes
        FROM old_rows o JOIN new_rows n ON n.digest = o.digest
    ) d WHERE d.blobs <> 0 OR d.bytes <> 0 OR d.deleting_bytes <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER manifest_blobs_usage_insert AFTER INSERT ON manifest_blobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_pairs();
CREATE TRIGGER manifest_blobs_usage_delete AFTER DELETE ON manifest_blobs
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_pairs();
CREATE TRIGGER manifests_usage_insert AFTER INSERT ON manifests
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_manifests();
CREATE TRIGGER manifests_usage_delete AFTER DELETE ON manifests
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_manifests();
CREATE TRIGGER manifests_usage_update AFTER UPDATE ON manifests
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_manifests();
CREATE TRIGGER tags_usage_insert AFTER INSERT ON tags
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_tags();
CREATE TRIGGER tags_usage_update AFTER UPDATE ON tags
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_tags_updated();
CREATE TRIGGER tags_usage_delete AFTER DELETE ON tags
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_tags();
CREATE TRIGGER manifest_children_usage_insert AFTER INSERT ON manifest_children
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_children();
CREATE TRIGGER manifest_children_usage_delete AFTER DELETE ON manifest_children
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_children();
CREATE TRIGGER repositories_usage_insert AFTER INSERT ON repositories
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_repository_ids();
CREATE TRIGGER blobs_usage_insert AFTER INSERT ON blobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_blobs_added();
CREATE TRIGGER blobs_usage_delete AFTER DELETE ON blobs
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_blobs_removed();
CREATE TRIGGER blobs_usage_update AFTER UPDATE ON blobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_journal_blobs_updated();

-- The tables start empty: wharf builds them from the views the first time it opens the
-- database (no usage_registry row means never built).
