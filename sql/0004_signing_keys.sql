-- The signing key set, for deployments that keep keys in PostgreSQL instead of one
-- RSA_PRIVATE_KEY. Private keys are encrypted with AES-256-GCM under the key-encryption key
-- from the environment; the database never holds one in plaintext.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid                 TEXT PRIMARY KEY,
    public_jwk          JSONB NOT NULL,
    private_key_nonce   BYTEA NOT NULL,
    private_key_sealed  BYTEA NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The key is published from created_at on, and signs from activates_at on, so every
    -- verifier has had time to fetch it before the first token it signs arrives.
    activates_at        TIMESTAMPTZ NOT NULL,
    -- Set by `grantexd keys retire`: the key is withdrawn from the JWKS at once.
    retired_at          TIMESTAMPTZ
);

-- Which key signed each token, so a superseded key stays published exactly as long as a
-- token it signed can still be live.
ALTER TABLE grant_tokens ADD COLUMN IF NOT EXISTS kid TEXT;
CREATE INDEX IF NOT EXISTS grant_tokens_kid_expiry_idx ON grant_tokens (kid, expires_at);
