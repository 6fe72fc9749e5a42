-- `wharf import`: the repositories of a Distribution tree imported so far, so that an
-- interrupted import continues where it stopped and a second run changes nothing.
CREATE TABLE imported_repositories (
    name         TEXT PRIMARY KEY,
    imported_at  BIGINT NOT NULL
);
