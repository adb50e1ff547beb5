-- The top-N breakdowns (destinations, CLOSE_WAIT owners, listen queues) of each report that carried them.

CREATE TABLE breakdowns (
    run_key      BIGINT      NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence     BIGINT      NOT NULL,
    host_key     BIGINT      NOT NULL,
    collected_at TIMESTAMPTZ NOT NULL,
    data         JSONB       NOT NULL,
    PRIMARY KEY (run_key, sequence)
);

CREATE INDEX breakdowns_by_host_time ON breakdowns (host_key, collected_at DESC);
