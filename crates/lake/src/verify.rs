//! The lambda check: the stream processor's per-minute tables summed over a day against
//! the same numbers recomputed from silver. Once the day is behind every partition's
//! watermark both sides have seen the same distinct events, so any difference is a bug
//! (or data the lake writer has not committed yet).

use std::collections::{BTreeMap, HashSet};

use clickstream_model::EventType;
use tokio_postgres::Client;

use crate::layout::Lake;
use crate::read::{for_each_silver, SilverEvent};
use crate::LakeError;

/// Counters compared per key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events (per type) or product views.
    pub a: i64,
    /// Units.
    pub units: i64,
    /// Revenue, cents.
    pub revenue_cents: i64,
    /// Cart additions (products / categories).
    pub cart_adds: i64,
    /// Purchases (products / categories).
    pub purchases: i64,
}

/// One disagreement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `event_type`, `category` or `product`.
    pub scope: &'static str,
    /// The type, category or product id.
    pub key: String,
    /// Which counter.
    pub metric: &'static str,
    /// The streaming value.
    pub stream: i64,
    /// The batch value.
    pub batch: i64,
}

/// Both sides, keyed by scope and key.
pub type Sides = BTreeMap<(&'static str, String), Counts>;

/// The day's numbers from silver.
pub fn batch_side(lake: &Lake, day: &str) -> Result<Sides, LakeError> {
    let files = lake.silver_files_of(day)?;
    let mut seen = HashSet::new();
    let mut out = Sides::new();
    for (path, _) in &files {
        for_each_silver(lake, path, |e| {
            if seen.insert(e.key()) {
                add(&mut out, &e);
            }
        })?;
    }
    Ok(out)
}

fn add(out: &mut Sides, e: &SilverEvent) {
    let units = i64::from(e.quantity.unwrap_or(0));
    let revenue = if e.event_type == EventType::Purchase {
        e.amount_cents.unwrap_or(0)
    } else {
        0
    };
    let t = out
        .entry(("event_type", e.event_type.as_str().to_string()))
        .or_default();
    t.a += 1;
    t.units += units;
    t.revenue_cents += revenue;
    let Some(pid) = &e.product_id else { return };
    let (v, c, p) = match e.event_type {
        EventType::PageView => (1, 0, 0),
        EventType::AddToCart => (0, 1, 0),
        EventType::Purchase => (0, 0, 1),
    };
    let mut keys = vec![("product", pid.to_string())];
    if let Some(cat) = &e.category {
        keys.push(("category", cat.to_string()));
    }
    for k in keys {
        let x = out.entry(k).or_default();
        x.a += v;
        x.cart_adds += c;
        x.purchases += p;
        x.units += units * p;
        x.revenue_cents += revenue;
    }
}

/// The day's numbers from the stream processor's tables.
pub async fn stream_side(client: &Client, day: &str) -> Result<Sides, LakeError> {
    let pg = |e: tokio_postgres::Error| LakeError::Postgres(clickstream_db::pg_detail(&e));
    let mut out = Sides::new();
    let range =
        "minute >= $1::text::date::timestamptz AND minute < ($1::text::date + 1)::timestamptz";
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .map_err(pg)?;
    for r in client
        .query(
            &format!(
                "SELECT event_type, sum(events)::int8, sum(units)::int8, sum(revenue_cents)::int8
                   FROM analytics.metrics_minute WHERE {range} GROUP BY 1"
            ),
            &[&day],
        )
        .await
        .map_err(pg)?
    {
        out.insert(
            ("event_type", r.get(0)),
            Counts {
                a: r.get(1),
                units: r.get(2),
                revenue_cents: r.get(3),
                ..Counts::default()
            },
        );
    }
    for (scope, table, col) in [
        ("product", "product_minute", "product_id"),
        ("category", "category_minute", "category"),
    ] {
        for r in client
            .query(
                &format!(
                    "SELECT {col}, sum(views)::int8, sum(cart_adds)::int8, sum(purchases)::int8,
                            sum(units)::int8, sum(revenue_cents)::int8
                       FROM analytics.{table} WHERE {range} GROUP BY 1"
                ),
                &[&day],
            )
            .await
            .map_err(pg)?
        {
            out.insert(
                (scope, r.get(0)),
                Counts {
                    a: r.get(1),
                    cart_adds: r.get(2),
                    purchases: r.get(3),
                    units: r.get(4),
                    revenue_cents: r.get(5),
                },
            );
        }
    }
    Ok(out)
}

/// Every counter that differs (a key missing on one side counts as zeros there).
pub fn compare(stream: &Sides, batch: &Sides) -> Vec<Difference> {
    let mut keys: Vec<&(&'static str, String)> = stream.keys().chain(batch.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let s = stream.get(k).copied().unwrap_or_default();
        let b = batch.get(k).copied().unwrap_or_default();
        let first = if k.0 == "event_type" {
            "events"
        } else {
            "views"
        };
        for (metric, x, y) in [
            (first, s.a, b.a),
            ("cart_adds", s.cart_adds, b.cart_adds),
            ("purchases", s.purchases, b.purchases),
            ("units", s.units, b.units),
            ("revenue_cents", s.revenue_cents, b.revenue_cents),
        ] {
            if x != y {
                out.push(Difference {
                    scope: k.0,
                    key: k.1.clone(),
                    metric,
                    stream: x,
                    batch: y,
                });
            }
        }
    }
    out
}

/// Runs the check for `day`.
pub async fn verify(
    lake: &Lake,
    client: &Client,
    day: &str,
) -> Result<(Sides, Vec<Difference>), LakeError> {
    let stream = stream_side(client, day).await?;
    let batch = batch_side(lake, day)?;
    let diffs = compare(&stream, &batch);
    Ok((batch, diffs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_count_as_zero_and_equal_sides_agree() {
        let mut a = Sides::new();
        a.insert(
            ("product", "P1".into()),
            Counts {
                a: 3,
                ..Counts::default()
            },
        );
        assert!(compare(&a, &a).is_empty());
        let d = compare(&a, &Sides::new());
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].metric, d[0].stream, d[0].batch), ("views", 3, 0));
    }
}
