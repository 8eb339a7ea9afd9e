//! How every Kafka client of the pipeline reaches the cluster.
//!
//! A [`KafkaConnection`] is the bootstrap servers plus librdkafka properties given once
//! (flags, `KAFKA_*` environment). Every client a command creates, whatever its role
//! (producer, consumer, admin, metadata lookups), starts from
//! [`KafkaConnection::client_config`], which carries the connection properties: security
//! protocol, TLS, SASL, client and socket settings. The command's main client then applies
//! the remaining (tuning) properties over its own defaults with
//! [`KafkaConnection::apply_tuning`], so a user's `--kafka-opt` always wins.
//!
//! [`explain`] turns librdkafka's authentication and TLS failures into a sentence that
//! says what to check, since its own messages are terse and arrive as retries.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use thiserror::Error;

/// Property prefixes that concern reaching the cluster (and so every client), as opposed
/// to a producer's or consumer's tuning.
const CONNECTION_PREFIXES: [&str; 6] = [
    "security.",
    "ssl.",
    "sasl.",
    "client.",
    "socket.",
    "broker.",
];

/// Security protocols librdkafka knows (lower case).
const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// SASL mechanisms this build supports.
const MECHANISMS: [&str; 4] = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER"];

/// The cluster refused this client (wrong credentials, untrusted certificate).
#[derive(Debug, Error)]
#[error("{hint}: {detail}")]
pub struct Refused {
    /// What to check.
    pub hint: String,
    /// librdkafka's own message.
    pub detail: String,
}

/// Records the first authentication or TLS failure librdkafka reports. It only logs them
/// (from its own threads) and retries, so a caller would otherwise just see timeouts.
#[derive(Default)]
struct Watch(Mutex<Option<(Option<RDKafkaErrorCode>, String)>>);

