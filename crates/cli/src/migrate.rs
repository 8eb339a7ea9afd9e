//! `clickstream migrate`: apply `db/migrations/` and set role passwords.

use anyhow::Context;
use clap::Args;
use clickstream_db::migrate::{self, RolePasswords};

/// Settings of `clickstream migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Admin connection (a role that may create schemas and roles).
    #[arg(long, env = "ADMIN_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Password to set for the `clickstream_writer` role (left unchanged when absent).
    #[arg(long, env = "CLICKSTREAM_WRITER_PASSWORD", hide_env_values = true)]
    writer_password: Option<String>,
    /// Password to set for the read-only `clickstream_reader` role (left unchanged when absent).
    #[arg(long, env = "CLICKSTREAM_READER_PASSWORD", hide_env_values = true)]
    reader_password: Option<String>,
    /// Statement time limit of the reader role in this database (dashboards, Grafana,
    /// Superset, `status`): longer queries are cancelled.
    #[arg(long, env = "CLICKSTREAM_READER_STATEMENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    reader_statement_timeout: std::time::Duration,
    /// Stop after this schema version (default: the newest this build knows), for staged
    /// upgrades.
    #[arg(long)]
    target_version: Option<i32>,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let mut client = clickstream_db::connect(&args.database_url)
        .await
        .context("connecting with ADMIN_DATABASE_URL")?;
    let passwords = RolePasswords {
        writer: args.writer_password,
        reader: args.reader_password,
        reader_statement_timeout: Some(args.reader_statement_timeout),
    };
    let report = migrate::apply_to(&mut client, &passwords, args.target_version).await?;
    if report.applied.is_empty() {
        tracing::info!(version = report.version, "schema up to date");
    } else {
        tracing::info!(version = report.version, applied = ?report.applied, "schema migrated");
    }
    Ok(())
}
