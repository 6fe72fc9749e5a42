-- One-off jobs wharf has finished, so that a start does not redo (or re-check) them: a check
-- over every repository costs tens of milliseconds per start at 100k repositories.
CREATE TABLE wharf_state (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
