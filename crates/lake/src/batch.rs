//! `clickstream batch --date D`: reads the day's silver, deduplicates by event key
//! (id and event time),
//! computes [`crate::gold`], and writes it as Parquet under `gold/` and into PostgreSQL's
//! `analytics.gold_*` tables; with a database it also snapshots the product catalog into
//! `gold/dim_product/`. Idempotent: a re-run replaces the day's files (same bytes for
//! the same silver) and rows (delete + insert in one transaction).

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    Array, ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use clickstream_model::EventTime;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use tokio_postgres::Client;

use crate::gold::{DayAccumulator, Gold, UserDay, MONTH_DAYS};
use crate::layout::Lake;
use crate::read::{for_each_silver, row_count};
use crate::schema::writer_properties;
use crate::{LakeError, LakeFile};

/// What one batch run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchReport {
    /// The day.
    pub day: String,
    /// Silver files read.
    pub silver_files: usize,
    /// Silver rows read.
    pub silver_rows: usize,
    /// Distinct events after deduplication.
    pub events: usize,
    /// Wall time, milliseconds.
    pub millis: u128,
}

/// Days since the epoch of a `YYYY-MM-DD` date.
pub fn epoch_day(day: &str) -> Result<i32, LakeError> {
    EventTime::parse_date(day)
        .map(|t| (t.as_micros().div_euclid(86_400_000_000)) as i32)
        .ok_or_else(|| LakeError::Config(format!("`{day}` is not a date YYYY-MM-DD")))
}

/// `YYYY-MM-DD` of days since the epoch.
pub fn day_string(epoch_day: i32) -> String {
    EventTime::from_micros(i64::from(epoch_day) * 86_400_000_000).date_string()
}

/// The day's silver, accumulated file by file: the accumulator and how many files / rows
/// were read.
pub fn accumulate_day(lake: &Lake, day: &str) -> Result<(DayAccumulator, usize, usize), LakeError> {
    let files = lake.silver_files_of(day)?;
    // Sized up front from the footers: growing the dedup set doubles it, old and new
    // tables side by side, which was a third of the batch's peak memory.
    let mut expected = 0;
    for (path, _) in &files {
        expected += row_count(lake, path)?;
    }
    let mut acc = DayAccumulator::with_capacity(expected);
    let mut rows = 0;
    for (path, _) in &files {
        for_each_silver(lake, path, |e| {
            rows += 1;
            acc.add(&e);
        })?;
    }
    Ok((acc, files.len(), rows))
}

/// Computes and writes gold for `day`; `db` also gets the PostgreSQL tables.
pub async fn run(
    lake: &Lake,
    day: &str,
    db: Option<&mut Client>,
) -> Result<(Gold, BatchReport), LakeError> {
    let t0 = Instant::now();
    let d = epoch_day(day)?;
    let (acc, silver_files, silver_rows) = accumulate_day(lake, day)?;
    let events = acc.events() as usize;
    // The previous days' user summaries, computing (and keeping) any that are missing.
    let mut history = Vec::with_capacity(MONTH_DAYS - 1);
    for back in 1..MONTH_DAYS as i32 {
        let prev = day_string(d - back);
        history.push(user_days_of(lake, &prev)?);
    }
    let g = acc.finish(day, &history);
    write_parquet(lake, &g)?;
    if let Some(client) = db {
        write_postgres(client, &g).await?;
        write_catalog(lake, day, client).await?;
    }
    let report = BatchReport {
        day: day.to_string(),
        silver_files,
        silver_rows,
        events,
        millis: t0.elapsed().as_millis(),
    };
    Ok((g, report))
}

/// A day's per-user summaries: from gold if the day was batched, else from its silver
/// (written to gold for next time), else empty.
fn user_days_of(lake: &Lake, day: &str) -> Result<Vec<UserDay>, LakeError> {
    let file = lake.gold_file("user_daily", day);
    if lake.exists(&file)? {
        return read_user_days(lake, &file);
    }
    let files = lake.silver_files_of(day)?;
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let users = accumulate_day(lake, day)?.0.into_user_days();
    write_table(lake, "user_daily", day, user_day_columns(day, &users)?)?;
    Ok(users)
}

fn read_user_days(lake: &Lake, path: &LakeFile) -> Result<Vec<UserDay>, LakeError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(lake.open_file(path)?)?.build()?;
    let corrupt = || LakeError::Corrupt(path.to_string());
    let mut out = Vec::new();
    for b in reader {
        let b = b?;
        let s = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        };
        let i = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        };
        let (ids, views, carts, lines, orders, rev) = (
            s("user_id").ok_or_else(corrupt)?,
            i("views").ok_or_else(corrupt)?,
            i("cart_adds").ok_or_else(corrupt)?,
            i("purchases").ok_or_else(corrupt)?,
            i("orders").ok_or_else(corrupt)?,
            i("revenue_cents").ok_or_else(corrupt)?,
        );
        for r in 0..b.num_rows() {
            out.push(UserDay {
                user_id: uuid::Uuid::parse_str(ids.value(r))
                    .map_err(|_| corrupt())?
                    .as_u128(),
                views: views.value(r),
                cart_adds: carts.value(r),
                purchases: lines.value(r),
                orders: orders.value(r),
                revenue_cents: rev.value(r),
            });
        }
    }
    Ok(out)
}

