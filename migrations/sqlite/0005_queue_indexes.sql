-- Claim-next looks for the most urgent open item and for the most urgent item
-- whose lease ran out, separately: one partial index each, so that a deep
-- queue is not sorted on every claim.
CREATE INDEX review_items_open_queue ON review_items (tenant_id, priority DESC, due_at, created_at)
    WHERE state = 'open';
CREATE INDEX review_items_claimed_leases ON review_items (tenant_id, lease_expires_at)
    WHERE state = 'claimed';
