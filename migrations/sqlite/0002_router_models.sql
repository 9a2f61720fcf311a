-- Trained router models, keyed by version (a hash of training data and options).
CREATE TABLE router_models (
    version     TEXT PRIMARY KEY,
    examples    INTEGER NOT NULL,
    labels      INTEGER NOT NULL,
    metrics     TEXT NOT NULL,
    model       BLOB NOT NULL,
    created_at  TEXT NOT NULL
);
