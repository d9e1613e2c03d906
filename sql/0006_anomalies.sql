-- Unusual patterns found by the anomaly detection worker. One row per developer, type,
-- agent and detection window, so a scan repeated within a window adds nothing.
CREATE TABLE IF NOT EXISTS anomalies (
    id               TEXT PRIMARY KEY,
    developer_id     TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    type             TEXT NOT NULL
                     CHECK (type IN ('rate_spike', 'high_failure_rate', 'new_principal', 'off_hours_activity')),
    severity         TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
    agent_id         TEXT NOT NULL,
    principal_id     TEXT,
    description      TEXT NOT NULL,
    metadata         JSONB NOT NULL DEFAULT '{}',
    window_start     TIMESTAMPTZ NOT NULL,
    detected_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_at  TIMESTAMPTZ,
    UNIQUE (developer_id, type, agent_id, window_start)
);
CREATE INDEX IF NOT EXISTS anomalies_developer_idx ON anomalies (developer_id, detected_at DESC);

-- Token issuance per agent over time, read by the rate-spike rule.
CREATE INDEX IF NOT EXISTS grant_tokens_created_idx ON grant_tokens (created_at);
CREATE INDEX IF NOT EXISTS audit_entries_timestamp_idx ON audit_entries (timestamp);
