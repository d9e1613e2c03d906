-- Core protocol tables: developers, agents, authorization requests, grants and their tokens.
-- Every statement is idempotent so that a partly applied file can be run again.

CREATE TABLE IF NOT EXISTS developers (
    id             TEXT PRIMARY KEY,
    api_key_hash   TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    email          TEXT,
    mode           TEXT NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'sandbox')),
    plan           TEXT NOT NULL DEFAULT 'free',
    fido_required  BOOLEAN NOT NULL DEFAULT FALSE,
    fido_rp_name   TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS developers_email_key ON developers (lower(email))
    WHERE email IS NOT NULL;

CREATE TABLE IF NOT EXISTS agents (
    id            TEXT PRIMARY KEY,
    did           TEXT NOT NULL UNIQUE,
    developer_id  TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    scopes        TEXT[] NOT NULL DEFAULT '{}',
    redirect_uris TEXT[] NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS agents_developer_created_idx ON agents (developer_id, created_at DESC);

CREATE TABLE IF NOT EXISTS auth_requests (
    id                    TEXT PRIMARY KEY,
    agent_id              TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    principal_id          TEXT NOT NULL,
    developer_id          TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    scopes                TEXT[] NOT NULL,
    redirect_uri          TEXT,
    state                 TEXT,
    expires_in            TEXT NOT NULL DEFAULT '24h',
    expires_at            TIMESTAMPTZ NOT NULL,
    status                TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    code                  TEXT UNIQUE,
    audience              TEXT,
    code_challenge        TEXT,
    code_challenge_method TEXT,
    fido_verified         BOOLEAN NOT NULL DEFAULT FALSE,
    purpose               TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS auth_requests_developer_idx ON auth_requests (developer_id, created_at DESC);

CREATE TABLE IF NOT EXISTS grants (
    id               TEXT PRIMARY KEY,
    agent_id         TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    principal_id     TEXT NOT NULL,
    developer_id     TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    scopes           TEXT[] NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    issued_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL,
    revoked_at       TIMESTAMPTZ,
    parent_grant_id  TEXT REFERENCES grants (id) ON DELETE CASCADE,
    delegation_depth INTEGER NOT NULL DEFAULT 0,
    audience         TEXT
);
CREATE INDEX IF NOT EXISTS grants_developer_issued_idx ON grants (developer_id, issued_at DESC);
CREATE INDEX IF NOT EXISTS grants_developer_active_expiry_idx ON grants (developer_id, expires_at)
    WHERE status = 'active';
CREATE INDEX IF NOT EXISTS grants_parent_idx ON grants (parent_grant_id);
CREATE INDEX IF NOT EXISTS grants_principal_idx
    ON grants (developer_id, principal_id, status, issued_at DESC);

CREATE TABLE IF NOT EXISTS grant_tokens (
    jti         TEXT PRIMARY KEY,
    grant_id    TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    is_revoked  BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS grant_tokens_grant_idx ON grant_tokens (grant_id);

-- A refresh token is a bearer secret, so only its SHA-256 is stored; id is an internal key.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    grant_id    TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    is_used     BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_grant_idx ON refresh_tokens (grant_id);
