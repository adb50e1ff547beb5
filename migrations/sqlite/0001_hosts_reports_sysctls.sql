-- Hosts, agent runs, socket-state reports and sysctl changes. Times are Unix milliseconds (UTC).

CREATE TABLE hosts (
    host_key       INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id        TEXT    NOT NULL UNIQUE,
    hostname       TEXT    NOT NULL,
    kernel_release TEXT    NOT NULL,
    agent_version  TEXT    NOT NULL,
    collector      TEXT    NOT NULL,
    labels         TEXT    NOT NULL DEFAULT '{}',
    interval_ms    INTEGER NOT NULL,
    first_seen     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- One row per agent process that reported: sequence numbers are unique within a run.
CREATE TABLE agent_runs (
    run_key         INTEGER PRIMARY KEY AUTOINCREMENT,
    host_key        INTEGER NOT NULL REFERENCES hosts (host_key) ON DELETE CASCADE,
    run_id          TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    dropped_reports INTEGER NOT NULL DEFAULT 0,
    UNIQUE (host_key, run_id)
);

-- One row per report; the primary key makes a resent report a no-op.
CREATE TABLE reports (
    run_key         INTEGER NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence        INTEGER NOT NULL,
    host_key        INTEGER NOT NULL,
    collected_at    INTEGER NOT NULL,
    v4_established  INTEGER NOT NULL, v4_syn_sent   INTEGER NOT NULL, v4_syn_recv  INTEGER NOT NULL,
    v4_fin_wait1    INTEGER NOT NULL, v4_fin_wait2  INTEGER NOT NULL, v4_time_wait INTEGER NOT NULL,
    v4_close        INTEGER NOT NULL, v4_close_wait INTEGER NOT NULL, v4_last_ack  INTEGER NOT NULL,
    v4_listen       INTEGER NOT NULL, v4_closing    INTEGER NOT NULL,
    v6_established  INTEGER NOT NULL, v6_syn_sent   INTEGER NOT NULL, v6_syn_recv  INTEGER NOT NULL,
    v6_fin_wait1    INTEGER NOT NULL, v6_fin_wait2  INTEGER NOT NULL, v6_time_wait INTEGER NOT NULL,
    v6_close        INTEGER NOT NULL, v6_close_wait INTEGER NOT NULL, v6_last_ack  INTEGER NOT NULL,
    v6_listen       INTEGER NOT NULL, v6_closing    INTEGER NOT NULL,
    PRIMARY KEY (run_key, sequence)
) WITHOUT ROWID;

CREATE INDEX reports_by_host_time ON reports (host_key, collected_at DESC);

-- Only changes are stored; the current value of a sysctl is its latest row. NULL: the kernel lacks it.
CREATE TABLE sysctl_changes (
    host_key   INTEGER NOT NULL REFERENCES hosts (host_key) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    value      TEXT,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (host_key, name, changed_at)
) WITHOUT ROWID;
