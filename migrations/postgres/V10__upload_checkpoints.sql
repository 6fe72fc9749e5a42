-- Chunked uploads no longer fsync every PATCH (README, "Durability per request"). The state a
-- client resumes from (size, hash_state) may run ahead of what is durable; the last state
-- known durable is the checkpoint (synced_size, synced_hash_state). unsynced_on names the
-- kernel (its boot id) whose page cache holds the bytes past the checkpoint: a request on that
-- kernel trusts them; any other (another machine, or after a reboot) first checks them
-- against hash_state and falls back to the checkpoint when they do not match.
ALTER TABLE uploads ADD COLUMN synced_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN synced_hash_state BYTEA;  -- BLOB on SQLite
ALTER TABLE uploads ADD COLUMN unsynced_on TEXT NOT NULL DEFAULT '';
-- Until now every saved state was durable.
UPDATE uploads SET synced_size = size, synced_hash_state = hash_state;