impl Watch {
    fn note(&self, code: Option<RDKafkaErrorCode>, text: &str) {
        let lower = text.to_ascii_lowercase();
        let refused = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        ) || lower.contains("sasl authentication error")
            || lower.contains("authentication failed")
            || lower.contains("ssl handshake failed")
            || lower.contains("certificate verify failed");
        if refused {
            let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert((code, text.to_string()));
        }
    }

    fn take(&self) -> Option<(Option<RDKafkaErrorCode>, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl ClientContext for Watch {
    // The probe's log lines are not shown: a refusal comes back as the error, and a
    // broker that is down is the command's business.
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, log_message: &str) {
        self.note(None, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(error.rdkafka_error_code(), reason);
    }
}

impl ConsumerContext for Watch {}

/// Connects and fails only if the cluster refuses this client: wrong SASL credentials or
/// a certificate that is not trusted. A broker that is merely down is not an error here
/// (commands wait for it in their own way). Blocks for up to `timeout`; plaintext
/// connections return at once.
pub fn check_access(conn: &KafkaConnection, timeout: Duration) -> Result<(), Refused> {
    if conn.protocol() == "plaintext" {
        return Ok(());
    }
    let consumer: BaseConsumer<Watch> = conn
        .client_config()
        .create_with_context(Watch::default())
        .map_err(|e| Refused {
            hint: format!("cannot create a Kafka client for {}", conn.describe()),
            detail: e.to_string(),
        })?;
    let refused = |code: Option<RDKafkaErrorCode>, detail: String| Refused {
        hint: explain_parts(code, &detail, conn)
            .unwrap_or_else(|| format!("Kafka at {} refused the connection", conn.describe())),
        detail,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let result = consumer.fetch_metadata(None, Duration::from_millis(500));
        // Serves queued error events to the context.
        let _ = consumer.poll(Duration::ZERO);
        if let Some((code, detail)) = consumer.context().take() {
            return Err(refused(code, detail));
        }
        match result {
            Ok(_) => return Ok(()),
            Err(e) => {
                if let Some(hint) = explain(&e, conn) {
                    return Err(Refused {
                        hint,
                        detail: e.to_string(),
                    });
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KafkaConfigError {
    /// No bootstrap servers.
    #[error("no Kafka bootstrap servers given (--bootstrap / KAFKA_BOOTSTRAP)")]
    NoBootstrap,
    /// A property without a name.
    #[error("Kafka property `{0}` has no name (expected key=value)")]
    EmptyKey(String),
    /// Unknown `security.protocol`.
    #[error("security.protocol `{0}` is not one of plaintext, ssl, sasl_plaintext, sasl_ssl")]
    Protocol(String),
    /// Unknown SASL mechanism.
    #[error("sasl.mechanism `{0}` is not one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN, OAUTHBEARER")]
    Mechanism(String),
    /// SASL settings without a SASL protocol, or the reverse.
    #[error("{0}")]
    Inconsistent(String),
}

/// Bootstrap servers and the librdkafka properties every client of a command gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// librdkafka properties in the order given; later ones win.
    pub options: Vec<(String, String)>,
}

impl KafkaConnection {
    /// Plaintext connection to `bootstrap`, no extra properties.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaConnection {
            bootstrap: bootstrap.into(),
            options: Vec::new(),
        }
    }

    /// Adds a property (later ones win).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The value last given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The security protocol in effect (`plaintext` unless set).
    pub fn protocol(&self) -> String {
        self.get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase()
    }

    /// Rejects settings that cannot work before any client is created, with a message
    /// that names the setting (librdkafka would only log and retry).
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        if self.bootstrap.trim().is_empty() {
            return Err(KafkaConfigError::NoBootstrap);
        }
        if let Some((k, v)) = self.options.iter().find(|(k, _)| k.trim().is_empty()) {
            return Err(KafkaConfigError::EmptyKey(format!("{k}={v}")));
        }
        let protocol = self.protocol();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(KafkaConfigError::Protocol(protocol));
        }
        let sasl = protocol.starts_with("sasl_");
        if let Some(m) = self.get("sasl.mechanism").or(self.get("sasl.mechanisms")) {
            if !MECHANISMS.contains(&m) {
                return Err(KafkaConfigError::Mechanism(m.to_string()));
            }
            if !sasl {
                return Err(KafkaConfigError::Inconsistent(format!(
                    "sasl.mechanism {m} is set but security.protocol is {protocol}: use sasl_ssl (or sasl_plaintext on a trusted network)"
                )));
            }
        }
        if sasl {
            let mechanism = self
                .get("sasl.mechanism")
                .or(self.get("sasl.mechanisms"))
                .unwrap_or("GSSAPI");
            if mechanism != "OAUTHBEARER"
                && (self.get("sasl.username").is_none() || self.get("sasl.password").is_none())
            {
                return Err(KafkaConfigError::Inconsistent(format!(
                    "security.protocol {protocol} needs sasl.mechanism and a user name and password (KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)"
                )));
            }
        }
        Ok(())
    }

    /// A client configuration with the bootstrap servers and every connection property
    /// (security, TLS, SASL, client, socket): enough for any client to reach the cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in self
            .options
            .iter()
            .filter(|(k, _)| is_connection_property(k))
        {
            cfg.set(k, v);
        }
        cfg
    }

    /// Applies every property (connection and tuning) over `cfg`, for the command's main
    /// client, after its own defaults so the user's values win.
    pub fn apply_tuning(&self, cfg: &mut ClientConfig) {
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
    }

    /// `bootstrap` with the protocol, for messages: `127.0.0.1:9094 (sasl_ssl)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.bootstrap, self.protocol())
    }
}

