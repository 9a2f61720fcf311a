-- Trained router models, keyed by version (a hash of training data and options).
CREATE TABLE router_models (
    version     TEXT PRIMARY KEY,
    examples    BIGINT NOT NULL,
    labels      BIGINT NOT NULL,
    metrics     JSONB NOT NULL,
    model       BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
