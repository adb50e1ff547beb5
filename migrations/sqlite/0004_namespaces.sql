-- The hosts' other network namespaces (containers, `ip netns`): who uses them, their counts per report,
-- and their sysctl changes. Times are Unix milliseconds (UTC).

CREATE TABLE namespaces (
    host_key     INTEGER NOT NULL REFERENCES hosts (host_key) ON DELETE CASCADE,
    inode        INTEGER NOT NULL,
    name         TEXT,
    container_id TEXT,
    pod          TEXT,
    pid          INTEGER,
    comm         TEXT,
    first_seen   INTEGER NOT NULL,
    PRIMARY KEY (host_key, inode)
) WITHOUT ROWID;

-- One row per namespace per report; the key makes a resent report a no-op here too.
CREATE TABLE namespace_reports (
    run_key         INTEGER NOT NULL REFERENCES agent_runs (run_key) ON DELETE CASCADE,
    sequence        INTEGER NOT NULL,
    inode           INTEGER NOT NULL,
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
    kernel          TEXT,
    breakdowns      TEXT,
    PRIMARY KEY (run_key, sequence, inode)
) WITHOUT ROWID;

CREATE INDEX namespace_reports_by_host_time ON namespace_reports (host_key, inode, collected_at DESC);

-- Only changes are stored, as for the host's own sysctls. NULL: the kernel lacks the setting.
CREATE TABLE namespace_sysctl_changes (
    host_key   INTEGER NOT NULL REFERENCES hosts (host_key) ON DELETE CASCADE,
    inode      INTEGER NOT NULL,
    name       TEXT        NOT NULL,
    value      TEXT,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (host_key, inode, name, changed_at)
) WITHOUT ROWID;
