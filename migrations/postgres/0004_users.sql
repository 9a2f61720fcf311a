-- The people who work the review queue. One account per (tenant, email);
-- emails are stored trimmed and lower-cased. password_hash is an argon2id PHC
-- string. A disabled account keeps its history but cannot sign in.
CREATE TABLE users (
    id             UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL REFERENCES tenants (id),
    email          TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    disabled_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, email);
