//! The processor's tables read back in the shape of [`super::reference::Expected`], and
//! comparisons that name every difference.

use std::collections::BTreeMap;

use super::reference::{Counts, Expected, Minute, Window};
use super::{connect, TestDb};

const US: &str = "(extract(epoch FROM {}) * 1000000)::int8";

fn us(col: &str) -> String {
    US.replace("{}", col)
}

/// Everything the processor wrote, in the reference's shape (the audit table's row count
/// as `distinct_events`).
pub async fn actual(db: &TestDb) -> Expected {
    let c = connect(&db.admin_url).await;
    let mut x = Expected::default();
    for r in c
        .query(&format!("SELECT {}, event_type, events, units, revenue_cents, late_events, bot_events FROM analytics.metrics_minute", us("minute")), &[])
        .await
        .unwrap()
    {
        x.minutes.insert(
            (r.get(0), r.get(1)),
            Minute { events: r.get(2), units: r.get(3), revenue: r.get(4), late: r.get(5), bot: r.get(6) },
        );
    }
    for (table, key) in [
        ("product_minute", "product_id"),
        ("category_minute", "category"),
    ] {
        for r in c
            .query(&format!("SELECT {}, {key}, views, cart_adds, purchases, units, revenue_cents FROM analytics.{table}", us("minute")), &[])
            .await
            .unwrap()
        {
            let v = Counts { views: r.get(2), carts: r.get(3), purchases: r.get(4), units: r.get(5), revenue: r.get(6) };
            let k = (r.get(0), r.get(1));
            if table == "product_minute" {
                x.products.insert(k, v);
            } else {
                x.categories.insert(k, v);
            }
        }
    }
    for r in c
        .query(&format!("SELECT {}, product_id, views, purchases, late_views, late_purchases FROM analytics.product_window", us("window_start")), &[])
        .await
        .unwrap()
    {
        x.windows.insert(
            (r.get(0), r.get(1)),
            Window { views: r.get(2), purchases: r.get(3), late_views: r.get(4), late_purchases: r.get(5) },
        );
    }
    for r in c
        .query(
            &format!(
                "SELECT session_key, user_id, {}, {}, events, page_views, cart_adds, purchases, revenue_cents, is_open FROM analytics.sessions",
                us("session_start"),
                us("session_end")
            ),
            &[],
        )
        .await
        .unwrap()
    {
        x.sessions.insert(
            r.get(0),
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8), r.get(9)),
        );
    }
    for r in c
        .query(
            "SELECT event_id, absorbed_by_session FROM analytics.late_events",
            &[],
        )
        .await
        .unwrap()
    {
        x.late.insert(r.get(0), r.get(1));
    }
    for r in c
        .query(
            &format!(
                "SELECT {}, product_id, views, purchases FROM analytics.flash_sale_alerts",
                us("window_start")
            ),
            &[],
        )
        .await
        .unwrap()
    {
        x.alerts.insert((r.get(0), r.get(1)), (r.get(2), r.get(3)));
    }
    for r in c
        .query(
            "SELECT kafka_partition, kafka_offset, reason FROM analytics.rejected_events",
            &[],
        )
        .await
        .unwrap()
    {
        x.rejected.insert((r.get(0), r.get(1)), r.get(2));
    }
    for r in c
        .query(
            &format!(
                "SELECT {}, event_id, order_id, amount_cents, quantity, product_id FROM analytics.purchases",
                us("event_time")
            ),
            &[],
        )
        .await
        .unwrap()
    {
        x.purchases.insert((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4), r.get(5)));
    }
    for r in c
        .query(
            &format!(
                "SELECT {}, event_type, events, users, sessions_started, revenue_cents FROM analytics.event_stats_hourly",
                us("hour")
            ),
            &[],
        )
        .await
        .unwrap()
    {
        x.hourly.insert((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4), r.get(5)));
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM analytics.events", &[])
        .await
        .unwrap()
        .get(0);
    x.distinct_events = n as usize;
    x
}

pub fn diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    name: &str,
    want: &BTreeMap<K, V>,
    got: &BTreeMap<K, V>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            Some(g) if g == v => {}
            Some(g) => out.push(format!("{name} {k:?}: expected {v:?}, got {g:?}")),
            None => out.push(format!("{name} {k:?}: expected {v:?}, missing")),
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("{name} {k:?}: unexpected {g:?}"));
        }
    }
    out
}

/// Asserts every table equals the reference, listing the first differences.
pub fn assert_tables_equal(want: &Expected, got: &Expected) {
    let mut d = Vec::new();
    d.extend(diff("metrics_minute", &want.minutes, &got.minutes));
    d.extend(diff("product_minute", &want.products, &got.products));
    d.extend(diff("category_minute", &want.categories, &got.categories));
    d.extend(diff("product_window", &want.windows, &got.windows));
    d.extend(diff("sessions", &want.sessions, &got.sessions));
    d.extend(diff("late_events", &want.late, &got.late));
    d.extend(diff("flash_sale_alerts", &want.alerts, &got.alerts));
    d.extend(diff("rejected_events", &want.rejected, &got.rejected));
    d.extend(diff("purchases", &want.purchases, &got.purchases));
    d.extend(diff("event_stats_hourly", &want.hourly, &got.hourly));
    if want.distinct_events != got.distinct_events {
        d.push(format!(
            "events: expected {}, got {}",
            want.distinct_events, got.distinct_events
        ));
    }
    assert!(
        d.is_empty(),
        "{} differences, first ones:\n{}",
        d.len(),
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