/// Whether a librdkafka property concerns reaching the cluster (every client needs it)
/// rather than one client's tuning.
pub fn is_connection_property(key: &str) -> bool {
    CONNECTION_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A sentence on what to check when `e` is an authentication or TLS failure; `None`
/// for other errors.
pub fn explain(e: &KafkaError, conn: &KafkaConnection) -> Option<String> {
    let code = e.rdkafka_error_code();
    let text = e.to_string();
    explain_parts(code, &text, conn)
}

fn explain_parts(
    code: Option<RDKafkaErrorCode>,
    text: &str,
    conn: &KafkaConnection,
) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let auth = matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || lower.contains("sasl authentication")
        || lower.contains("authentication failed");
    let tls = matches!(code, Some(RDKafkaErrorCode::SSL))
        || lower.contains("ssl handshake")
        || lower.contains("certificate verify failed")
        || lower.contains("ssl_connect");
    if auth {
        Some(format!(
            "Kafka at {} refused the credentials of user `{}` ({}): check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD and that the user exists on the broker",
            conn.describe(),
            conn.get("sasl.username").unwrap_or("?"),
            conn.get("sasl.mechanism")
                .or(conn.get("sasl.mechanisms"))
                .unwrap_or("no mechanism"),
        ))
    } else if tls {
        Some(format!(
            "TLS with Kafka at {} failed: the broker's certificate is not trusted or does not name the host (CA file: {}; set KAFKA_SSL_CA_LOCATION)",
            conn.describe(),
            conn.get("ssl.ca.location").unwrap_or("the system's"),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram() -> KafkaConnection {
        KafkaConnection::new("b:9094")
            .with("security.protocol", "SASL_SSL")
            .with("sasl.mechanism", "SCRAM-SHA-256")
            .with("sasl.username", "app")
            .with("sasl.password", "pw")
            .with("queued.min.messages", "1000")
    }

    #[test]
    fn connection_properties_reach_every_client_and_tuning_only_the_main_one() {
        let c = scram();
        let base = c.client_config();
        assert_eq!(base.get("bootstrap.servers"), Some("b:9094"));
        assert_eq!(base.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(base.get("sasl.password"), Some("pw"));
        assert_eq!(base.get("queued.min.messages"), None);
        let mut main = c.client_config();
        main.set("queued.min.messages", "50000");
        c.apply_tuning(&mut main);
        assert_eq!(
            main.get("queued.min.messages"),
            Some("1000"),
            "the user's value wins"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        assert!(scram().validate().is_ok());
        assert!(KafkaConnection::new("b:9092").validate().is_ok());
        assert_eq!(
            KafkaConnection::new(" ").validate(),
            Err(KafkaConfigError::NoBootstrap)
        );
        let e = KafkaConnection::new("b")
            .with("security.protocol", "tls")
            .validate();
        assert_eq!(e, Err(KafkaConfigError::Protocol("tls".into())));
        let e = KafkaConnection::new("b")
            .with("sasl.mechanism", "SCRAM-SHA-256")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("use sasl_ssl"), "{e}");
        let e = KafkaConnection::new("b")
            .with("security.protocol", "sasl_ssl")
            .with("sasl.mechanism", "SCRAM-SHA-256")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("KAFKA_SASL_PASSWORD"), "{e}");
        let e = scram().with("sasl.mechanism", "MD5").validate();
        assert_eq!(e, Err(KafkaConfigError::Mechanism("MD5".into())));
        let e = KafkaConnection::new("b").with("", "x").validate();
        assert_eq!(e, Err(KafkaConfigError::EmptyKey("=x".into())));
    }

    #[test]
    fn auth_and_tls_failures_are_explained() {
        let c = scram();
        let auth = explain_parts(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256",
            &c,
        )
        .unwrap();
        assert!(
            auth.contains("user `app`") && auth.contains("SCRAM-SHA-256"),
            "{auth}"
        );
        let tls = explain_parts(
            None,
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
            &c,
        )
        .unwrap();
        assert!(tls.contains("not trusted"), "{tls}");
        assert_eq!(explain_parts(None, "Broker transport failure", &c), None);
    }
}
