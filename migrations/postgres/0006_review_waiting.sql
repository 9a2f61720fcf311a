-- An item whose reviewer asked the customer for more information waits
-- (state stays 'open', waiting_since is set) and is not claimed by
-- claim-next until the customer answers, which clears waiting_since.
ALTER TABLE review_items ADD COLUMN waiting_since TIMESTAMPTZ;
DROP INDEX review_items_open_queue;
CREATE INDEX review_items_open_queue ON review_items (tenant_id, priority DESC, due_at, created_at)
    WHERE state = 'open' AND waiting_since IS NULL;
