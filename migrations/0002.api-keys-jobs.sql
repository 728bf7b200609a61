-- API keys and background jobs (issue 6). See docs/ARCHITECTURE.md, "API and workers".
-- depends: 0001.initial-schema

-- A key is shown once as `idk_<key_id>_<secret>`; only sha256(secret) is kept. The
-- secret has 256 random bits, so a fast hash is enough (see identity/store/keys.py).
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    name         text NOT NULL CHECK (name <> ''),
    secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'enroll', 'admin']::text[]
                                        AND cardinality(scopes) > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- A job is split into batches up front; each batch's outcomes are written once per
-- batch number (a redelivered task overwrites its own row, it never adds one), so the
-- progress of a job is the count of its finished batches, whoever ran them.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('enroll', 'cluster')),
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    total_items  integer NOT NULL DEFAULT 0 CHECK (total_items >= 0),
    total_batches integer NOT NULL DEFAULT 0 CHECK (total_batches >= 0),
    result       jsonb,
    error        text,
    key_id       text REFERENCES api_keys (key_id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX jobs_created_at ON jobs (created_at);

CREATE TABLE job_batches (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    batch_no     integer NOT NULL CHECK (batch_no >= 0),
    outcomes     jsonb NOT NULL CHECK (jsonb_typeof(outcomes) = 'array'),
    attempts     integer NOT NULL DEFAULT 1,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, batch_no)
);
