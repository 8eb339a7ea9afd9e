//! Versioned schema migrations.
//!
//! Each file in `db/migrations/` is compiled into the binary with its checksum. `apply`
//! takes a session advisory lock (so two `migrate` runs cannot interleave), records each
//! migration in `analytics.schema_migrations` in the same transaction that applies it,
//! and refuses to run if an applied migration's file was edited since.

use tokio_postgres::Client;

use crate::DbError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version.
    pub version: i32,
    /// Short name (the file name without number and extension).
    pub name: &'static str,
    /// The SQL, run as one batch inside a transaction.
    pub sql: &'static str,
}

/// All migrations of this build, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../../db/migrations/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "stream_processor",
        sql: include_str!("../../../db/migrations/0002_stream_processor.sql"),
    },
    Migration {
        version: 3,
        name: "dashboard",
        sql: include_str!("../../../db/migrations/0003_dashboard.sql"),
    },
    Migration {
        version: 4,
        name: "gold",
        sql: include_str!("../../../db/migrations/0004_gold.sql"),
    },
    Migration {
        version: 5,
        name: "ledger_by_time",
        sql: include_str!("../../../db/migrations/0005_ledger_by_time.sql"),
    },
    Migration {
        version: 6,
        name: "resilience",
        sql: include_str!("../../../db/migrations/0006_resilience.sql"),
    },
    Migration {
        version: 7,
        name: "purchases_hourly",
        sql: include_str!("../../../db/migrations/0007_purchases_hourly.sql"),
    },
    Migration {
        version: 8,
        name: "day_partitions",
        sql: include_str!("../../../db/migrations/0008_day_partitions.sql"),
    },
    Migration {
        version: 9,
        name: "fillfactor",
        sql: include_str!("../../../db/migrations/0009_fillfactor.sql"),
    },
];

/// The application roles the migrations create.
pub const WRITER_ROLE: &str = "clickstream_writer";
/// The read-only role dashboards use.
pub const READER_ROLE: &str = "clickstream_reader";
/// The role that owns the `analytics` schema and everything in it; migrations from
/// [`FIRST_OWNED_MIGRATION`] on run as this role (`SET ROLE`), not as the admin.
pub const OWNER_ROLE: &str = "clickstream_owner";
/// Migrations before this one ran as the admin (they create roles).
pub const FIRST_OWNED_MIGRATION: i32 = 8;
/// Default reader statement time limit.
pub const READER_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Arbitrary constant identifying our advisory lock.
const LOCK_KEY: i64 = 0x636c_6963_6b73;

/// FNV-1a 64 of the SQL text: enough to notice an edited file, no extra dependency.
pub fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied by this run (empty when the schema was up to date).
    pub applied: Vec<i32>,
    /// Schema version after the run.
    pub version: i32,
}

/// Passwords for the application roles (`None` leaves that role's login unchanged) and
/// the reader's statement time limit.
#[derive(Debug, Clone, Default)]
pub struct RolePasswords {
    /// For `clickstream_writer` (the processor, the generator's catalog upsert).
    pub writer: Option<String>,
    /// For `clickstream_reader` (dashboards).
    pub reader: Option<String>,
    /// `statement_timeout` set on the reader role in this database, so every client that
    /// logs in as the reader (the dashboard, Grafana, Superset, `status`) gets it
    /// (`None`: 10 s).
    pub reader_statement_timeout: Option<std::time::Duration>,
}

/// Fails unless the database schema is at this build's version: a processor on an older
/// schema would write with keys the tables do not have yet.
pub async fn require_current(client: &Client) -> Result<(), DbError> {
    let needed = MIGRATIONS.last().map_or(0, |m| m.version);
    let db: i32 = match client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM analytics.schema_migrations",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(e.into()),
    };
    match db.cmp(&needed) {
        std::cmp::Ordering::Less => Err(DbError::SchemaBehind { db, needed }),
        std::cmp::Ordering::Greater => Err(DbError::SchemaTooNew { db, known: needed }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Applies pending migrations and sets role passwords. Idempotent.
///
/// Roles are cluster-wide while the advisory lock is per database, so migrating two
/// databases of one cluster at once can collide on the roles (`tuple concurrently
/// updated`, a duplicate role): such collisions are retried, everything being idempotent.
pub async fn apply(
    client: &mut Client,
    passwords: &RolePasswords,
) -> Result<MigrateReport, DbError> {
    apply_to(client, passwords, None).await
}

/// [`apply`], stopping after migration `target` (`None`: the newest): for staged upgrades
/// and for testing a migration against data written by the schema before it.
pub async fn apply_to(
    client: &mut Client,
    passwords: &RolePasswords,
    target: Option<i32>,
) -> Result<MigrateReport, DbError> {
    let mut attempt = 0u64;
    loop {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await?;
        let result = apply_locked(client, passwords, target).await;
        // Unlock even on failure; a lost connection releases the lock anyway.
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
        match result {
            Err(DbError::Postgres(e)) if attempt < 10 && is_collision(&e) => {
                attempt += 1;
                tracing::debug!(error = %crate::pg_detail(&e), attempt, "migration collided; retrying");
                // Jitter, so migrators that collided do not retry in lockstep.
                let jitter = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() % 200);
                let pause = 20 * attempt + u64::from(jitter) + u64::from(std::process::id() % 50);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            other => return other,
        }
    }
}

fn is_collision(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::INTERNAL_ERROR, // "tuple concurrently updated" on pg_authid
            SqlState::UNIQUE_VIOLATION,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(c)
    })
}

