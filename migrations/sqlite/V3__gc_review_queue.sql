-- GC's review queue: rows that an event may have turned into garbage (a tag deleted or moved,
-- a manifest deleted, a blob uploaded or mounted and not yet referenced). A GC run examines
-- only the entries that are due, so its cost follows the garbage, not the size of the store.
-- The queue only chooses what to examine: every deletion re-checks under locks, and a
-- periodic full pass collects anything an entry missed.
CREATE TABLE gc_manifest_reviews (
    manifest_id  BIGINT PRIMARY KEY,
    due          BIGINT NOT NULL
);
CREATE INDEX gc_manifest_reviews_due ON gc_manifest_reviews (due);

CREATE TABLE gc_blob_reviews (
    blob_digest  TEXT PRIMARY KEY,
    due          BIGINT NOT NULL
);
CREATE INDEX gc_blob_reviews_due ON gc_blob_reviews (due);
