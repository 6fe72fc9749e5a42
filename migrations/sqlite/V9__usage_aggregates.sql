-- Maintained usage aggregates (docs/usage.md). The views of V4 compute every report from the
-- whole registry; these tables hold the answers, so a report costs what it returns. The views
-- stay as the reference implementation: `wharf fsck` compares the two, and
-- `wharf fsck --repair` rebuilds the tables from the views.
--
-- Writers do not update the aggregates. Triggers append what an edit touched to a journal,
-- in the edit's own transaction, so no code path can forget it; one folder at a time
-- (src/meta/aggregates.rs) reads the journal, compares the touched (repository, blob) pairs
-- and repositories with the edge tables, and moves the aggregates by the difference.
-- PostgreSQL twin (statement-level triggers): migrations/postgres/V9__usage_aggregates.sql.

CREATE TABLE usage_journal (
    seq            INTEGER PRIMARY KEY,
    repository_id  BIGINT NOT NULL,
    blob_digest    TEXT,
    manifest_id    BIGINT
);

CREATE TABLE usage_blob_journal (
    seq             INTEGER PRIMARY KEY,
    blobs           BIGINT NOT NULL,
    bytes           BIGINT NOT NULL,
    deleting_bytes  BIGINT NOT NULL
);

CREATE TABLE usage_repository_blobs (
    repository_id  BIGINT NOT NULL,
    blob_digest    TEXT NOT NULL,
    size           BIGINT NOT NULL,
    PRIMARY KEY (blob_digest, repository_id)
);

CREATE TABLE usage_blobs (
    blob_digest   TEXT PRIMARY KEY,
    size          BIGINT NOT NULL,
    repositories  BIGINT NOT NULL
);

CREATE TABLE usage_namespace_blobs (
    namespace     TEXT NOT NULL,
    blob_digest   TEXT NOT NULL,
    repositories  BIGINT NOT NULL,
    PRIMARY KEY (blob_digest, namespace)
);

CREATE TABLE usage_manifests (
    manifest_id    BIGINT PRIMARY KEY,
    repository_id  BIGINT NOT NULL,
    tags           BIGINT NOT NULL,
    parents        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX usage_manifests_by_repository ON usage_manifests (repository_id, created_at);

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

CREATE TABLE usage_namespaces (
    namespace           TEXT PRIMARY KEY,
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

CREATE TABLE usage_registry (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    blobs            BIGINT NOT NULL,
    physical_size    BIGINT NOT NULL,
    deleting_size    BIGINT NOT NULL,
    referenced_size  BIGINT NOT NULL
);

CREATE INDEX manifests_by_total_size ON manifests (total_size);
CREATE INDEX blobs_by_size ON blobs (size);

CREATE TRIGGER manifest_blobs_usage_insert AFTER INSERT ON manifest_blobs BEGIN
    INSERT INTO usage_journal (repository_id, blob_digest) VALUES (NEW.repository_id, NEW.blob_digest);
END;
CREATE TRIGGER manifest_blobs_usage_delete AFTER DELETE ON manifest_blobs BEGIN
    INSERT INTO usage_journal (repository_id, blob_digest) VALUES (OLD.repository_id, OLD.blob_digest);
END;
CREATE TRIGGER manifests_usage_insert AFTER INSERT ON manifests BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (NEW.repository_id, NEW.id);
END;
CREATE TRIGGER manifests_usage_delete AFTER DELETE ON manifests BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (OLD.repository_id, OLD.id);
END;
CREATE TRIGGER manifests_usage_update AFTER UPDATE OF created_at, repository_id ON manifests BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (NEW.repository_id, NEW.id);
END;
CREATE TRIGGER tags_usage_insert AFTER INSERT ON tags BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (NEW.repository_id, NEW.manifest_id);
END;
CREATE TRIGGER tags_usage_update AFTER UPDATE OF manifest_id ON tags
WHEN OLD.manifest_id <> NEW.manifest_id BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (OLD.repository_id, OLD.manifest_id);
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (NEW.repository_id, NEW.manifest_id);
END;
CREATE TRIGGER tags_usage_delete AFTER DELETE ON tags BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id) VALUES (OLD.repository_id, OLD.manifest_id);
END;
CREATE TRIGGER manifest_children_usage_insert AFTER INSERT ON manifest_children BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT repository_id, id FROM manifests WHERE id = NEW.child_id;
END;
CREATE TRIGGER manifest_children_usage_delete AFTER DELETE ON manifest_children BEGIN
    INSERT INTO usage_journal (repository_id, manifest_id)
    SELECT repository_id, id FROM manifests WHERE id = OLD.child_id;
END;
CREATE TRIGGER repositories_usage_insert AFTER INSERT ON repositories BEGIN
    INSERT INTO usage_journal (repository_id) VALUES (NEW.id);
END;
CREATE TRIGGER blobs_usage_insert AFTER INSERT ON blobs BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes) VALUES (
        CASE WHEN NEW.status = 'active' THEN 1 ELSE 0 END,
        CASE WHEN NEW.status = 'active' THEN NEW.size ELSE 0 END,
        CASE WHEN NEW.status = 'deleting' THEN NEW.size ELSE 0 END);
END;
CREATE TRIGGER blobs_usage_delete AFTER DELETE ON blobs BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes) VALUES (
        CASE WHEN OLD.status = 'active' THEN -1 ELSE 0 END,
        CASE WHEN OLD.status = 'active' THEN -OLD.size ELSE 0 END,
        CASE WHEN OLD.status = 'deleting' THEN -OLD.size ELSE 0 END);
END;
CREATE TRIGGER blobs_usage_update AFTER UPDATE OF status, size ON blobs
WHEN OLD.status <> NEW.status OR OLD.size <> NEW.size BEGIN
    INSERT INTO usage_blob_journal (blobs, bytes, deleting_bytes) VALUES (
        CASE WHEN NEW.status = 'active' THEN 1 ELSE 0 END - CASE WHEN OLD.status = 'active' THEN 1 ELSE 0 END,
        CASE WHEN NEW.status = 'active' THEN NEW.size ELSE 0 END - CASE WHEN OLD.status = 'active' THEN OLD.size ELSE 0 END,
        CASE WHEN NEW.status = 'deleting' THEN NEW.size ELSE 0 END - CASE WHEN OLD.status = 'deleting' THEN OLD.size ELSE 0 END);
END;

-- The tables start empty: wharf builds them from the views the first time it opens the
-- database (no usage_registry row means never built).
