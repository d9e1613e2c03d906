-- The audit log: one append-only hash chain per developer.
-- Chain order is (timestamp, id). id uses the "C" collation so that PostgreSQL orders ids
-- byte by byte, as the daemon compares them when it places a new entry after the chain head.
-- developer_id has no foreign key: audit entries outlive the rows they describe.
-- Every statement is idempotent so that a partly applied file can be run again.

CREATE TABLE IF NOT EXISTS audit_entries (
    id            TEXT COLLATE "C" PRIMARY KEY,
    agent_id      TEXT NOT NULL,
    agent_did     TEXT NOT NULL,
    grant_id      TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    developer_id  TEXT NOT NULL,
    action        TEXT NOT NULL,
    metadata      JSONB NOT NULL DEFAULT '{}',
    hash          TEXT NOT NULL,
    previous_hash TEXT,
    timestamp     TIMESTAMPTZ NOT NULL DEFAULT now(),
    status        TEXT NOT NULL DEFAULT 'success' CHECK (status IN ('success', 'failure', 'blocked'))
);
CREATE INDEX IF NOT EXISTS audit_entries_developer_chain_idx
    ON audit_entries (developer_id, timestamp DESC, id DESC);
