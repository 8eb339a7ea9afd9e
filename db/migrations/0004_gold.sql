-- Daily gold tables written by `clickstream batch` from the silver lake (one row set per
-- day, replaced as a whole by a re-run), and the record of batch runs the scheduler uses to
-- catch up missed days. Money in integer cents.

CREATE TABLE analytics.gold_daily_funnel (
    day                  date    PRIMARY KEY,
    events               bigint  NOT NULL,
    bot_events           bigint  NOT NULL,
    product_views        bigint  NOT NULL,
    cart_adds            bigint  NOT NULL,
    purchases            bigint  NOT NULL,
    orders               bigint  NOT NULL,
    units                bigint  NOT NULL,
    revenue_cents        bigint  NOT NULL,
    view_to_cart_pct     float8,
    cart_to_purchase_pct float8
);

CREATE TABLE analytics.gold_category_daily (
    day            date    NOT NULL,
    category       text    NOT NULL,
    views          bigint  NOT NULL,
    cart_adds      bigint  NOT NULL,
    purchases      bigint  NOT NULL,
    units          bigint  NOT NULL,
    revenue_cents  bigint  NOT NULL,
    viewers        bigint  NOT NULL,
    buyers         bigint  NOT NULL,
    conversion_pct float8,
    PRIMARY KEY (day, category)
);

CREATE TABLE analytics.gold_top_products (
    day           date    NOT NULL,
    list          text    NOT NULL CHECK (list IN ('most_viewed', 'best_selling')),
    rank          integer NOT NULL,
    product_id    text    NOT NULL,
    category      text    NOT NULL,
    views         bigint  NOT NULL,
    purchases     bigint  NOT NULL,
    units         bigint  NOT NULL,
    revenue_cents bigint  NOT NULL,
    PRIMARY KEY (day, list, rank)
);

CREATE TABLE analytics.gold_active_users (
    day date   PRIMARY KEY,
    dau bigint NOT NULL,
    wau bigint NOT NULL,
    mau bigint NOT NULL
);

CREATE TABLE analytics.gold_user_segments (
    day           date   NOT NULL,
    segment       text   NOT NULL,
    users         bigint NOT NULL,
    avg_views     float8 NOT NULL,
    avg_orders    float8 NOT NULL,
    avg_purchases float8 NOT NULL,
    PRIMARY KEY (day, segment)
);

CREATE TABLE analytics.gold_batch_runs (
    day         date        PRIMARY KEY,
    finished_at timestamptz NOT NULL,
    events      bigint      NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON
    analytics.gold_daily_funnel, analytics.gold_category_daily, analytics.gold_top_products,
    analytics.gold_active_users, analytics.gold_user_segments, analytics.gold_batch_runs
    TO clickstream_writer;
GRANT SELECT ON
    analytics.gold_daily_funnel, analytics.gold_category_daily, analytics.gold_top_products,
    analytics.gold_active_users, analytics.gold_user_segments, analytics.gold_batch_runs
    TO clickstream_reader;
