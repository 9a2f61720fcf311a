-- Reviewer console sessions. The cookie carries a random token; only its
-- SHA-256 is stored, so a leaked table cannot be replayed. Each session has
-- its own CSRF token, sent back with every form.
CREATE TABLE console_sessions (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    user_id     UUID NOT NULL REFERENCES users (id),
    csrf_token  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Failed sign-ins in a row, and until when the account refuses sign-ins.
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until TIMESTAMPTZ;

-- Live updates watch the newest change to a tenant's queue.
CREATE INDEX review_items_changes ON review_items (tenant_id, updated_at);
-- The dashboard counts decisions per SOP version over a time window.
CREATE INDEX decisions_tenant_time ON decisions (tenant_id, created_at);
