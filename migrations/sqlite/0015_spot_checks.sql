-- Spot checks: a share (review.spot_check_share) of the messages answered
-- automatically is sampled for a reviewer to label after the reply went out.
-- Unlike review items they hold nothing up; their labels measure the
-- accuracy of automatic answers on live traffic without the bias of the
-- review queue, which sees mostly what the router was unsure of.
CREATE TABLE spot_checks (
    id            BLOB PRIMARY KEY,
    tenant_id     BLOB NOT NULL REFERENCES tenants (id),
    decision_id   BLOB NOT NULL UNIQUE REFERENCES decisions (id),
    created_at    TEXT NOT NULL,
    -- The intent the reviewer gave (the routed one when it was right; `oos`
    -- when no SOP covers the message), by whom and when; NULL until labelled.
    label_intent  TEXT,
    reviewer      TEXT,
    labelled_at   TEXT
);
CREATE INDEX spot_checks_tenant ON spot_checks (tenant_id, created_at);
