-- Slack messages posted about review items. A claim or resolution made
-- anywhere (console, API, Slack) re-renders each of them with chat.update,
-- which needs the channel id and message timestamp Slack returned.
CREATE TABLE slack_messages (
    channel          TEXT NOT NULL,
    ts               TEXT NOT NULL,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id),
    review_id        BLOB NOT NULL REFERENCES review_items (id),
    -- The outbox row that posted it: a retry after a crash finds it and does
    -- not post twice.
    notification_id  BLOB NOT NULL,
    -- The event it announced (review.created, review.sla_warning, ...).
    event            TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (channel, ts)
);
CREATE INDEX slack_messages_review ON slack_messages (review_id);
CREATE UNIQUE INDEX slack_messages_notification ON slack_messages (notification_id);

-- Signatures of accepted /slack/actions requests, kept for the replay window
-- so that a captured request cannot be sent again, on any replica.
CREATE TABLE slack_requests (
    signature    TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL
);
