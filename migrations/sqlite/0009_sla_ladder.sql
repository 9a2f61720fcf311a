-- SLA escalation ladder: 0 nothing sent yet, 1 the backup targets were told
-- the item is still unclaimed at notify.sla.warn_fraction of its SLA, 2 the
-- breach was announced. Each step is also an outbox row with a dedupe key,
-- so replicas racing on one item send it once.
ALTER TABLE review_items ADD COLUMN ladder_step INTEGER NOT NULL DEFAULT 0;
CREATE INDEX review_items_ladder ON review_items (due_at) WHERE state = 'open' AND ladder_step < 2;
