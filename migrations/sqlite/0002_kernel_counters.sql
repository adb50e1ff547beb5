-- The kernel's TCP counters and sockstat gauges of each report that carried them.

CREATE TABLE kernel_counters (
    run_key            INTEGER NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence           INTEGER NOT NULL,
    host_key           INTEGER NOT NULL,
    collected_at       INTEGER NOT NULL,
    time_wait_overflow INTEGER NOT NULL,
    listen_overflows   INTEGER NOT NULL,
    listen_drops       INTEGER NOT NULL,
    abort_on_memory    INTEGER NOT NULL,
    active_opens       INTEGER NOT NULL,
    passive_opens      INTEGER NOT NULL,
    attempt_fails      INTEGER NOT NULL,
    estab_resets       INTEGER NOT NULL,
    out_resets         INTEGER NOT NULL,
    retrans_segs       INTEGER NOT NULL,
    in_errs            INTEGER NOT NULL,
    orphans            INTEGER NOT NULL,
    time_wait_sockstat INTEGER NOT NULL,
    allocated          INTEGER NOT NULL,
    in_use             INTEGER NOT NULL,
    memory_pages       INTEGER NOT NULL,
    PRIMARY KEY (run_key, sequence)
) WITHOUT ROWID;

CREATE INDEX kernel_counters_by_host_time ON kernel_counters (host_key, collected_at DESC);
