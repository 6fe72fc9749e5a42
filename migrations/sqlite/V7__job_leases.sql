-- Background jobs (garbage collection, upload purging) run on one replica at a time: the
-- replica holding a job's lease runs it and renews the lease each time; a lease that is not
-- renewed expires, and another replica takes the job over.
CREATE TABLE job_leases (
    job         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
