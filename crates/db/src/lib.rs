//! PostgreSQL plumbing shared by every stage that touches the `analytics` schema.
//!
//! # Layout
//!
//! - [`connect`]: open a connection from a `postgres://` URL (the driver task is spawned),
//!   with TLS per the URL's `sslmode` ([`tls`]).
//! - [`migrate`]: versioned, checksummed migrations from `db/migrations/`, applied under an
//!   advisory lock; also sets the writer and reader roles' passwords.
//! - [`catalog`]: idempotent upsert of the product catalog into `analytics.dim_product`.
//! - [`health`]: the one read model of a consumer group's progress and instances that
//!   `status` and the dashboard share.

pub mod catalog;
pub mod health;
pub mod migrate;
pub mod scram;
pub mod tls;

use thiserror::Error;
use tokio_postgres::{Client, NoTls};

/// Errors talking to PostgreSQL.
#[derive(Debug, Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    /// Connection settings that cannot work or must not be used: unknown sslmode,
    /// unreadable CA file, a placeholder or non-ASCII password.
    #[error("{0}")]
    Tls(String),
    /// Could not connect, or a statement failed (retriable if the server was away).
    #[error("postgres: {}", pg_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A migration already applied has different contents now: someone edited history.
    #[error("migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {current} in this build)")]
    MigrationChanged {
        /// Migration version.
        version: i32,
        /// Migration name.
        name: &'static str,
        /// Checksum recorded when it was applied.
        applied: String,
        /// Checksum of the file in this build.
        current: String,
    },
    /// The database has migrations this build does not know: it is older than the schema.
    #[error("database schema is at version {db} but this build only knows up to {known}; upgrade clickstream")]
    SchemaTooNew {
        /// Highest version in the database.
        db: i32,
        /// Highest version in this build.
        known: i32,
    },
    /// The database lacks migrations this build needs.
    #[error("database schema is at version {db} but this build needs version {needed}; run `clickstream migrate`")]
    SchemaBehind {
        /// Highest version in the database (0: never migrated).
        db: i32,
        /// Highest version in this build.
        needed: i32,
    },
}

/// Whether `secret` is a well-known placeholder (`__RANDOM__` left from `.env.example`,
/// `changeme`, `password`, ...) that must never guard anything.
pub fn is_placeholder_secret(secret: &str) -> bool {
    const KNOWN: [&str; 10] = [
        "changeme",
        "change-me",
        "change_me",
        "password",
        "secret",
        "postgres",
        "admin",
        "example",
        "clickstream",
        "default",
    ];
    let s = secret.trim().to_ascii_lowercase();
    s.contains("__random__") || KNOWN.contains(&s.as_str())
}

/// The server's message for database errors (`Display` of the driver error only says
/// "db error").
pub fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {}{}",
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// Connects to `url` (`postgres://user:pass@host:port/db[?sslmode=...&sslrootcert=...]`,
/// TLS as libpq does it, see [`tls`]); the connection driver runs as a background task.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let target = tls::parse(url)?;
    if let Some(pw) = target.config.get_password() {
        if is_placeholder_secret(&String::from_utf8_lossy(pw)) {
            return Err(DbError::Tls(format!(
                "the database URL for user `{}` has a placeholder password; set a real one in .env",
                target.config.get_user().unwrap_or("?")
            )));
        }
    }
    let (mode, connector) = tls::connector(&target)?;
    let mut config = target.config;
    config.ssl_mode(mode);
    let client = match connector {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(drive(connection));
            client
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(drive(connection));
            client
        }
    };
    Ok(client)
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "postgres connection closed");
    }
}
