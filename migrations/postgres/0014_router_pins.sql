-- When an operator pinned a router model (`sopr router pin`), and why:
-- every replica routes with the pinned model, whatever its training data
-- asks for, and does not retrain until `sopr router unpin` clears this. At
-- most one model is pinned; pruning keeps it.
ALTER TABLE router_models ADD COLUMN pinned_at TIMESTAMPTZ;
ALTER TABLE router_models ADD COLUMN pin_reason TEXT;
