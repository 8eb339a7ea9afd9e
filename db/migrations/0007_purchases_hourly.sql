-- Streaming tables the requirement documents name: one row per purchase line, and hourly
-- statistics per event type (events, distinct users, sessions started, revenue).

-- Every purchase line, written exactly once with the batch that applied it.
CREATE TABLE analytics.purchases (
    event_time      timestamptz NOT NULL,
    event_id        uuid        NOT NULL,
    order_id        uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    session_id      uuid        NOT NULL,
    product_id      text        NOT NULL,
    category        text        NOT NULL,
    price_cents     bigint      NOT NULL,
    quantity        integer     NOT NULL,
    amount_cents    bigint      NOT NULL,
    is_bot          boolean     NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    PRIMARY KEY (event_time, event_id)
);
CREATE INDEX purchases_order_idx ON analytics.purchases (order_id);
COMMENT ON TABLE analytics.purchases IS
    'One row per distinct purchase line (order lines share order_id), written with the batch that applied it.';

-- Distinct users per hour and event type, while the hour can still change: events up to
-- the contract's maximum age are accepted, so a user can still appear in an hour that old.
-- Older hours are rolled up into hourly_user_counts by the processor's housekeeping.
CREATE TABLE analytics.hourly_users (
    hour       timestamptz NOT NULL,
    event_type text        NOT NULL,
    user_id    uuid        NOT NULL,
    PRIMARY KEY (hour, event_type, user_id)
);
COMMENT ON TABLE analytics.hourly_users IS
    'Who was active per hour and event type, for hours younger than the maximum event age; older hours are in hourly_user_counts.';

CREATE TABLE analytics.hourly_user_counts (
    hour       timestamptz NOT NULL,
    event_type text        NOT NULL,
    users      bigint      NOT NULL,
    PRIMARY KEY (hour, event_type)
);
COMMENT ON TABLE analytics.hourly_user_counts IS
    'Distinct users of hours past the maximum event age (final), rolled up from hourly_users.';

CREATE VIEW analytics.event_stats_hourly AS
WITH m AS (
    SELECT date_trunc('hour', minute) AS hour, event_type,
           sum(events)::int8 AS events, sum(revenue_cents)::int8 AS revenue_cents,
           sum(bot_events)::int8 AS bot_events
      FROM analytics.metrics_minute
     GROUP BY 1, 2
), u AS (
    SELECT hour, event_type, count(*)::int8 AS users FROM analytics.hourly_users GROUP BY 1, 2
    UNION ALL
    SELECT hour, event_type, users FROM analytics.hourly_user_counts
), s AS (
    SELECT date_trunc('hour', session_start) AS hour, count(*)::int8 AS sessions_started
      FROM analytics.sessions
     GROUP BY 1
)
SELECT m.hour, m.event_type, m.events, coalesce(u.users, 0) AS users,
       coalesce(s.sessions_started, 0) AS sessions_started, m.revenue_cents, m.bot_events
  FROM m
  LEFT JOIN u USING (hour, event_type)
  LEFT JOIN s USING (hour);
COMMENT ON VIEW analytics.event_stats_hourly IS
    'Per hour and event type: events, distinct users, sessions started in the hour (all types of the hour show the same count), revenue (cents), bot events.';
GRANT SELECT ON analytics.event_stats_hourly TO clickstream_reader;
