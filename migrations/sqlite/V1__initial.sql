-- wharf metadata model (SQLite). The PostgreSQL twin is migrations/postgres/V1__initial.sql;
-- both must describe the same tables, columns and indexes.
-- Timestamps are Unix milliseconds. Sizes are bytes.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- One row per distinct blob in storage. Invariant: status = 'active' implies the object exists
-- at its content path. GC moves a row to 'deleting' (committed) before it removes the object,
-- and removes the row only while holding the row's lock (see docs on GC).
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL CHECK (size >= 0),
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleting')),
    created_at  BIGINT NOT NULL
);

-- A blob uploaded to or mounted into a repository ("linked").
CREATE TABLE repository_blobs (
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    blob_digest    TEXT NOT NULL REFERENCES blobs (digest),
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, blob_digest)
);
CREATE INDEX repository_blobs_by_blob ON repository_blobs (blob_digest);

-- Manifests are per repository; the payload is stored here, byte for byte.
CREATE TABLE manifests (
    id              INTEGER PRIMARY KEY,
    repository_id   BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest          TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    artifact_type   TEXT,
    config_digest   TEXT,
    subject_digest  TEXT,
    payload         BLOB NOT NULL,
    -- payload + distinct config/layer blobs (image) or payload + children's totals (index).
    total_size      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository_id, subject_digest) WHERE subject_digest IS NOT NULL;

-- manifest -> blob edges (config + layers), written in the manifest's transaction.
-- repository_id repeats the manifest's repository so that "may this repository serve this
-- blob" is an index lookup: a blob is served where it is linked or referenced.
CREATE TABLE manifest_blobs (
    manifest_id    BIGINT NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    repository_id  BIGINT NOT NULL,
    blob_digest    TEXT NOT NULL REFERENCES blobs (digest),
    PRIMARY KEY (manifest_id, blob_digest)
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (blob_digest);
CREATE INDEX manifest_blobs_by_repository ON manifest_blobs (repository_id, blob_digest);

-- index / manifest list -> child manifest edges. Deleting a parent drops its edges; a child
-- cannot be deleted while a parent references it (no cascade on child_id).
CREATE TABLE manifest_children (
    parent_id  BIGINT NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    child_id   BIGINT NOT NULL REFERENCES manifests (id),
    PRIMARY KEY (parent_id, child_id),
    CHECK (parent_id <> child_id)
);
CREATE INDEX manifest_children_by_child ON manifest_children (child_id);

CREATE TABLE tags (
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    manifest_id    BIGINT NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_by_manifest ON tags (manifest_id);

-- Upload sessions. The running SHA-256 state and the storage driver's state are saved after
-- every chunk, so any replica can continue an upload.
CREATE TABLE uploads (
    id             TEXT PRIMARY KEY,
    repository_id  BIGINT NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    size           BIGINT NOT NULL DEFAULT 0,
    hash_state     BLOB NOT NULL,
    driver_state   TEXT NOT NULL DEFAULT '',
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX uploads_by_updated ON uploads (updated_at);
