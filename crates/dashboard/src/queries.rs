//! One function per dashboard panel: a few parameterised SQL statements over the
//! `analytics` schema and the JSON shape the page (and API users) get.
//!
//! Time windows end at the *anchor*: the newest minute the processor has written. For a
//! live feed that is the current minute; for a replay or a stopped pipeline it is the last
//! minute with data, so panels never go blank just because event time is not wall time.
//! "Today" is the anchor's UTC day. Money is integer cents, as stored.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::error::ApiError;
use clickstream_db::health::{InstanceHealth, PartitionLag};

/// Event types in funnel order, as stored in `metrics_minute.event_type`.
pub const EVENT_TYPES: [&str; 3] = ["page_view", "add_to_cart", "purchase"];

/// Bounds on API parameters, so one request cannot ask for an unbounded scan.
pub const MAX_MINUTES: i32 = 24 * 60;
/// Most rows a top-N request may ask for.
pub const MAX_TOP: i64 = 100;
/// Most alerts one request may ask for.
pub const MAX_ALERTS: i64 = 500;

/// The newest minute with data (epoch seconds), or `None` before the first batch.
pub async fn anchor(c: &Client) -> Result<Option<f64>, ApiError> {
    let row = c
        .query_one(
            "SELECT extract(epoch FROM max(minute))::float8 FROM analytics.metrics_minute",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Checks a `YYYY-MM-DD` calendar date; returns it unchanged for binding as `$n::date`.
pub fn parse_date(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest(format!("date `{s}` is not a calendar date YYYY-MM-DD"));
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, ApiError> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1970..=9999).contains(&y) || d == 0 || d > days {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// Validates a window length in minutes.
pub fn check_minutes(m: Option<i32>) -> Result<i32, ApiError> {
    let m = m.unwrap_or(60);
    if !(1..=MAX_MINUTES).contains(&m) {
        return Err(ApiError::BadRequest(format!(
            "minutes must be between 1 and {MAX_MINUTES}, got {m}"
        )));
    }
    Ok(m)
}

/// Validates a row limit.
pub fn check_limit(l: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let l = l.unwrap_or(default);
    if !(1..=max).contains(&l) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}, got {l}"
        )));
    }
    Ok(l)
}

/// Counters of one event type for a day.
#[derive(Debug, Clone, Serialize)]
pub struct TypeCount {
    /// `page_view`, `add_to_cart` or `purchase`.
    pub event_type: String,
    /// Distinct valid events.
    pub events: i64,
    /// Units (cart additions and purchases).
    pub units: i64,
    /// Revenue in cents (purchases).
    pub revenue_cents: i64,
    /// Events that arrived behind their partition's watermark.
    pub late_events: i64,
    /// Events from bot user agents.
    pub bot_events: i64,
}

/// Headline numbers for one UTC day (default: the anchor's day).
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// Per event type.
    pub by_type: Vec<TypeCount>,
    /// All events of the day.
    pub events: i64,
    /// Purchase revenue in cents.
    pub revenue_cents: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Late events (all types).
    pub late_events: i64,
    /// Bot events (all types).
    pub bot_events: i64,
    /// Open (not yet timed out) human sessions, whatever day they started.
    pub active_sessions: i64,
    /// Human sessions that started this day.
    pub sessions: i64,
    /// ... of which with at least one purchase.
    pub converted_sessions: i64,
    /// `converted_sessions / sessions` in percent.
    pub conversion_pct: Option<f64>,
    /// Closed sessions of the day that added to cart but did not buy.
    pub abandoned_carts: i64,
    /// Closed sessions of the day that added to cart.
    pub closed_cart_sessions: i64,
    /// `abandoned_carts / closed_cart_sessions` in percent.
    pub cart_abandonment_pct: Option<f64>,
    /// Mean length of the day's closed sessions.
    pub avg_session_seconds: Option<f64>,
}

fn pct(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| (10_000.0 * num as f64 / den as f64).round() / 100.0)
}

/// The day to show: `date` if given, else the anchor's day, else today.
const DAY_SQL: &str =
    "coalesce($1::text::date, (to_timestamp($2::float8) AT TIME ZONE 'UTC')::date, current_date)";

