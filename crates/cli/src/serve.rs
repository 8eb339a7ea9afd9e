//! `clickstream serve`: flags -> [`ServeConfig`], then the dashboard server until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use clickstream_dashboard::ServeConfig;

/// Settings of `clickstream serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    source: crate::SourceArgs,
    /// Address of the dashboard (loopback by default; `0.0.0.0:8080` to expose it).
    #[arg(
        long,
        env = "CLICKSTREAM_DASHBOARD_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Reader-role PostgreSQL URL (the dashboard never writes).
    #[arg(long, env = "READER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Require this bearer token for the page and API (letters, digits, `-._~`).
    #[arg(long, env = "CLICKSTREAM_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve a non-loopback address without a token (only behind something else that
    /// authenticates).
    #[arg(long)]
    allow_open: bool,
    /// How often open pages receive fresh numbers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    refresh: Duration,
    /// A processor silent for this long is shown as not running.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.refresh < Duration::from_millis(100) {
        anyhow::bail!("--refresh must be at least 100ms");
    }
    // An empty variable in .env means "no token", not "the empty token".
    let token = args.token.filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if clickstream_db::is_placeholder_secret(t) {
            anyhow::bail!("CLICKSTREAM_DASHBOARD_TOKEN is a placeholder; set a random one");
        }
    } else if !args.listen.ip().is_loopback() && !args.allow_open {
        anyhow::bail!(
            "refusing to serve {} without a token: set CLICKSTREAM_DASHBOARD_TOKEN (or pass --allow-open if something in front authenticates)",
            args.listen
        );
    }
    let cfg = ServeConfig {
        listen: args.listen,
        database_url: args.database_url,
        kafka: args.source.kafka.checked().await?,
        group: args.source.group,
        topic: args.source.topic,
        token,
        refresh: args.refresh,
        stale_after: args.stale_after,
    };
    clickstream_dashboard::serve(cfg, crate::signals::terminated()).await?;
    Ok(())
}
