-- GC phase 2 finds blobs being deleted without scanning every blob. The predicate is the
-- queries' own (`status = 'deleting'`), so both planners can prove the index applies.
CREATE INDEX blobs_being_deleted ON blobs (digest) WHERE status = 'deleting';