/// Headline numbers for `date` (or the anchor's day).
pub async fn overview(
    c: &Client,
    anchor: Option<f64>,
    date: Option<&str>,
) -> Result<Overview, ApiError> {
    let types = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT d.day::text, m.event_type, sum(m.events)::int8, sum(m.units)::int8,
                sum(m.revenue_cents)::int8, sum(m.late_events)::int8, sum(m.bot_events)::int8
           FROM d LEFT JOIN analytics.metrics_minute m
             ON m.minute >= d.day::timestamptz AND m.minute < (d.day + 1)::timestamptz
          GROUP BY 1, 2"
    );
    let sessions = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT (SELECT count(*) FROM analytics.sessions WHERE is_open AND NOT is_bot),
                count(s.session_key),
                count(*) FILTER (WHERE s.purchases > 0),
                count(*) FILTER (WHERE NOT s.is_open AND s.cart_adds > 0 AND s.purchases = 0),
                count(*) FILTER (WHERE NOT s.is_open AND s.cart_adds > 0),
                (avg(extract(epoch FROM s.session_end - s.session_start))
                    FILTER (WHERE NOT s.is_open))::float8
           FROM d LEFT JOIN analytics.sessions s
             ON NOT s.is_bot AND s.session_start >= d.day::timestamptz
            AND s.session_start < (d.day + 1)::timestamptz"
    );
    let day: [&(dyn ToSql + Sync); 2] = [&date, &anchor];
    let (type_rows, s) = tokio::try_join!(c.query(&types, &day), c.query_one(&sessions, &day))?;
    let day: String = type_rows
        .first()
        .map(|r| r.get(0))
        .unwrap_or_else(|| date.unwrap_or_default().to_string());
    let mut by_type: Vec<TypeCount> = EVENT_TYPES
        .iter()
        .map(|t| TypeCount {
            event_type: t.to_string(),
            events: 0,
            units: 0,
            revenue_cents: 0,
            late_events: 0,
            bot_events: 0,
        })
        .collect();
    for r in &type_rows {
        let Some(t) = r.get::<_, Option<String>>(1) else {
            continue;
        };
        let Some(slot) = by_type.iter_mut().find(|x| x.event_type == t) else {
            continue;
        };
        slot.events = r.get(2);
        slot.units = r.get(3);
        slot.revenue_cents = r.get(4);
        slot.late_events = r.get(5);
        slot.bot_events = r.get(6);
    }
    let sum = |f: fn(&TypeCount) -> i64| by_type.iter().map(f).sum::<i64>();
    let (sessions, converted, abandoned, carted): (i64, i64, i64, i64) =
        (s.get(1), s.get(2), s.get(3), s.get(4));
    Ok(Overview {
        day,
        events: sum(|t| t.events),
        revenue_cents: sum(|t| t.revenue_cents),
        purchases: by_type[2].events,
        late_events: sum(|t| t.late_events),
        bot_events: sum(|t| t.bot_events),
        active_sessions: s.get(0),
        sessions,
        converted_sessions: converted,
        conversion_pct: pct(converted, sessions),
        abandoned_carts: abandoned,
        closed_cart_sessions: carted,
        cart_abandonment_pct: pct(abandoned, carted),
        avg_session_seconds: s.get(5),
        by_type,
    })
}

/// Events of one minute, per type.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputPoint {
    /// Minute start, epoch milliseconds.
    pub minute_ms: i64,
    /// Page views that minute.
    pub page_view: i64,
    /// Cart additions that minute.
    pub add_to_cart: i64,
    /// Purchases that minute.
    pub purchase: i64,
}

/// Events per minute and type over the `minutes` minutes up to the anchor, every minute
/// present (zero when nothing happened).
pub async fn throughput(
    c: &Client,
    anchor: Option<f64>,
    minutes: i32,
) -> Result<Vec<ThroughputPoint>, ApiError> {
    let Some(anchor) = anchor else {
        return Ok(Vec::new());
    };
    let rows = c
        .query(
            "SELECT (extract(epoch FROM minute) * 1000)::int8, event_type, events
               FROM analytics.metrics_minute
              WHERE minute > to_timestamp($1::float8) - make_interval(mins => $2::int4)
                AND minute <= to_timestamp($1::float8)",
            &[&anchor, &minutes],
        )
        .await?;
    let last_ms = (anchor * 1000.0) as i64;
    let first_ms = last_ms - (i64::from(minutes) - 1) * 60_000;
    let mut points: Vec<ThroughputPoint> = (0..i64::from(minutes))
        .map(|i| ThroughputPoint {
            minute_ms: first_ms + i * 60_000,
            page_view: 0,
            add_to_cart: 0,
            purchase: 0,
        })
        .collect();
    for r in rows {
        let ms: i64 = r.get(0);
        let i = ((ms - first_ms) / 60_000) as usize;
        let Some(p) = points.get_mut(i) else { continue };
        let n: i64 = r.get(2);
        match r.get::<_, &str>(1) {
            "page_view" => p.page_view = n,
            "add_to_cart" => p.add_to_cart = n,
            "purchase" => p.purchase = n,
            _ => {}
        }
    }
    Ok(points)
}

