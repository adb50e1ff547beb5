-- The kernel's TCP counters and sockstat gauges of each report that carried them.

CREATE TABLE kernel_counters (
    run_key            BIGINT      NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence           BIGINT      NOT NULL,
    host_key           BIGINT      NOT NULL,
    collected_at       TIMESTAMPTZ NOT NULL,
    time_wait_overflow BIGINT      NOT NULL,
    listen_overflows   BIGINT      NOT NULL,
    listen_drops       BIGINT      NOT NULL,
    abort_on_memory    BIGINT      NOT NULL,
    active_opens       BIGINT      NOT NULL,
    passive_opens      BIGINT      NOT NULL,
    attempt_fails      BIGINT      NOT NULL,
    estab_resets       BIGINT      NOT NULL,
    out_resets         BIGINT      NOT NULL,
    retrans_segs       BIGINT      NOT NULL,
    in_errs            BIGINT      NOT NULL,
    orphans            BIGINT      NOT NULL,
    time_wait_sockstat BIGINT      NOT NULL,
    allocated          BIGINT      NOT NULL,
    in_use             BIGINT      NOT NULL,
    memory_pages       BIGINT      NOT NULL,
    PRIMARY KEY (run_key, sequence)
);

CREATE INDEX kernel_counters_by_host_time ON kernel_counters (host_key, collected_at DESC);
