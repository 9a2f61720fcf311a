-- When a router model was last promoted: routed with after passing the
-- "not worse" check against the model before it. A restart compares the
-- model for the training data with the latest promoted one, so it does not
-- undo a check a running replica made; pruning keeps that model.
ALTER TABLE router_models ADD COLUMN promoted_at TIMESTAMPTZ;
