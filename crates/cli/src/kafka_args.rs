//! The Kafka connection flags of every subcommand that talks to Kafka (`generate`,
//! `process`, `status`, `serve`, `lake`, `collect`): one set of settings, applied to every
//! client the command creates (producers, consumers, the admin client, metadata lookups).

use std::path::PathBuf;

use anyhow::Context;
use clickstream_kafka::KafkaConnection;

/// How to reach Kafka: bootstrap servers, TLS, SASL, any librdkafka property.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port`, comma-separated).
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Kafka security protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long = "kafka-security-protocol", env = "KAFKA_SECURITY_PROTOCOL")]
    security_protocol: Option<String>,
    /// Kafka SASL mechanism: SCRAM-SHA-256, SCRAM-SHA-512, PLAIN or OAUTHBEARER.
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM")]
    sasl_mechanism: Option<String>,
    /// Kafka SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    sasl_username: Option<String>,
    /// Kafka SASL password. Prefer the environment variable (or `.env`): flags are
    /// visible to every local user in `ps`.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    sasl_password: Option<String>,
    /// CA certificates (PEM) that sign the brokers' certificates (default: the system's).
    #[arg(long = "kafka-ssl-ca", env = "KAFKA_SSL_CA_LOCATION")]
    ssl_ca: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require mutual TLS.
    #[arg(long = "kafka-ssl-cert", env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    ssl_cert: Option<PathBuf>,
    /// Client private key (PEM), for brokers that require mutual TLS.
    #[arg(long = "kafka-ssl-key", env = "KAFKA_SSL_KEY_LOCATION")]
    ssl_key: Option<PathBuf>,
    /// Any librdkafka property (`--kafka-opt key=value`, repeatable; comma-separated in
    /// KAFKA_OPTS). Connection properties (`security.*`, `ssl.*`, `sasl.*`, `client.*`,
    /// `socket.*`, `broker.*`) reach every client of the command; the others tune its main
    /// producer or consumer. They win over the flags above and the built-in defaults.
    #[arg(
        long = "kafka-opt",
        env = "KAFKA_OPTS",
        value_delimiter = ',',
        value_parser = crate::parse_kv
    )]
    options: Vec<(String, String)>,
}

impl KafkaArgs {
    /// The checked connection settings.
    pub fn connection(&self) -> anyhow::Result<KafkaConnection> {
        let mut c = KafkaConnection::new(self.bootstrap.trim());
        let path = |p: &PathBuf| p.display().to_string();
        let named = [
            ("security.protocol", self.security_protocol.clone()),
            ("sasl.mechanism", self.sasl_mechanism.clone()),
            ("sasl.username", self.sasl_username.clone()),
            ("sasl.password", self.sasl_password.clone()),
            ("ssl.ca.location", self.ssl_ca.as_ref().map(path)),
            ("ssl.certificate.location", self.ssl_cert.as_ref().map(path)),
            ("ssl.key.location", self.ssl_key.as_ref().map(path)),
        ];
        for (k, v) in named {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                c = c.with(k, v);
            }
        }
        c.options.extend(self.options.iter().cloned());
        for file in [
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
        ] {
            if let Some(p) = c.get(file) {
                std::fs::metadata(p).with_context(|| format!("Kafka {file} `{p}`"))?;
            }
        }
        if c.get("sasl.password")
            .is_some_and(clickstream_db::is_placeholder_secret)
        {
            anyhow::bail!("KAFKA_SASL_PASSWORD is a placeholder; set the real password");
        }
        c.validate()?;
        Ok(c)
    }

    /// [`KafkaArgs::connection`], and for TLS / SASL connections one round trip that fails
    /// at once, with what to check, if the cluster refuses the credentials or the
    /// certificate (librdkafka itself would only log and retry).
    pub async fn checked(&self) -> anyhow::Result<KafkaConnection> {
        let c = self.connection()?;
        if c.protocol() == "plaintext" {
            return Ok(c);
        }
        let probe = c.clone();
        let wait = std::time::Duration::from_secs(15);
        let t0 = std::time::Instant::now();
        tokio::task::spawn_blocking(move || clickstream_kafka::check_access(&probe, wait))
            .await??;
        if t0.elapsed() >= wait {
            tracing::warn!(kafka = %c.describe(), "Kafka did not answer the access check within 15 s; going on (the command retries on its own)");
        }
        Ok(c)
    }
}