/// Conversion of the human sessions that started in one minute.
#[derive(Debug, Clone, Serialize)]
pub struct ConversionPoint {
    /// Minute start, epoch milliseconds.
    pub minute_ms: i64,
    /// Sessions started that minute.
    pub sessions: i64,
    /// ... of which bought something (so far: recent sessions may still convert).
    pub converted_sessions: i64,
    /// Percentage.
    pub conversion_pct: Option<f64>,
}

/// Conversion per session-start minute over the `minutes` up to the anchor (the
/// `analytics.conversion_minute` definition).
pub async fn conversion(
    c: &Client,
    anchor: Option<f64>,
    minutes: i32,
) -> Result<Vec<ConversionPoint>, ApiError> {
    let Some(anchor) = anchor else {
        return Ok(Vec::new());
    };
    let rows = c
        .query(
            "SELECT (extract(epoch FROM date_trunc('minute', session_start)) * 1000)::int8,
                    count(*), count(*) FILTER (WHERE purchases > 0)
               FROM analytics.sessions
              WHERE NOT is_bot
                AND session_start > to_timestamp($1::float8) - make_interval(mins => $2::int4)
                AND session_start < to_timestamp($1::float8) + interval '1 minute'
              GROUP BY 1 ORDER BY 1",
            &[&anchor, &minutes],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (sessions, converted): (i64, i64) = (r.get(1), r.get(2));
            ConversionPoint {
                minute_ms: r.get(0),
                sessions,
                converted_sessions: converted,
                conversion_pct: pct(converted, sessions),
            }
        })
        .collect())
}

/// View -> cart -> purchase for one day, counted in events and in sessions.
#[derive(Debug, Clone, Serialize)]
pub struct Funnel {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// Product page views.
    pub product_views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// `cart_adds / product_views` in percent.
    pub view_to_cart_pct: Option<f64>,
    /// `purchases / cart_adds` in percent.
    pub cart_to_purchase_pct: Option<f64>,
    /// Human sessions of the day with at least one page view.
    pub sessions_viewed: i64,
    /// ... with at least one cart addition.
    pub sessions_carted: i64,
    /// ... with at least one purchase.
    pub sessions_purchased: i64,
}

/// The funnel of `date` (or the anchor's day).
pub async fn funnel(
    c: &Client,
    anchor: Option<f64>,
    date: Option<&str>,
) -> Result<Funnel, ApiError> {
    let events = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT d.day::text, coalesce(sum(m.views), 0)::int8, coalesce(sum(m.cart_adds), 0)::int8,
                coalesce(sum(m.purchases), 0)::int8, coalesce(sum(m.units), 0)::int8,
                coalesce(sum(m.revenue_cents), 0)::int8
           FROM d LEFT JOIN analytics.category_minute m
             ON m.minute >= d.day::timestamptz AND m.minute < (d.day + 1)::timestamptz
          GROUP BY 1"
    );
    let sessions = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT count(*) FILTER (WHERE s.page_views > 0), count(*) FILTER (WHERE s.cart_adds > 0),
                count(*) FILTER (WHERE s.purchases > 0)
           FROM d JOIN analytics.sessions s
             ON NOT s.is_bot AND s.session_start >= d.day::timestamptz
            AND s.session_start < (d.day + 1)::timestamptz"
    );
    let day: [&(dyn ToSql + Sync); 2] = [&date, &anchor];
    let (e, s) = tokio::try_join!(c.query_one(&events, &day), c.query_one(&sessions, &day))?;
    let (views, carts, purchases): (i64, i64, i64) = (e.get(1), e.get(2), e.get(3));
    Ok(Funnel {
        day: e.get(0),
        product_views: views,
        cart_adds: carts,
        purchases,
        units: e.get(4),
        revenue_cents: e.get(5),
        view_to_cart_pct: pct(carts, views),
        cart_to_purchase_pct: pct(purchases, carts),
        sessions_viewed: s.get(0),
        sessions_carted: s.get(1),
        sessions_purchased: s.get(2),
    })
}

