//! `clickstream batch`, `verify` and `report`: the daily gold job over the silver lake
//! (once for `--date`, or on a daily `--schedule` that also catches up missed days), the
//! lambda check against the stream processor, and the daily report files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use clickstream_lake::batch::epoch_day;
use clickstream_lake::{batch, report, verify, Lake};
use clickstream_model::EventTime;

/// Settings of `clickstream batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    lake: crate::LakeLocation,
    /// Writer-role PostgreSQL URL for the `analytics.gold_*` tables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Write gold Parquet only, not PostgreSQL.
    #[arg(long)]
    no_postgres: bool,
    /// The UTC day to compute (`YYYY-MM-DD`).
    #[arg(
        long,
        conflicts_with = "schedule",
        required_unless_present = "schedule"
    )]
    date: Option<String>,
    /// Run every day at this UTC time (`HH:MM`, default 00:15) for the day before, after
    /// catching up every past day with silver data but no gold; runs until Ctrl-C.
    #[arg(long, value_name = "HH:MM", num_args = 0..=1, default_missing_value = "00:15")]
    schedule: Option<String>,
    /// Scheduled runs also write the day's report here.
    #[arg(long, env = "CLICKSTREAM_REPORT_DIR", default_value = "reports")]
    report_dir: PathBuf,
}

fn check_date(d: &str) -> anyhow::Result<()> {
    let ok = d.len() == 10
        && epoch_day(d).is_ok()
        && EventTime::parse_date(d).map(|t| t.date_string()).as_deref() == Some(d);
    if !ok {
        bail!("`{d}` is not a calendar date YYYY-MM-DD");
    }
    Ok(())
}

async fn connect(url: Option<&str>, what: &str) -> anyhow::Result<tokio_postgres::Client> {
    let url = url.with_context(|| format!("{what} needs a database URL (flag or environment)"))?;
    clickstream_db::connect(url)
        .await
        .context("connecting to PostgreSQL")
}

async fn run_day(args: &BatchArgs, lake: &Lake, day: &str) -> anyhow::Result<()> {
    let mut db = if args.no_postgres {
        None
    } else {
        Some(
            connect(
                args.database_url.as_deref(),
                "batch (or pass --no-postgres)",
            )
            .await?,
        )
    };
    let (g, r) = batch::run(lake, day, db.as_mut()).await?;
    tracing::info!(
        day,
        silver_files = r.silver_files,
        silver_rows = r.silver_rows,
        events = r.events,
        revenue_cents = g.funnel.revenue_cents,
        dau = g.active_users.dau,
        millis = r.millis as u64,
        "gold written"
    );
    Ok(())
}

/// Past days with silver but no finished batch run.
async fn missed_days(args: &BatchArgs, lake: &Lake) -> anyhow::Result<Vec<String>> {
    let today = EventTime::now().date_string();
    let mut days: Vec<String> = lake
        .silver_dates()?
        .into_iter()
        .filter(|d| *d < today)
        .collect();
    if args.no_postgres {
        let mut missing = Vec::new();
        for d in days {
            if !lake.exists(&lake.gold_file("daily_funnel", &d))? {
                missing.push(d);
            }
        }
        days = missing;
    } else {
        let c = connect(args.database_url.as_deref(), "batch").await?;
        let done: Vec<String> = c
            .query("SELECT day::text FROM analytics.gold_batch_runs", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        days.retain(|d| !done.contains(d));
    }
    Ok(days)
}

/// Seconds until the next `HH:MM` UTC.
fn until(hh: u32, mm: u32) -> Duration {
    let now = EventTime::now().as_micros() / 1_000_000;
    let day = now.div_euclid(86_400);
    let mut next = day * 86_400 + i64::from(hh * 3600 + mm * 60);
    if next <= now {
        next += 86_400;
    }
    Duration::from_secs((next - now) as u64)
}

pub async fn run(args: BatchArgs) -> anyhow::Result<()> {
    let lake = args.lake.open()?;
    if let Some(day) = &args.date {
        check_date(day)?;
        return run_day(&args, &lake, day).await;
    }
    let at = args.schedule.clone().unwrap_or_default();
    let (hh, mm) = at
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
        .filter(|(h, m)| *h < 24 && *m < 60)
        .with_context(|| format!("--schedule `{at}` is not HH:MM"))?;
    tracing::info!(at = %format!("{hh:02}:{mm:02} UTC"), lake = %args.lake.lake_dir, "batch scheduler started");
    loop {
        for day in missed_days(&args, &lake).await? {
            tracing::info!(day, "running the daily batch");
            if let Err(e) = run_day(&args, &lake, &day).await {
                tracing::error!(day, error = %e, "daily batch failed; will retry at the next run");
                continue;
            }
            if !args.no_postgres {
                let c = connect(args.database_url.as_deref(), "report").await?;
                match report::write(&c, &day, &args.report_dir).await {
                    Ok(files) => {
                        tracing::info!(day, files = files.len(), dir = %args.report_dir.display(), "report written")
                    }
                    Err(e) => tracing::warn!(day, error = %e, "report failed"),
                }
            }
        }
        let wait = until(hh, mm);
        tracing::info!(
            next_in_secs = wait.as_secs(),
            "waiting for the next daily run"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::signals::terminated() => {
                tracing::info!("scheduler stopped");
                return Ok(());
            }
        }
    }
}

/// Settings of `clickstream verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    lake: crate::LakeLocation,
    /// PostgreSQL URL (the read-only role is enough).
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The UTC day to check (`YYYY-MM-DD`).
    #[arg(long)]
    date: String,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    check_date(&args.date)?;
    let c = connect(Some(&args.database_url), "verify").await?;
    let lake = args.lake.open()?;
    let (batch_side, diffs) = verify::verify(&lake, &c, &args.date).await?;
    let types: Vec<String> = batch_side
        .iter()
        .filter(|((s, _), _)| *s == "event_type")
        .map(|((_, k), v)| format!("{k} {}", v.a))
        .collect();
    println!(
        "{}: compared {} keys (events by type, categories, products); batch: {}",
        args.date,
        batch_side.len(),
        types.join(", ")
    );
    if diffs.is_empty() {
        println!(
            "no differences: the streaming aggregates equal the batch recomputation from silver"
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<38} {:<14} {:>12} {:>12}",
        "scope", "key", "metric", "stream", "batch"
    );
    for d in &diffs {
        println!(
            "{:<10} {:<38} {:<14} {:>12} {:>12}",
            d.scope, d.key, d.metric, d.stream, d.batch
        );
    }
    bail!(
        "{} differences between the stream and the batch for {}",
        diffs.len(),
        args.date
    )
}

/// Settings of `clickstream report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// PostgreSQL URL (the read-only role is enough).
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The UTC day (`YYYY-MM-DD`); its gold must exist (`clickstream batch`).
    #[arg(long)]
    date: String,
    /// Reports go to `<out>/<date>/`.
    #[arg(long, env = "CLICKSTREAM_REPORT_DIR", default_value = "reports")]
    out: PathBuf,
}

pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    check_date(&args.date)?;
    let c = connect(Some(&args.database_url), "report").await?;
    let files = report::write(&c, &args.date, &args.out).await?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
