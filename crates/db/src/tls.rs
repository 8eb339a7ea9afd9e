//! TLS for PostgreSQL connections, configured as libpq is: `sslmode` and `sslrootcert` in
//! the URL's query (`postgres://u:p@host/db?sslmode=verify-full&sslrootcert=/ca.pem`) or
//! from `PGSSLMODE` / `PGSSLROOTCERT`.
//!
//! | sslmode | encrypts | verifies the chain | verifies the host name |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (default, as libpq) | if the server offers it | no | no |
//! | `require` | yes | only with `sslrootcert` (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The verify modes trust `sslrootcert`, or the system's CA store without it.
//! tokio-postgres knows only disable/prefer/require, so the verify modes and the
//! certificate settings are taken out of the URL here and applied to the OpenSSL
//! connector.

use std::path::PathBuf;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode as DriverMode;

use crate::DbError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS if the server offers it, unverified.
    Prefer,
    /// TLS, chain verified only when a root certificate is given.
    Require,
    /// TLS, chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, DbError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain text first; TLS-if-offered is the closest safe reading.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(DbError::Tls(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }
}

/// A parsed connection target: the driver's configuration and how to secure it.
#[derive(Debug)]
pub struct Target {
    /// Everything but the TLS settings, for tokio-postgres.
    pub config: tokio_postgres::Config,
    /// The TLS mode.
    pub mode: SslMode,
    /// CA certificates to trust (PEM file).
    pub root_cert: Option<PathBuf>,
}

/// Settings this module handles itself (tokio-postgres would refuse or ignore them).
const OWN_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Parses `url` (URL or `key=value` form), taking out `sslmode` and `sslrootcert`
/// (falling back to `PGSSLMODE` / `PGSSLROOTCERT`).
pub fn parse(url: &str) -> Result<Target, DbError> {
    let (rest, own) = split_own(url);
    let config: tokio_postgres::Config = rest.parse().map_err(DbError::BadUrl)?;
    let get = |key: &str, env: &str| {
        own.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let mode = match get("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let root_cert = get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from);
    Ok(Target {
        config,
        mode,
        root_cert,
    })
}

/// `url` without [`OWN_KEYS`], and their values.
fn split_own(url: &str) -> (String, Vec<(String, String)>) {
    let mut own = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), own);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if OWN_KEYS.contains(&k) {
                own.push((k.to_string(), percent_decode(v)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, own)
    } else {
        // key=value form; values with spaces would be quoted, which our keys never need.
        let mut kept = Vec::new();
        for tok in url.split_whitespace() {
            match tok.split_once('=') {
                Some((k, v)) if OWN_KEYS.contains(&k) => {
                    own.push((k.to_string(), v.trim_matches('\'').to_string()))
                }
                _ => kept.push(tok),
            }
        }
        (kept.join(" "), own)
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The driver's mode and, unless disabled, the OpenSSL connector for `t`.
pub fn connector(t: &Target) -> Result<(DriverMode, Option<MakeTlsConnector>), DbError> {
    let tls = |e: openssl::error::ErrorStack| DbError::Tls(format!("TLS set-up: {e}"));
    let driver = match t.mode {
        SslMode::Disable => return Ok((DriverMode::Disable, None)),
        SslMode::Prefer => DriverMode::Prefer,
        _ => DriverMode::Require,
    };
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
    let verify_chain = matches!(t.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (t.mode == SslMode::Require && t.root_cert.is_some());
    if verify_chain {
        b.set_verify(SslVerifyMode::PEER);
        if let Some(ca) = &t.root_cert {
            b.set_ca_file(ca).map_err(|e| {
                DbError::Tls(format!(
                    "cannot read the CA certificates in sslrootcert {}: {e}",
                    ca.display()
                ))
            })?;
        }
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(b.build());
    if t.mode != SslMode::VerifyFull {
        connector.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok((driver, Some(connector)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_rootcert_are_taken_out_of_urls() {
        let t = parse("postgres://u:p@db.example:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
            .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_dbname(), Some("app"));
        let t = parse("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=app").unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(t.config.get_dbname(), Some("app"));
        let t = parse("postgres://u@h/app?sslmode=disable").unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        assert!(parse("postgres://u@h/app?sslmode=sometimes")
            .unwrap_err()
            .to_string()
            .contains("verify-full"));
    }

    #[test]
    fn the_default_is_libpqs_prefer_and_verify_modes_need_a_readable_ca() {
        // PGSSLMODE may be set by whoever runs the tests; only assert when it is not.
        if std::env::var("PGSSLMODE").is_err() {
            assert_eq!(parse("postgres://u@h/app").unwrap().mode, SslMode::Prefer);
        }
        let t = parse("postgres://u@h/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap();
        let e = connector(&t).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let t = parse("postgres://u@h/app?sslmode=require").unwrap();
        assert!(matches!(connector(&t), Ok((DriverMode::Require, Some(_)))));
    }
}
