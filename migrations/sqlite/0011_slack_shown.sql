-- The review item version each Slack message last showed. The dispatcher
-- compares it with the item's version and re-renders messages left behind,
-- for instance when a replica stopped between committing a claim and
-- queueing its Slack update.
ALTER TABLE slack_messages ADD COLUMN shown_version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX slack_messages_created ON slack_messages (created_at);