type Columns = Vec<(&'static str, ArrayRef)>;

fn day_col(day: &str, n: usize) -> Result<ArrayRef, LakeError> {
    Ok(Arc::new(Date32Array::from(vec![epoch_day(day)?; n])))
}

fn strs(v: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn i64s(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}

fn f64s(v: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(v))
}

fn user_day_columns(day: &str, users: &[UserDay]) -> Result<Columns, LakeError> {
    Ok(vec![
        ("day", day_col(day, users.len())?),
        (
            "user_id",
            strs(
                users
                    .iter()
                    .map(|u| uuid::Uuid::from_u128(u.user_id).to_string()),
            ),
        ),
        ("views", i64s(users.iter().map(|u| u.views))),
        ("cart_adds", i64s(users.iter().map(|u| u.cart_adds))),
        ("purchases", i64s(users.iter().map(|u| u.purchases))),
        ("orders", i64s(users.iter().map(|u| u.orders))),
        ("revenue_cents", i64s(users.iter().map(|u| u.revenue_cents))),
    ])
}

/// Writes one gold table file for `day`, replacing the previous one whole.
fn write_table(lake: &Lake, table: &str, day: &str, cols: Columns) -> Result<LakeFile, LakeError> {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, a)| {
                Field::new(
                    *n,
                    a.data_type().clone(),
                    a.null_count() > 0 || *a.data_type() == DataType::Float64,
                )
            })
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect())?;
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(writer_properties(1 << 20)))?;
    w.write(&batch)?;
    let body = w.into_inner()?;
    let file = lake.gold_file(table, day);
    lake.put(&file, body)?;
    Ok(file)
}

/// Snapshots `analytics.dim_product` (the shop's catalog: name, category, list price,
/// popularity rank) into `gold/dim_product/date=<day>/`, so the lake's readers (dbt's
/// product 360) have the catalog's attributes without a database connection, and a day's
/// numbers can be read with the catalog as it was that day. Returns the number of products.
pub async fn write_catalog(lake: &Lake, day: &str, client: &Client) -> Result<usize, LakeError> {
    let rows = client
        .query(
            "SELECT product_id, name, category, (price * 100)::int8, popularity_rank
               FROM analytics.dim_product ORDER BY product_id",
            &[],
        )
        .await
        .map_err(|e| LakeError::Postgres(clickstream_db::pg_detail(&e)))?;
    let n = rows.len();
    write_table(
        lake,
        "dim_product",
        day,
        vec![
            ("product_id", strs(rows.iter().map(|r| r.get(0)))),
            ("name", strs(rows.iter().map(|r| r.get(1)))),
            ("category", strs(rows.iter().map(|r| r.get(2)))),
            ("list_price_cents", i64s(rows.iter().map(|r| r.get(3)))),
            (
                "popularity_rank",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.get(4)))),
            ),
        ],
    )?;
    Ok(n)
}

/// The gold tables of `g` as Parquet.
pub fn write_parquet(lake: &Lake, g: &Gold) -> Result<(), LakeError> {
    let day = g.day.as_str();
    let f = &g.funnel;
    write_table(
        lake,
        "daily_funnel",
        day,
        vec![
            ("day", day_col(day, 1)?),
            ("events", i64s([f.events])),
            ("bot_events", i64s([f.bot_events])),
            ("product_views", i64s([f.product_views])),
            ("cart_adds", i64s([f.cart_adds])),
            ("purchases", i64s([f.purchases])),
            ("orders", i64s([f.orders])),
            ("units", i64s([f.units])),
            ("revenue_cents", i64s([f.revenue_cents])),
            ("view_to_cart_pct", f64s([f.view_to_cart_pct])),
            ("cart_to_purchase_pct", f64s([f.cart_to_purchase_pct])),
        ],
    )?;
    let c = &g.categories;
    write_table(
        lake,
        "category_daily",
        day,
        vec![
            ("day", day_col(day, c.len())?),
            ("category", strs(c.iter().map(|x| x.category.clone()))),
            ("views", i64s(c.iter().map(|x| x.views))),
            ("cart_adds", i64s(c.iter().map(|x| x.cart_adds))),
            ("purchases", i64s(c.iter().map(|x| x.purchases))),
            ("units", i64s(c.iter().map(|x| x.units))),
            ("revenue_cents", i64s(c.iter().map(|x| x.revenue_cents))),
            ("viewers", i64s(c.iter().map(|x| x.viewers))),
            ("buyers", i64s(c.iter().map(|x| x.buyers))),
            ("conversion_pct", f64s(c.iter().map(|x| x.conversion_pct))),
        ],
    )?;
    let t = &g.top_products;
    write_table(
        lake,
        "top_products",
        day,
        vec![
            ("day", day_col(day, t.len())?),
            ("list", strs(t.iter().map(|x| x.list.to_string()))),
            (
                "rank",
                Arc::new(Int32Array::from_iter_values(t.iter().map(|x| x.rank))),
            ),
            ("product_id", strs(t.iter().map(|x| x.product_id.clone()))),
            ("category", strs(t.iter().map(|x| x.category.clone()))),
            ("views", i64s(t.iter().map(|x| x.views))),
            ("purchases", i64s(t.iter().map(|x| x.purchases))),
            ("units", i64s(t.iter().map(|x| x.units))),
            ("revenue_cents", i64s(t.iter().map(|x| x.revenue_cents))),
        ],
    )?;
    let a = &g.active_users;
    write_table(
        lake,
        "active_users",
        day,
        vec![
            ("day", day_col(day, 1)?),
            ("dau", i64s([a.dau])),
            ("wau", i64s([a.wau])),
            ("mau", i64s([a.mau])),
        ],
    )?;
    let s = &g.segments;
    write_table(
        lake,
        "user_segments",
        day,
        vec![
            ("day", day_col(day, s.len())?),
            ("segment", strs(s.iter().map(|x| x.segment.to_string()))),
            ("users", i64s(s.iter().map(|x| x.users))),
            ("avg_views", f64s(s.iter().map(|x| Some(x.avg_views)))),
            ("avg_orders", f64s(s.iter().map(|x| Some(x.avg_orders)))),
            (
                "avg_purchases",
                f64s(s.iter().map(|x| Some(x.avg_purchases))),
            ),
        ],
    )?;
    write_table(
        lake,
        "user_daily",
        day,
        user_day_columns(day, &g.user_days)?,
    )?;
    Ok(())
}

