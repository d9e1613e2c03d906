-- Responses of refresh requests that carried an Idempotency-Key, so that a client's retry gets
-- the original response instead of being treated as refresh-token reuse. The response holds
-- new bearer tokens, so it is stored encrypted under a key derived from the presented refresh
-- token, which only its holder has; lookup_hash is a SHA-256 over developer, key and token.
CREATE TABLE IF NOT EXISTS refresh_replays (
    lookup_hash   TEXT PRIMARY KEY,
    developer_id  TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    nonce         BYTEA NOT NULL,
    ciphertext    BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_replays_expiry_idx ON refresh_replays (expires_at);
