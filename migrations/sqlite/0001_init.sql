-- sopr schema, SQLite dialect. Keep in step with migrations/postgres/0001_init.sql.

CREATE TABLE tenants (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE api_keys (
    id          BLOB PRIMARY KEY,
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE sop_versions (
    sop_id      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    status      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    title       TEXT NOT NULL,
    content     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (sop_id, version, hash)
);

CREATE TABLE conversations (
    id              BLOB PRIMARY KEY,
    tenant_id       BLOB NOT NULL REFERENCES tenants (id),
    customer_id     TEXT NOT NULL,
    customer_name   TEXT,
    customer_email  TEXT,
    channel         TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX conversations_customer ON conversations (tenant_id, customer_id);

CREATE TABLE messages (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id),
    conversation_id  BLOB NOT NULL REFERENCES conversations (id),
    role             TEXT NOT NULL CHECK (role IN ('customer', 'bot', 'reviewer')),
    body             TEXT NOT NULL,
    metadata         TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,
    response         TEXT,
    created_at       TEXT NOT NULL
);
CREATE UNIQUE INDEX messages_idempotency ON messages (tenant_id, idempotency_key);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);

CREATE TABLE decisions (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id),
    conversation_id  BLOB NOT NULL REFERENCES conversations (id),
    message_id       BLOB NOT NULL REFERENCES messages (id),
    intent           TEXT,
    confidence       REAL NOT NULL,
    top_intents      TEXT NOT NULL,
    flags            TEXT NOT NULL,
    sop_ref          TEXT,
    model_version    TEXT NOT NULL,
    outcome          TEXT NOT NULL CHECK (outcome IN ('answered', 'queued', 'joined')),
    reasons          TEXT NOT NULL,
    draft            TEXT,
    timings          TEXT NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX decisions_conversation ON decisions (conversation_id, created_at);

CREATE TABLE review_items (
    id                BLOB PRIMARY KEY,
    tenant_id         BLOB NOT NULL REFERENCES tenants (id),
    conversation_id   BLOB NOT NULL REFERENCES conversations (id),
    decision_id       BLOB NOT NULL REFERENCES decisions (id),
    state             TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved')),
    priority          INTEGER NOT NULL,
    sop_ref           TEXT,
    reasons           TEXT NOT NULL,
    draft             TEXT,
    due_at            TEXT NOT NULL,
    claimed_by        TEXT,
    lease_expires_at  TEXT,
    resolution        TEXT,
    final_reply       TEXT,
    resolved_by       TEXT,
    resolved_at       TEXT,
    message_count     INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
-- One unresolved item per conversation: later customer messages join it.
CREATE UNIQUE INDEX review_items_one_open ON review_items (conversation_id) WHERE state <> 'resolved';
CREATE INDEX review_items_queue ON review_items (tenant_id, state, priority DESC, due_at, created_at);

CREATE TABLE review_events (
    id          BLOB PRIMARY KEY,
    tenant_id   BLOB NOT NULL REFERENCES tenants (id),
    review_id   BLOB NOT NULL REFERENCES review_items (id),
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX review_events_item ON review_events (review_id, created_at);

CREATE TABLE feedback (
    id                BLOB PRIMARY KEY,
    tenant_id         BLOB NOT NULL REFERENCES tenants (id),
    review_id         BLOB NOT NULL REFERENCES review_items (id),
    decision_id       BLOB NOT NULL REFERENCES decisions (id),
    customer_text     TEXT NOT NULL,
    predicted_intent  TEXT,
    label_intent      TEXT,
    sop_ref           TEXT,
    action            TEXT NOT NULL,
    draft             TEXT,
    final_reply       TEXT,
    reviewer          TEXT NOT NULL,
    created_at        TEXT NOT NULL
);
CREATE INDEX feedback_tenant ON feedback (tenant_id, created_at);
