-- The top-N breakdowns (destinations, CLOSE_WAIT owners, listen queues) of each report that carried them.

CREATE TABLE breakdowns (
    run_key      INTEGER NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence     INTEGER NOT NULL,
    host_key     INTEGER NOT NULL,
    collected_at INTEGER NOT NULL,
    data         TEXT    NOT NULL,
    PRIMARY KEY (run_key, sequence)
) WITHOUT ROWID;

CREATE INDEX breakdowns_by_host_time ON breakdowns (host_key, collected_at DESC);
