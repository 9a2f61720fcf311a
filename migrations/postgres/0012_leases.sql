-- Short leases that let one replica do a job the others would only repeat,
-- such as training a router model: the holder renews its lease while it
-- works, and a lease left by a stopped replica lapses at `expires_at`.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
