-- Blobs whose object `wharf fsck --repair` found missing or damaged. Readers treat them as not
-- stored (HEAD answers 404, a manifest referencing one is refused, a mount falls back to an
-- upload), so clients push them again; the upload that restores the object removes the row.
CREATE TABLE lost_blobs (
    digest    TEXT PRIMARY KEY REFERENCES blobs (digest) ON DELETE CASCADE,
    found_at  BIGINT NOT NULL
);
