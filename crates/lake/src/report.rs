//! `clickstream report --date D`: the day's gold (from PostgreSQL, with product names) and
//! flash-sale alerts as `report.json`, one CSV per section, a Markdown summary and a plain
//! text one, under `<out>/<D>/`.
//!
//! Text in a report can come from events (categories, product ids) or the catalog (names),
//! so it is escaped for each format: CSV cells that a spreadsheet would run as a formula
//! (`=`, `+`, `-`, `@`, tab, CR first) get a leading `'`, Markdown cells escape `|`, `\`,
//! `<`, `>` and lose line breaks, plain text loses control characters.

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
        // OWASP's defence against formula injection: text a spreadsheet would evaluate is
        // made a literal. Numbers are JSON numbers, never strings, so `-5` stays a number.
        Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
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

/// A value as a Markdown table cell.
fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => md_escape(s),
        other => other.to_string(),
    }
}

/// Text safe inside a Markdown table cell: no line breaks or control characters, and the
/// characters that end a cell or start HTML escaped.
fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A value as plain text: strings without control characters.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        other => other.to_string(),
    }
}

/// Every section as an aligned plain-text table (for mail bodies and terminals).
fn text(day: &str, sections: &[Section]) -> String {
    let mut t = format!("Clickstream daily report: {day}\n");
    for s in sections {
        let cells: Vec<Vec<String>> = s
            .rows
            .iter()
            .map(|r| r.iter().map(plain).collect())
            .collect();
        let width = |i: usize| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([s.columns[i].len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..s.columns.len()).map(width).collect();
        let _ = writeln!(t, "\n{} ({} rows)", s.name.replace('_', " "), s.rows.len());
        let line = |cols: Vec<&str>| -> String {
            cols.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let _ = writeln!(t, "{}", line(s.columns.clone()));
        for r in &cells {
            let _ = writeln!(t, "{}", line(r.iter().map(String::as_str).collect()));
        }
    }
    t
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
    put("report.txt".into(), text(day, &sections))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "=HYPERLINK(\"http://x\")|a\nb<script>\\";

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_literals() {
        for (v, want) in [
            (json!("=1+1"), "'=1+1"),
            (json!("+cmd"), "'+cmd"),
            (json!("-2+3"), "'-2+3"),
            (json!("@SUM(A1)"), "'@SUM(A1)"),
            (json!("toys"), "toys"),
            (json!(-5), "-5"),
            (json!("a,b"), "\"a,b\""),
            (
                json!(HOSTILE),
                "\"'=HYPERLINK(\"\"http://x\"\")|a\nb<script>\\\"",
            ),
        ] {
            assert_eq!(csv_field(&v), want, "{v}");
        }
    }

    #[test]
    fn markdown_and_text_cells_cannot_break_their_row() {
        let md = num(&json!(HOSTILE));
        assert!(!md.contains('\n'));
        assert!(!md.contains('<'));
        assert_eq!(md.matches('|').count(), md.matches("\\|").count(), "{md}");
        let section = Section {
            name: "top_products",
            columns: vec!["product_id", "name"],
            rows: vec![vec![json!("P1"), json!(HOSTILE)]],
        };
        let t = text("2026-11-30", &[section]);
        assert_eq!(t.lines().count(), 5, "{t}");
        assert!(t.contains("P1          =HYPERLINK"), "{t}");
    }
}