/// One UTC hour of a day.
#[derive(Debug, Clone, Serialize)]
pub struct HourPoint {
    /// Hour start, epoch milliseconds.
    pub hour_ms: i64,
    /// All events of the hour (every type, bots included, as in `metrics_minute`).
    pub events: i64,
    /// Page views.
    pub page_views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// Human sessions that started in the hour.
    pub sessions_started: i64,
}

/// A day's hours and its peak.
#[derive(Debug, Clone, Serialize)]
pub struct Hourly {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// The 24 hours of the day, in order (zero where nothing happened).
    pub hours: Vec<HourPoint>,
    /// Index into `hours` of the hour with the most events (the earlier on a tie, as dbt's
    /// `hourly_stats.is_peak_hour`); `None` for a day without events.
    pub peak: Option<usize>,
}

/// Per-hour events, revenue and sessions of `date` (or the anchor's day), and its peak
/// hour.
pub async fn hourly(
    c: &Client,
    anchor: Option<f64>,
    date: Option<&str>,
) -> Result<Hourly, ApiError> {
    let events = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT d.day::text, extract(epoch FROM d.day::timestamptz)::int8,
                extract(hour FROM m.minute AT TIME ZONE 'UTC')::int4,
                sum(m.events)::int8,
                sum(m.events) FILTER (WHERE m.event_type = 'page_view')::int8,
                sum(m.events) FILTER (WHERE m.event_type = 'add_to_cart')::int8,
                sum(m.events) FILTER (WHERE m.event_type = 'purchase')::int8,
                sum(m.revenue_cents)::int8
           FROM d LEFT JOIN analytics.metrics_minute m
             ON m.minute >= d.day::timestamptz AND m.minute < (d.day + 1)::timestamptz
          GROUP BY 1, 2, 3"
    );
    let sessions = format!(
        "WITH d AS (SELECT {DAY_SQL} AS day)
         SELECT extract(hour FROM s.session_start AT TIME ZONE 'UTC')::int4, count(*)
           FROM d JOIN analytics.sessions s
             ON NOT s.is_bot AND s.session_start >= d.day::timestamptz
            AND s.session_start < (d.day + 1)::timestamptz
          GROUP BY 1"
    );
    let day: [&(dyn ToSql + Sync); 2] = [&date, &anchor];
    let (rows, srows) = tokio::try_join!(c.query(&events, &day), c.query(&sessions, &day))?;
    // The LEFT JOIN always yields the day, even without events.
    let (day, day_start): (String, i64) = rows
        .first()
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or_default();
    let mut hours: Vec<HourPoint> = (0..24i64)
        .map(|h| HourPoint {
            hour_ms: (day_start + h * 3600) * 1000,
            events: 0,
            page_views: 0,
            cart_adds: 0,
            purchases: 0,
            revenue_cents: 0,
            sessions_started: 0,
        })
        .collect();
    let slot = |h: Option<i32>| usize::try_from(h?).ok().filter(|&i| i < 24);
    for r in &rows {
        let Some(i) = slot(r.get(2)) else { continue };
        let n = |k: usize| r.get::<_, Option<i64>>(k).unwrap_or(0);
        let p = &mut hours[i];
        (p.events, p.page_views, p.cart_adds) = (n(3), n(4), n(5));
        (p.purchases, p.revenue_cents) = (n(6), n(7));
    }
    for r in &srows {
        if let Some(i) = slot(r.get(0)) {
            hours[i].sessions_started = r.get(1);
        }
    }
    Ok(Hourly {
        day,
        peak: peak_hour(&hours),
        hours,
    })
}

/// The busiest hour by events; the earlier one on a tie; none without events.
fn peak_hour(hours: &[HourPoint]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, h) in hours.iter().enumerate() {
        if h.events > 0 && best.is_none_or(|b| h.events > hours[b].events) {
            best = Some(i);
        }
    }
    best
}

/// What top products are ranked by.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// Product page views.
    #[default]
    Views,
    /// Cart additions.
    CartAdds,
    /// Purchased order lines.
    Purchases,
    /// Revenue.
    Revenue,
}

impl RankBy {
    fn as_str(self) -> &'static str {
        match self {
            RankBy::Views => "views",
            RankBy::CartAdds => "cart_adds",
            RankBy::Purchases => "purchases",
            RankBy::Revenue => "revenue",
        }
    }
}