/// Replaces the day's rows of the `analytics.gold_*` tables in one transaction.
pub async fn write_postgres(client: &mut Client, g: &Gold) -> Result<(), LakeError> {
    let pg = |e: tokio_postgres::Error| LakeError::Postgres(clickstream_db::pg_detail(&e));
    let tx = client.transaction().await.map_err(pg)?;
    let day = g.day.as_str();
    for t in [
        "gold_daily_funnel",
        "gold_category_daily",
        "gold_top_products",
        "gold_active_users",
        "gold_user_segments",
    ] {
        tx.execute(
            &format!("DELETE FROM analytics.{t} WHERE day = $1::text::date"),
            &[&day],
        )
        .await
        .map_err(pg)?;
    }
    let f = &g.funnel;
    tx.execute(
        "INSERT INTO analytics.gold_daily_funnel (day, events, bot_events, product_views, cart_adds,
            purchases, orders, units, revenue_cents, view_to_cart_pct, cart_to_purchase_pct)
         VALUES ($1::text::date, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[&day, &f.events, &f.bot_events, &f.product_views, &f.cart_adds, &f.purchases, &f.orders,
          &f.units, &f.revenue_cents, &f.view_to_cart_pct, &f.cart_to_purchase_pct],
    )
    .await
    .map_err(pg)?;
    for c in &g.categories {
        tx.execute(
            "INSERT INTO analytics.gold_category_daily (day, category, views, cart_adds, purchases,
                units, revenue_cents, viewers, buyers, conversion_pct)
             VALUES ($1::text::date, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &day,
                &c.category,
                &c.views,
                &c.cart_adds,
                &c.purchases,
                &c.units,
                &c.revenue_cents,
                &c.viewers,
                &c.buyers,
                &c.conversion_pct,
            ],
        )
        .await
        .map_err(pg)?;
    }
    for t in &g.top_products {
        tx.execute(
            "INSERT INTO analytics.gold_top_products (day, list, rank, product_id, category, views,
                purchases, units, revenue_cents)
             VALUES ($1::text::date, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &day,
                &t.list,
                &t.rank,
                &t.product_id,
                &t.category,
                &t.views,
                &t.purchases,
                &t.units,
                &t.revenue_cents,
            ],
        )
        .await
        .map_err(pg)?;
    }
    let a = &g.active_users;
    tx.execute(
        "INSERT INTO analytics.gold_active_users (day, dau, wau, mau) VALUES ($1::text::date, $2, $3, $4)",
        &[&day, &a.dau, &a.wau, &a.mau],
    )
    .await
    .map_err(pg)?;
    for s in &g.segments {
        tx.execute(
            "INSERT INTO analytics.gold_user_segments (day, segment, users, avg_views, avg_orders, avg_purchases)
             VALUES ($1::text::date, $2, $3, $4, $5, $6)",
            &[&day, &s.segment, &s.users, &s.avg_views, &s.avg_orders, &s.avg_purchases],
        )
        .await
        .map_err(pg)?;
    }
    tx.execute(
        "INSERT INTO analytics.gold_batch_runs (day, finished_at, events)
         VALUES ($1::text::date, now(), $2)
         ON CONFLICT (day) DO UPDATE SET finished_at = now(), events = EXCLUDED.events",
        &[&day, &f.events],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(())
}
