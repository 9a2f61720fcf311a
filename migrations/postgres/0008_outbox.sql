-- Transactional outbox: every notification (chat-frontend webhook, email,
-- Slack) is written in the same transaction as the review item or reply it
-- announces, then delivered by the dispatcher inside `sopr serve`, with
-- retries. Replicas claim rows with a lease (locked_until), so a delivery cut
-- short by a crash is retried by whoever comes next, under the same id (the
-- idempotency key receivers see).
CREATE TABLE outbox (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id),
    review_id        UUID REFERENCES review_items (id),
    channel          TEXT NOT NULL CHECK (channel IN ('webhook', 'email', 'slack')),
    target           TEXT NOT NULL,
    event            TEXT NOT NULL,
    payload          JSONB NOT NULL,
    -- Set for a step that must happen once (an SLA escalation); unique.
    dedupe_key       TEXT,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    locked_until     TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    delivered_at     TIMESTAMPTZ
);
CREATE UNIQUE INDEX outbox_dedupe ON outbox (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_tenant_state ON outbox (tenant_id, state, created_at);