/// One product's totals over the window.
#[derive(Debug, Clone, Serialize)]
pub struct TopProduct {
    /// Catalog id.
    pub product_id: String,
    /// Name from `dim_product` (the id if the catalog does not know it).
    pub name: String,
    /// Category.
    pub category: String,
    /// Page views.
    pub views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
}

/// The `limit` best products by `by` over the `minutes` up to the anchor.
pub async fn top_products(
    c: &Client,
    anchor: Option<f64>,
    minutes: i32,
    limit: i64,
    by: RankBy,
) -> Result<Vec<TopProduct>, ApiError> {
    let Some(anchor) = anchor else {
        return Ok(Vec::new());
    };
    let rows = c
        .query(
            "SELECT p.product_id, coalesce(d.name, p.product_id), min(p.category),
                    sum(p.views)::int8 AS views, sum(p.cart_adds)::int8 AS cart_adds,
                    sum(p.purchases)::int8 AS purchases, sum(p.units)::int8,
                    sum(p.revenue_cents)::int8 AS revenue
               FROM analytics.product_minute p
               LEFT JOIN analytics.dim_product d USING (product_id)
              WHERE p.minute > to_timestamp($1::float8) - make_interval(mins => $2::int4)
                AND p.minute <= to_timestamp($1::float8)
              GROUP BY p.product_id, d.name
              ORDER BY CASE $4::text WHEN 'views' THEN sum(p.views)
                                     WHEN 'cart_adds' THEN sum(p.cart_adds)
                                     WHEN 'purchases' THEN sum(p.purchases)
                                     ELSE sum(p.revenue_cents) END DESC,
                       p.product_id
              LIMIT $3",
            &[&anchor, &minutes, &limit, &by.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TopProduct {
            product_id: r.get(0),
            name: r.get(1),
            category: r.get(2),
            views: r.get(3),
            cart_adds: r.get(4),
            purchases: r.get(5),
            units: r.get(6),
            revenue_cents: r.get(7),
        })
        .collect())
}

/// One flash-sale alert.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Window start, epoch milliseconds.
    pub window_start_ms: i64,
    /// Window end (exclusive), epoch milliseconds.
    pub window_end_ms: i64,
    /// Catalog id.
    pub product_id: String,
    /// Product name.
    pub name: String,
    /// Category.
    pub category: String,
    /// Views in the window.
    pub views: i64,
    /// Purchases in the window.
    pub purchases: i64,
    /// When the processor raised it (wall clock), epoch milliseconds.
    pub raised_at_ms: i64,
}

/// The alert feed: the newest `limit` alerts and how many there are in all.
#[derive(Debug, Clone, Serialize)]
pub struct Alerts {
    /// All alerts ever raised.
    pub total: i64,
    /// Newest first.
    pub recent: Vec<Alert>,
}

/// The newest `limit` flash-sale alerts.
pub async fn alerts(c: &Client, limit: i64) -> Result<Alerts, ApiError> {
    let params: [&(dyn ToSql + Sync); 1] = [&limit];
    let (rows, total) = tokio::try_join!(
        c.query(
            "SELECT (extract(epoch FROM a.window_start) * 1000)::int8,
                    (extract(epoch FROM a.window_end) * 1000)::int8,
                    a.product_id, coalesce(d.name, a.product_id), coalesce(d.category, ''),
                    a.views, a.purchases, (extract(epoch FROM a.raised_at) * 1000)::int8
               FROM analytics.flash_sale_alerts a
               LEFT JOIN analytics.dim_product d USING (product_id)
              ORDER BY a.raised_at DESC, a.window_start DESC, a.product_id
              LIMIT $1",
            &params,
        ),
        c.query_one("SELECT count(*) FROM analytics.flash_sale_alerts", &[]),
    )?;
    Ok(Alerts {
        total: total.get(0),
        recent: rows
            .iter()
            .map(|r| Alert {
                window_start_ms: r.get(0),
                window_end_ms: r.get(1),
                product_id: r.get(2),
                name: r.get(3),
                category: r.get(4),
                views: r.get(5),
                purchases: r.get(6),
                raised_at_ms: r.get(7),
            })
            .collect(),
    })
}

