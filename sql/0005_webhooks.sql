-- Webhook endpoints and their deliveries.
-- A delivery row is written in the same transaction as the change that caused its event, so an
-- event cannot be lost, and the delivery worker drains the rows.
-- Every statement is idempotent so that a partly applied file can be run again.

-- secret is the HMAC-SHA256 key that signs deliveries. Signing needs the key itself, so it is
-- stored as given, unlike API keys and refresh tokens, which only need to be compared.
-- After a rotation, previous_secret also signs deliveries until previous_secret_expires_at.
CREATE TABLE IF NOT EXISTS webhooks (
    id                         TEXT PRIMARY KEY,
    developer_id               TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    url                        TEXT NOT NULL,
    events                     TEXT[] NOT NULL,
    secret                     TEXT NOT NULL,
    previous_secret            TEXT,
    previous_secret_expires_at TIMESTAMPTZ,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhooks_developer_idx ON webhooks (developer_id, created_at DESC);

-- body contains the exact bytes that are signed and sent on every attempt.
-- attempts counts started attempts; max_attempts is the first attempt plus five retries.
-- A worker claims a row by setting lease_id and lease_expires_at. Until the lease expires no
-- other worker takes the row, and only the holder of lease_id may record the outcome.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    developer_id     TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    body             BYTEA NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 6 CHECK (max_attempts >= 1),
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_id         TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_webhook_idx
    ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
