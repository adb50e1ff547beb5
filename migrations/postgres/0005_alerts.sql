-- Alerts and their webhook outbox. Times are Unix milliseconds (UTC) in these tables, in both backends,
-- so that one SQL text serves PostgreSQL and SQLite; JSON is stored as text for the same reason.

-- One row per firing period of a rule on one subject of one host.
CREATE TABLE alerts (
    alert_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_id     TEXT             NOT NULL,
    rule        TEXT             NOT NULL,
    subject     TEXT             NOT NULL,
    severity    TEXT             NOT NULL,
    labels      TEXT             NOT NULL,
    annotations TEXT             NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    fingerprint TEXT             NOT NULL,
    starts_at   BIGINT           NOT NULL,
    ends_at     BIGINT
);

-- At most one firing alert per (host, rule, subject): replicas on one database cannot fire twice.
CREATE UNIQUE INDEX alerts_one_firing ON alerts (host_id, rule, subject) WHERE ends_at IS NULL;
CREATE INDEX alerts_by_host ON alerts (host_id, starts_at DESC);
CREATE INDEX alerts_by_start ON alerts (starts_at DESC);

-- The outbox: one row per alert transition and webhook that takes it, written in the transaction of
-- the transition; `delivery_id` is set when a notification carries it.
CREATE TABLE alert_events (
    event_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    BIGINT NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    webhook     TEXT   NOT NULL,
    group_key   TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    delivery_id TEXT
);

CREATE INDEX alert_events_waiting ON alert_events (webhook, group_key) WHERE delivery_id IS NULL;
CREATE INDEX alert_events_by_group ON alert_events (webhook, group_key, alert_id);

-- Notification groups (Alertmanager's aggregation groups), per webhook.
CREATE TABLE webhook_groups (
    webhook          TEXT   NOT NULL,
    group_key        TEXT   NOT NULL,
    group_labels     TEXT   NOT NULL,
    last_notified_at BIGINT,
    PRIMARY KEY (webhook, group_key)
);

-- Notifications to send; the id is the `webhook-id` header, the same on every attempt.
CREATE TABLE webhook_deliveries (
    delivery_id      TEXT    PRIMARY KEY,
    webhook          TEXT    NOT NULL,
    group_key        TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         BIGINT  NOT NULL DEFAULT 0,
    created_at       BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    leased_until     BIGINT  NOT NULL DEFAULT 0,
    last_attempt_at  BIGINT,
    last_status_code BIGINT,
    last_error       TEXT,
    last_error_at    BIGINT,
    finished_at      BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_group ON webhook_deliveries (webhook, group_key, created_at);
