-- The people who work the review queue. One account per (tenant, email);
-- emails are stored trimmed and lower-cased. password_hash is an argon2id PHC
-- string. A disabled account keeps its history but cannot sign in.
CREATE TABLE users (
    id             BLOB PRIMARY KEY,
    tenant_id      BLOB NOT NULL REFERENCES tenants (id),
    email          TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
    password_hash  TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    disabled_at    TEXT
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, email);