async fn apply_locked(
    client: &mut Client,
    passwords: &RolePasswords,
    target: Option<i32>,
) -> Result<MigrateReport, DbError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS analytics;
             CREATE TABLE IF NOT EXISTS analytics.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, checksum FROM analytics.schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&(db, _)) = applied.last() {
        if db > known {
            return Err(DbError::SchemaTooNew { db, known });
        }
    }
    let mut report = MigrateReport {
        applied: Vec::new(),
        version: 0,
    };
    let mut owned = false;
    for m in MIGRATIONS
        .iter()
        .filter(|m| target.is_none_or(|t| m.version <= t))
    {
        let sum = checksum(m.sql);
        if let Some((_, old)) = applied.iter().find(|(v, _)| *v == m.version) {
            if *old != sum {
                return Err(DbError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                    applied: old.clone(),
                    current: sum,
                });
            }
            report.version = m.version;
            continue;
        }
        if m.version >= FIRST_OWNED_MIGRATION && !owned {
            hand_over_to_owner(client).await?;
            owned = true;
        }
        let tx = client.transaction().await?;
        if m.version >= FIRST_OWNED_MIGRATION {
            tx.batch_execute(&format!("SET LOCAL ROLE {OWNER_ROLE}"))
                .await?;
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO analytics.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        report.applied.push(m.version);
        report.version = m.version;
    }
    if !owned {
        hand_over_to_owner(client).await?;
    }
    restrict(client, passwords.reader_statement_timeout).await?;
    for (role, password) in [
        (WRITER_ROLE, &passwords.writer),
        (READER_ROLE, &passwords.reader),
    ] {
        if let Some(pw) = password {
            set_password(client, role, pw).await?;
        }
    }
    Ok(report)
}

/// Makes [`OWNER_ROLE`] (no login) the owner of the schema and of every table and view in
/// it, so neither the admin's nor the application roles' privileges are needed to change
/// the schema, and the application roles keep only what they were granted. Idempotent.
async fn hand_over_to_owner(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "DO $$
             BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
                     CREATE ROLE {OWNER_ROLE} NOLOGIN;
                 END IF;
             END
             $$;
             -- A non-superuser admin may only give objects to a role it belongs to.
             GRANT {OWNER_ROLE} TO CURRENT_USER;
             ALTER SCHEMA analytics OWNER TO {OWNER_ROLE};
             DO $$
             DECLARE r record;
             BEGIN
                 -- Tables (and with them their indexes and owned sequences) and views.
                 FOR r IN
                     SELECT c.oid::regclass AS obj, c.relkind
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = 'analytics' AND c.relkind IN ('r', 'p', 'v', 'm')
                        AND c.relowner <> '{OWNER_ROLE}'::regrole
                 LOOP
                     EXECUTE format('ALTER %s %s OWNER TO {OWNER_ROLE}',
                         CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                        ELSE 'TABLE' END,
                         r.obj);
                 END LOOP;
             END
             $$;
             -- Objects the owner creates in later migrations get the same grants.
             ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA analytics
                 GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {WRITER_ROLE};
             ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA analytics
                 GRANT USAGE, SELECT ON SEQUENCES TO {WRITER_ROLE};
             ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA analytics
                 GRANT SELECT ON TABLES TO {READER_ROLE};"
        ))
        .await?;
    Ok(())
}

/// Least privilege on this database: only the application roles may connect, nobody
/// else may create temporary tables or objects in `public`, and the reader's sessions are
/// read-only with a statement time limit, whichever client logs in as it. Idempotent.
async fn restrict(
    client: &Client,
    reader_timeout: Option<std::time::Duration>,
) -> Result<(), DbError> {
    let timeout_ms = reader_timeout
        .unwrap_or(READER_STATEMENT_TIMEOUT)
        .as_millis()
        .clamp(1, i32::MAX as u128) as i64;
    let row = client
        .query_one(
            "SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %1$I FROM PUBLIC;
                            GRANT CONNECT ON DATABASE %1$I TO %2$I, %3$I;
                            ALTER ROLE %3$I IN DATABASE %1$I SET default_transaction_read_only = on;
                            ALTER ROLE %3$I IN DATABASE %1$I SET statement_timeout = %4$L;
                            REVOKE CREATE ON SCHEMA public FROM PUBLIC;',
                           current_database(), $1::text, $2::text, $3::text)",
            &[&WRITER_ROLE, &READER_ROLE, &format!("{timeout_ms}ms")],
        )
        .await?;
    let sql: String = row.get(0);
    client.batch_execute(&sql).await?;
    Ok(())
}

/// Sets `role`'s password as a SCRAM verifier computed here, so the password never
/// appears in statement text. `ALTER ROLE ... PASSWORD` takes no bind parameters, so
/// PostgreSQL's own `format()` quotes the identifier and the literal.
async fn set_password(client: &Client, role: &str, password: &str) -> Result<(), DbError> {
    if crate::is_placeholder_secret(password) {
        return Err(DbError::Tls(format!(
            "refusing to set a placeholder password for {role}; put a real one in .env"
        )));
    }
    let verifier = crate::scram::verifier(password)?;
    let row = client
        .query_one(
            "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
            &[&role, &verifier],
        )
        .await?;
    let stmt: String = row.get(0);
    client.batch_execute(&stmt).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_checksums_differ() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        assert_ne!(checksum("a"), checksum("b"));
        assert_eq!(checksum("abc"), checksum("abc"));
    }
}
