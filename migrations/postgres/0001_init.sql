-- sopr schema, Postgres dialect. Keep in step with migrations/sqlite/0001_init.sql.

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE sop_versions (
    sop_id      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    status      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sop_id, version, hash)
);

CREATE TABLE conversations (
    id              UUID PRIMARY KEY,
    tenant_id       UUID NOT NULL REFERENCES tenants (id),
    customer_id     TEXT NOT NULL,
    customer_name   TEXT,
    customer_email  TEXT,
    channel         TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX conversations_customer ON conversations (tenant_id, customer_id);

CREATE TABLE messages (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id),
    conversation_id  UUID NOT NULL REFERENCES conversations (id),
    role             TEXT NOT NULL CHECK (role IN ('customer', 'bot', 'reviewer')),
    body             TEXT NOT NULL,
    metadata         JSONB,
    idempotency_key  TEXT,
    request_hash     TEXT,
    response         JSONB,
    created_at       TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX messages_idempotency ON messages (tenant_id, idempotency_key);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);

CREATE TABLE decisions (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id),
    conversation_id  UUID NOT NULL REFERENCES conversations (id),
    message_id       UUID NOT NULL REFERENCES messages (id),
    intent           TEXT,
    confidence       DOUBLE PRECISION NOT NULL,
    top_intents      JSONB NOT NULL,
    flags            JSONB NOT NULL,
    sop_ref          TEXT,
    model_version    TEXT NOT NULL,
    outcome          TEXT NOT NULL CHECK (outcome IN ('answered', 'queued', 'joined')),
    reasons          JSONB NOT NULL,
    draft            TEXT,
    timings          JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX decisions_conversation ON decisions (conversation_id, created_at);

CREATE TABLE review_items (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id),
    conversation_id   UUID NOT NULL REFERENCES conversations (id),
    decision_id       UUID NOT NULL REFERENCES decisions (id),
    state             TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved')),
    priority          INTEGER NOT NULL,
    sop_ref           TEXT,
    reasons           JSONB NOT NULL,
    draft             TEXT,
    due_at            TIMESTAMPTZ NOT NULL,
    claimed_by        TEXT,
    lease_expires_at  TIMESTAMPTZ,
    resolution        TEXT,
    final_reply       TEXT,
    resolved_by       TEXT,
    resolved_at       TIMESTAMPTZ,
    message_count     INTEGER NOT NULL,
    version           BIGINT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
-- One unresolved item per conversation: later customer messages join it.
CREATE UNIQUE INDEX review_items_one_open ON review_items (conversation_id) WHERE state <> 'resolved';
CREATE INDEX review_items_queue ON review_items (tenant_id, state, priority DESC, due_at, created_at);

CREATE TABLE review_events (
    id          UUID PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id),
    review_id   UUID NOT NULL REFERENCES review_items (id),
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX review_events_item ON review_events (review_id, created_at);

CREATE TABLE feedback (
    id                UUID PRIMARY KEY,
    tenant_id         UUID NOT NULL REFERENCES tenants (id),
    review_id         UUID NOT NULL REFERENCES review_items (id),
    decision_id       UUID NOT NULL REFERENCES decisions (id),
    customer_text     TEXT NOT NULL,
    predicted_intent  TEXT,
    label_intent      TEXT,
    sop_ref           TEXT,
    action            TEXT NOT NULL,
    draft             TEXT,
    final_reply       TEXT,
    reviewer          TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX feedback_tenant ON feedback (tenant_id, created_at);