/// Pipeline health: progress per partition, instances, dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Consumer group shown.
    pub group: String,
    /// Raw topic shown.
    pub topic: String,
    /// Per partition (every partition Kafka reports, plus any PostgreSQL knows).
    pub partitions: Vec<PartitionLag>,
    /// Sum of known lags.
    pub total_lag: Option<i64>,
    /// Why lag is unknown, if it is.
    pub kafka_error: Option<String>,
    /// Processor instances of the group, most recently alive first.
    pub instances: Vec<InstanceHealth>,
    /// Whether any instance is alive.
    pub processor_running: bool,
    /// Seconds since the group's last batch commit.
    pub last_commit_seconds_ago: Option<f64>,
    /// Records dead-lettered (= rows in `analytics.rejected_events`).
    pub dlq_records: i64,
    /// The most frequent reject reasons with their counts.
    pub dlq_top_reasons: Vec<(String, i64)>,
    /// Duplicates dropped by the group (sum over instances).
    pub duplicates: i64,
    /// Events applied by the group (sum over instances).
    pub events_applied: i64,
    /// Events applied per second since the previous snapshot (live stream only).
    pub events_per_second: Option<f64>,
}

/// Health of `group` on `topic`; `ends` are Kafka end offsets per partition, or why not.
/// Progress and instances come from the shared read model ([`clickstream_db::health`]),
/// the same one `clickstream status` prints.
pub async fn health(
    c: &Client,
    group: &str,
    topic: &str,
    ends: Result<Vec<(i32, i64)>, String>,
    stale_after_secs: f64,
) -> Result<Health, ApiError> {
    let (model, dlq, reasons) = tokio::try_join!(
        async { clickstream_db::health::group_health(c, group, topic, stale_after_secs).await },
        c.query_one("SELECT count(*) FROM analytics.rejected_events", &[]),
        c.query(
            "SELECT reason, count(*) FROM analytics.rejected_events
              GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
            &[],
        ),
    )?;
    let (ends, kafka_error) = match ends {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let partitions = model.lag(&ends);
    let total_lag = kafka_error
        .is_none()
        .then(|| partitions.iter().filter_map(|p| p.lag).sum());
    let (events_applied, duplicates) = model.totals();
    let instances: Vec<InstanceHealth> = model.instances.iter().take(50).cloned().collect();
    Ok(Health {
        group: group.to_string(),
        topic: topic.to_string(),
        total_lag,
        kafka_error,
        processor_running: model.running(),
        last_commit_seconds_ago: model.last_commit_seconds_ago(),
        instances,
        partitions,
        dlq_records: dlq.get(0),
        dlq_top_reasons: reasons.iter().map(|r| (r.get(0), r.get(1))).collect(),
        duplicates,
        events_applied,
        events_per_second: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert!(parse_date("2026-11-23").is_ok());
        assert!(parse_date("2024-02-29").is_ok());
        for bad in [
            "2026-02-29",
            "2100-02-29",
            "2026-13-01",
            "2026-04-31",
            "2026-00-10",
            "2026-1-01",
            "26-11-23",
            "2026/11/23",
            "2026-11-2x",
            "1969-12-31",
            "",
            "2026-11-23; DROP TABLE x",
        ] {
            assert!(parse_date(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(check_minutes(None).unwrap(), 60);
        assert!(check_minutes(Some(0)).is_err());
        assert!(check_minutes(Some(MAX_MINUTES + 1)).is_err());
        assert_eq!(check_limit(Some(MAX_TOP), 10, MAX_TOP).unwrap(), MAX_TOP);
        assert!(check_limit(Some(-1), 10, MAX_TOP).is_err());
        assert!(check_limit(Some(MAX_TOP + 1), 10, MAX_TOP).is_err());
    }

    #[test]
    fn the_peak_hour_is_the_busiest_and_the_earlier_on_a_tie() {
        let hours = |events: &[i64]| -> Vec<HourPoint> {
            events
                .iter()
                .enumerate()
                .map(|(i, &events)| HourPoint {
                    hour_ms: i as i64 * 3_600_000,
                    events,
                    page_views: events,
                    cart_adds: 0,
                    purchases: 0,
                    revenue_cents: 0,
                    sessions_started: 0,
                })
                .collect()
        };
        assert_eq!(peak_hour(&hours(&[0; 24])), None);
        assert_eq!(peak_hour(&hours(&[3, 9, 9, 1])), Some(1));
        assert_eq!(peak_hour(&hours(&[0, 0, 0, 4])), Some(3));
        assert_eq!(peak_hour(&hours(&[])), None);
    }

    #[test]
    fn percentages_round_to_two_places_and_skip_empty_denominators() {
        assert_eq!(pct(1, 3), Some(33.33));
        assert_eq!(pct(2, 3), Some(66.67));
        assert_eq!(pct(5, 0), None);
    }
}
