-- Stream processor: consumer offsets and watermarks (committed with each batch), the dedup
-- ledger, per-minute metrics, per-product and per-category metrics, flash-sale windows and
-- alerts, sessions, late and rejected records, and the views dashboards read.
-- Money columns are integer cents (exact sums); views expose decimal currency.

CREATE TABLE analytics.consumer_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    -- Per-partition event-time watermark (max event time seen minus allowed lateness).
    watermark       timestamptz,
    max_event_time  timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
COMMENT ON TABLE analytics.consumer_offsets IS
    'Next Kafka offset to process per partition, written in the same transaction as the batch results.';

-- Every distinct event id within the dedup horizon (= the accepted event-time range).
CREATE TABLE analytics.seen_events (
    event_id   uuid        PRIMARY KEY,
    event_time timestamptz NOT NULL
);
CREATE INDEX seen_events_time_brin ON analytics.seen_events USING brin (event_time);

-- Raw valid, distinct events: the audit trail.
CREATE TABLE analytics.events (
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    event_time      timestamptz NOT NULL,
    user_id         uuid        NOT NULL,
    session_id      uuid        NOT NULL,
    product_id      text,
    category        text,
    price_cents     bigint,
    quantity        integer,
    order_id        uuid,
    amount_cents    bigint,
    device          text,
    country         text,
    user_agent      text,
    referrer        text,
    utm_source      text,
    page            text,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    is_late         boolean     NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_time_brin ON analytics.events USING brin (event_time);

CREATE TABLE analytics.metrics_minute (
    minute       timestamptz NOT NULL,
    event_type   text        NOT NULL,
    events       bigint      NOT NULL DEFAULT 0,
    units        bigint      NOT NULL DEFAULT 0,
    revenue_cents bigint     NOT NULL DEFAULT 0,
    late_events  bigint      NOT NULL DEFAULT 0,
    bot_events   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, event_type)
);

CREATE TABLE analytics.product_minute (
    minute        timestamptz NOT NULL,
    product_id    text        NOT NULL,
    category      text        NOT NULL,
    views         bigint      NOT NULL DEFAULT 0,
    cart_adds     bigint      NOT NULL DEFAULT 0,
    purchases     bigint      NOT NULL DEFAULT 0,
    units         bigint      NOT NULL DEFAULT 0,
    revenue_cents bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, product_id)
);
CREATE INDEX product_minute_product_idx ON analytics.product_minute (product_id, minute);

CREATE TABLE analytics.category_minute (
    minute        timestamptz NOT NULL,
    category      text        NOT NULL,
    views         bigint      NOT NULL DEFAULT 0,
    cart_adds     bigint      NOT NULL DEFAULT 0,
    purchases     bigint      NOT NULL DEFAULT 0,
    units         bigint      NOT NULL DEFAULT 0,
    revenue_cents bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, category)
);

-- Sliding windows for flash-sale detection. `views`/`purchases` count events that arrived
-- while the window was still open on their partition (these decide the alert); `late_*`
-- count what arrived after, which a closed window can no longer absorb.
CREATE TABLE analytics.product_window (
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    product_id      text        NOT NULL,
    views           bigint      NOT NULL DEFAULT 0,
    purchases       bigint      NOT NULL DEFAULT 0,
    late_views      bigint      NOT NULL DEFAULT 0,
    late_purchases  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (window_start, product_id)
);
CREATE INDEX product_window_end_idx ON analytics.product_window (window_end);

CREATE TABLE analytics.flash_sale_alerts (
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    product_id   text        NOT NULL,
    views        bigint      NOT NULL,
    purchases    bigint      NOT NULL,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, product_id)
);

