//! `clickstream report --date D`: the day's gold (from PostgreSQL, with product names) and
//! flash-sale alerts as `report.json`, one CSV per section and a Markdown summary, under
//! `<out>/<D>/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::LakeError;

/// A section: column names and rows of JSON values (numbers, strings, null).
struct Section {
    name: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn money(cents: &Value) -> String {
    match cents.as_i64() {
        Some(c) => format!("${}.{:02}", c / 100, (c % 100).abs()),
        None => "-".into(),
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn section(
    c: &Client,
    name: &'static str,
    columns: Vec<&'static str>,
    sql: &str,
    day: &str,
) -> Result<Section, LakeError> {
    let pg = |e: tokio_postgres::Error| LakeError::Postgres(clickstream_db::pg_detail(&e));
    let rows = c
        .query(
            &format!("SELECT row_to_json(t)::text FROM ({sql}) t"),
            &[&day],
        )
        .await
        .map_err(pg)?;
    let rows = rows
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap_or(Value::Null);
            columns
                .iter()
                .map(|c| v.get(*c).cloned().unwrap_or(Value::Null))
                .collect()
        })
        .collect();
    Ok(Section {
        name,
        columns,
        rows,
    })
}

/// Writes the report of `day` under `out/day/`; returns the files written.
pub async fn write(c: &Client, day: &str, out: &Path) -> Result<Vec<PathBuf>, LakeError> {
    let pg = |e: tokio_postgres::Error| LakeError::Postgres(clickstream_db::pg_detail(&e));
    let have = c
        .query_opt(
            "SELECT 1 FROM analytics.gold_daily_funnel WHERE day = $1::text::date",
            &[&day],
        )
        .await
        .map_err(pg)?;
    if have.is_none() {
        return Err(LakeError::Config(format!(
            "no gold for {day}: run `clickstream batch --date {day}` first"
        )));
    }
    let sections = vec![
        section(c, "funnel", vec!["events", "bot_events", "product_views", "cart_adds", "purchases", "orders", "units", "revenue_cents", "view_to_cart_pct", "cart_to_purchase_pct"],
            "SELECT * FROM analytics.gold_daily_funnel WHERE day = $1::text::date", day).await?,
        section(c, "active_users", vec!["dau", "wau", "mau"],
            "SELECT * FROM analytics.gold_active_users WHERE day = $1::text::date", day).await?,
        section(c, "categories", vec!["category", "views", "cart_adds", "purchases", "units", "revenue_cents", "viewers", "buyers", "conversion_pct"],
            "SELECT * FROM analytics.gold_category_daily WHERE day = $1::text::date ORDER BY revenue_cents DESC, category", day).await?,
        section(c, "top_products", vec!["list", "rank", "product_id", "name", "category", "views", "purchases", "units", "revenue_cents"],
            "SELECT t.*, coalesce(d.name, t.product_id) AS name FROM analytics.gold_top_products t
               LEFT JOIN analytics.dim_product d USING (product_id)
              WHERE t.day = $1::text::date ORDER BY t.list DESC, t.rank", day).await?,
        section(c, "segments", vec!["segment", "users", "avg_views", "avg_orders", "avg_purchases"],
            "SELECT * FROM analytics.gold_user_segments WHERE day = $1::text::date
              ORDER BY array_position(ARRAY['window_shoppers','cart_abandoners','one_time_buyers','repeat_buyers'], segment)", day).await?,
        section(c, "alerts", vec!["window_start", "window_end", "product_id", "name", "views", "purchases"],
            "SELECT to_char(a.window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS window_start,
                    to_char(a.window_end AT TIME ZONE 'UTC', 'HH24:MI') AS window_end,
                    a.product_id, coalesce(d.name, a.product_id) AS name, a.views, a.purchases
               FROM analytics.flash_sale_alerts a LEFT JOIN analytics.dim_product d USING (product_id)
              WHERE (a.window_start AT TIME ZONE 'UTC')::date = $1::text::date
              ORDER BY a.window_start, a.product_id", day).await?,
    ];
    let dir = out.join(day);
    std::fs::create_dir_all(&dir).map_err(|e| LakeError::io(&dir, e))?;
    let mut written = Vec::new();
    let mut put = |name: String, body: String| -> Result<(), LakeError> {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(|e| LakeError::io(&p, e))?;
        written.push(p);
        Ok(())
    };
    let mut doc = serde_json::Map::new();
    doc.insert("day".into(), json!(day));
    for s in &sections {
        let rows: Vec<Value> = s
            .rows
            .iter()
            .map(|r| {
                Value::Object(
                    s.columns
                        .iter()
                        .map(|c| c.to_string())
                        .zip(r.iter().cloned())
                        .collect(),
                )
            })
            .collect();
        doc.insert(s.name.into(), Value::Array(rows));
        let mut csv = s.columns.join(",");
        csv.push('\n');
        for r in &s.rows {
            csv.push_str(&r.iter().map(csv_field).collect::<Vec<_>>().join(","));
            csv.push('\n');
        }
        put(format!("{}.csv", s.name), csv)?;
    }
    put(
        "report.json".into(),
        serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default() + "\n",
    )?;
    put("report.md".into(), markdown(day, &sections))?;
    Ok(written)
}

fn markdown(day: &str, sections: &[Section]) -> String {
    let get = |name: &str| sections.iter().find(|s| s.name == name);
    let cell = |s: &Section, row: usize, col: &str| -> Value {
        s.columns
            .iter()
            .position(|c| *c == col)
            .and_then(|i| s.rows.get(row).map(|r| r[i].clone()))
            .unwrap_or(Value::Null)
    };
    let mut m = String::new();
    let _ = writeln!(m, "# Clickstream daily report: {day}\n");
    if let (Some(f), Some(a)) = (get("funnel"), get("active_users")) {
        let _ = writeln!(m, "## KPIs\n");
        let _ = writeln!(m, "| metric | value |\n|---|---:|");
        for (label, v) in [
            ("Revenue", money(&cell(f, 0, "revenue_cents"))),
            ("Orders", num(&cell(f, 0, "orders"))),
            (
                "Purchased lines / units",
                format!(
                    "{} / {}",
                    num(&cell(f, 0, "purchases")),
                    num(&cell(f, 0, "units"))
                ),
            ),
            (
                "Events (bots)",
                format!(
                    "{} ({})",
                    num(&cell(f, 0, "events")),
                    num(&cell(f, 0, "bot_events"))
                ),
            ),
            (
                "DAU / WAU / MAU",
                format!(
                    "{} / {} / {}",
                    num(&cell(a, 0, "dau")),
                    num(&cell(a, 0, "wau")),
                    num(&cell(a, 0, "mau"))
                ),
            ),
        ] {
            let _ = writeln!(m, "| {label} | {v} |");
        }
        let _ = writeln!(m, "\n## Funnel\n");
        let _ = writeln!(
            m,
            "Product views {} -> cart additions {} ({}%) -> purchases {} ({}%)\n",
            num(&cell(f, 0, "product_views")),
            num(&cell(f, 0, "cart_adds")),
            num(&cell(f, 0, "view_to_cart_pct")),
            num(&cell(f, 0, "purchases")),
            num(&cell(f, 0, "cart_to_purchase_pct")),
        );
    }
    if let Some(c) = get("categories") {
        let _ = writeln!(m, "## Categories\n\n| category | views | purchases | revenue | conversion |\n|---|---:|---:|---:|---:|");
        for i in 0..c.rows.len() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {}% |",
                num(&cell(c, i, "category")),
                num(&cell(c, i, "views")),
                num(&cell(c, i, "purchases")),
                money(&cell(c, i, "revenue_cents")),
                num(&cell(c, i, "conversion_pct"))
            );
        }
        m.push('\n');
    }
    if let Some(t) = get("top_products") {
        let _ = writeln!(m, "## Top products\n\n| list | # | product | views | units | revenue |\n|---|---:|---|---:|---:|---:|");
        for i in 0..t.rows.len() {
            let _ = writeln!(
                m,
                "| {} | {} | {} ({}) | {} | {} | {} |",
                num(&cell(t, i, "list")),
                num(&cell(t, i, "rank")),
                num(&cell(t, i, "name")),
                num(&cell(t, i, "product_id")),
                num(&cell(t, i, "views")),
                num(&cell(t, i, "units")),
                money(&cell(t, i, "revenue_cents"))
            );
        }
        m.push('\n');
    }
    if let Some(s) = get("segments") {
        let _ = writeln!(m, "## Segments (30 days)\n\n| segment | users | avg views | avg orders |\n|---|---:|---:|---:|");
        for i in 0..s.rows.len() {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                num(&cell(s, i, "segment")),
                num(&cell(s, i, "users")),
                num(&cell(s, i, "avg_views")),
                num(&cell(s, i, "avg_orders"))
            );
        }
        m.push('\n');
    }
    if let Some(a) = get("alerts") {
        let _ = writeln!(m, "## Flash-sale alerts ({})\n", a.rows.len());
        for i in 0..a.rows.len().min(50) {
            let _ = writeln!(
                m,
                "- {}-{} {} ({}): {} views, {} purchases",
                num(&cell(a, i, "window_start")),
                num(&cell(a, i, "window_end")),
                num(&cell(a, i, "name")),
                num(&cell(a, i, "product_id")),
                num(&cell(a, i, "views")),
                num(&cell(a, i, "purchases"))
            );
        }
        if a.rows.len() > 50 {
            let _ = writeln!(m, "- ... {} more in alerts.csv", a.rows.len() - 50);
        }
    }
    m
}
