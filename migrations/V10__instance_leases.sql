-- Instance leases (issue 11, "instances that never return"): every running instance
-- renews its row; once a row has expired, another instance deletes it and, in the same
-- transaction, takes over that instance's in-doubt transactions (reversing them), so the
-- takeover happens exactly once. Pending reversals and notifications are already shared
-- by all instances (claimed with leases of their own), so only in-doubt rows need this.
CREATE TABLE instance_leases (
    instance_id  SMALLINT PRIMARY KEY,
    -- The process holding the lease (random per start): a restart takes its own id's
    -- lease over at once, and a process whose lease another incarnation holds stops.
    incarnation  BIGINT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