-- Sessions by user and inactivity gap in event time. `session_key` is the id of the event
-- that opened the session.
CREATE TABLE analytics.sessions (
    session_key     uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    kafka_partition integer     NOT NULL,
    session_start   timestamptz NOT NULL,
    session_end     timestamptz NOT NULL,
    events          integer     NOT NULL,
    page_views      integer     NOT NULL,
    cart_adds       integer     NOT NULL,
    purchases       integer     NOT NULL,
    revenue_cents   bigint      NOT NULL,
    device          text,
    country         text,
    is_bot          boolean     NOT NULL DEFAULT false,
    is_open         boolean     NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_open_idx ON analytics.sessions (kafka_partition) WHERE is_open;
CREATE INDEX sessions_start_idx ON analytics.sessions (session_start);

-- Late events (event time behind their partition's watermark when they arrived). They are
-- still counted in metrics_minute at their event time; `absorbed` says whether a session
-- could still take them.
CREATE TABLE analytics.late_events (
    event_id        uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    event_time      timestamptz NOT NULL,
    watermark       timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    absorbed_by_session boolean NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analytics.rejected_events (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    payload_bytes   integer     NOT NULL,
    -- The first 64 KiB of the record value, untouched.
    payload         bytea       NOT NULL,
    record_key      bytea,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX rejected_events_reason_idx ON analytics.rejected_events (reason);

-- One row per processor instance, for `clickstream status` and dashboards.
CREATE TABLE analytics.processor_heartbeat (
    instance_id     text        PRIMARY KEY,
    consumer_group  text        NOT NULL,
    started_at      timestamptz NOT NULL,
    last_commit_at  timestamptz NOT NULL,
    batches         bigint      NOT NULL,
    records         bigint      NOT NULL,
    events          bigint      NOT NULL,
    rejected        bigint      NOT NULL,
    duplicates      bigint      NOT NULL,
    late            bigint      NOT NULL
);

-- Views for dashboards -------------------------------------------------------------------

CREATE VIEW analytics.conversion_minute AS
SELECT date_trunc('minute', session_start) AS minute,
       count(*)                                        AS sessions,
       count(*) FILTER (WHERE purchases > 0)           AS converted_sessions,
       round(100.0 * count(*) FILTER (WHERE purchases > 0) / count(*), 2) AS conversion_pct
FROM analytics.sessions
WHERE NOT is_bot
GROUP BY 1;

CREATE VIEW analytics.top_products_last_hour AS
SELECT p.product_id,
       coalesce(d.name, p.product_id)  AS name,
       p.category,
       sum(p.views)                    AS views,
       sum(p.cart_adds)                AS cart_adds,
       sum(p.purchases)                AS purchases,
       sum(p.units)                    AS units,
       sum(p.revenue_cents) / 100.0    AS revenue
FROM analytics.product_minute p
LEFT JOIN analytics.dim_product d USING (product_id)
WHERE p.minute >= (SELECT max(minute) FROM analytics.product_minute) - interval '1 hour'
GROUP BY p.product_id, d.name, p.category;

CREATE VIEW analytics.funnel_daily AS
SELECT date_trunc('day', minute)::date                                     AS day,
       sum(views)                                                          AS product_views,
       sum(cart_adds)                                                      AS cart_adds,
       sum(purchases)                                                      AS purchases,
       round(100.0 * sum(cart_adds) / nullif(sum(views), 0), 2)            AS view_to_cart_pct,
       round(100.0 * sum(purchases) / nullif(sum(cart_adds), 0), 2)        AS cart_to_purchase_pct,
       sum(revenue_cents) / 100.0                                          AS revenue
FROM analytics.category_minute
GROUP BY 1;

CREATE VIEW analytics.session_summary AS
SELECT count(*) FILTER (WHERE is_open)                                       AS active_sessions,
       count(*) FILTER (WHERE NOT is_open)                                   AS closed_sessions,
       count(*) FILTER (WHERE NOT is_open AND cart_adds > 0 AND purchases = 0) AS abandoned_carts,
       round(100.0 * count(*) FILTER (WHERE NOT is_open AND cart_adds > 0 AND purchases = 0)
             / nullif(count(*) FILTER (WHERE NOT is_open AND cart_adds > 0), 0), 2) AS cart_abandonment_pct,
       avg(extract(epoch FROM session_end - session_start)) FILTER (WHERE NOT is_open) AS avg_session_seconds
FROM analytics.sessions;

-- The processor writes everything except the catalog and migrations bookkeeping.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA analytics TO clickstream_writer;
REVOKE INSERT, UPDATE, DELETE ON analytics.schema_migrations FROM clickstream_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO clickstream_reader;
