-- Tables the Spark side-by-side job (bench/spark/streaming.py) writes, in their own schema
-- of the benchmark database so they sit next to analytics.* for comparison. Applied by
-- bench/run.sh as the admin role after `clickstream migrate`; the job writes as the same
-- role as our processor (clickstream_writer).
CREATE SCHEMA IF NOT EXISTS spark;

-- Like analytics.metrics_minute (no late_events / future_events: Spark drops rows behind
-- its watermark instead of counting them).
CREATE TABLE IF NOT EXISTS spark.metrics_minute (
    minute        timestamptz NOT NULL,
    event_type    text        NOT NULL,
    events        bigint      NOT NULL,
    units         bigint      NOT NULL,
    revenue_cents bigint      NOT NULL,
    bot_events    bigint      NOT NULL,
    PRIMARY KEY (minute, event_type)
);

-- Like analytics.product_minute.
CREATE TABLE IF NOT EXISTS spark.product_minute (
    minute        timestamptz NOT NULL,
    product_id    text        NOT NULL,
    category      text        NOT NULL,
    views         bigint      NOT NULL,
    cart_adds     bigint      NOT NULL,
    purchases     bigint      NOT NULL,
    units         bigint      NOT NULL,
    revenue_cents bigint      NOT NULL,
    PRIMARY KEY (minute, product_id)
);

-- Like analytics.product_window (10 minutes sliding by 5; no late_* columns).
CREATE TABLE IF NOT EXISTS spark.product_window (
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    product_id   text        NOT NULL,
    views        bigint      NOT NULL,
    purchases    bigint      NOT NULL,
    PRIMARY KEY (window_start, product_id)
);

-- Like analytics.sessions, keyed by user and start: Spark's session windows have no id.
-- session_end is the last event's time, as in analytics.sessions.
CREATE TABLE IF NOT EXISTS spark.sessions (
    user_id       uuid        NOT NULL,
    session_start timestamptz NOT NULL,
    session_end   timestamptz NOT NULL,
    events        integer     NOT NULL,
    page_views    integer     NOT NULL,
    cart_adds     integer     NOT NULL,
    purchases     integer     NOT NULL,
    revenue_cents bigint      NOT NULL,
    device        text,
    country       text,
    is_bot        boolean     NOT NULL,
    PRIMARY KEY (user_id, session_start)
);

-- Micro-batches whose additive deltas are applied, written in the same transaction as
-- the deltas: a batch Spark replays after a crash is skipped, not counted twice.
CREATE TABLE IF NOT EXISTS spark.applied_batches (
    query      text   NOT NULL,
    batch_id   bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (query, batch_id)
);

-- Staging tables: Spark's JDBC writer truncates and fills one per micro-batch, then one
-- transaction upserts from it. Unlogged: their content is rewritten by a replayed batch.
CREATE UNLOGGED TABLE IF NOT EXISTS spark.stage_metrics_minute
    (LIKE spark.metrics_minute);
CREATE UNLOGGED TABLE IF NOT EXISTS spark.stage_product_minute
    (LIKE spark.product_minute);
CREATE UNLOGGED TABLE IF NOT EXISTS spark.stage_product_window
    (LIKE spark.product_window);
CREATE UNLOGGED TABLE IF NOT EXISTS spark.stage_sessions (
    user_id       text        NOT NULL,
    session_start timestamptz NOT NULL,
    session_end   timestamptz NOT NULL,
    events        integer     NOT NULL,
    page_views    integer     NOT NULL,
    cart_adds     integer     NOT NULL,
    purchases     integer     NOT NULL,
    revenue_cents bigint      NOT NULL,
    device        text,
    country       text,
    is_bot        boolean     NOT NULL
);

GRANT USAGE ON SCHEMA spark TO clickstream_writer;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA spark TO clickstream_writer;
