//! The stream processor behind `clickstream process`: Kafka `clickstream.raw` in,
//! PostgreSQL `analytics` out, exactly once.
//!
//! # Layout
//!
//! - [`engine`]: the operators (watermark, per-minute metrics, product / category metrics,
//!   flash-sale windows, sessions, late tracking) as pure functions over a partition's
//!   events and state. No I/O.
//! - [`store`]: everything PostgreSQL: the offset fence, the dedup ledger, bulk writes of a
//!   batch, alert evaluation, loading a partition's state on assignment.
//! - [`kafka`]: the consumer context that restores offsets and state from PostgreSQL on
//!   partition assignment, and the dead-letter producer.
//! - [`alerts`]: where flash-sale alerts go besides their table ([`AlertSink`]).
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`run`]: the micro-batch loop.
//!
//! # Exactly once
//!
//! A batch's results, its dedup ledger entries and the partitions' next offsets and
//! watermarks commit in one PostgreSQL transaction. On assignment the consumer starts at
//! the stored offsets with the stored state; each batch first locks its partitions' offset
//! rows and checks they are where this instance left them, so a zombie or a rebalance can
//! never apply a batch twice. Offsets are committed to Kafka only afterwards, for lag tools.

pub mod alerts;
pub mod engine;
pub mod kafka;
pub mod metrics;
pub mod run;
pub mod store;

pub use alerts::{AlertSink, LogAlertSink};
pub use engine::EngineConfig;
pub use run::{run, ProcessorConfig, RunReport};

use thiserror::Error;

/// Errors of the processor. The retriable ones (see [`ProcessorError::is_retriable`]:
/// PostgreSQL failures, a fence, a dead-letter delivery failure) abandon the batch and
/// reload state; the others stop the processor.
#[derive(Debug, Error)]
pub enum ProcessorError {
    /// PostgreSQL failed (retriable once it is back).
    #[error("postgres: {}", clickstream_db::pg_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Connecting or configuring failed.
    #[error(transparent)]
    Db(#[from] clickstream_db::DbError),
    /// Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Dead-letter records were not acknowledged.
    #[error("dead-letter delivery failed: {0}")]
    DeadLetter(String),
    /// Another instance advanced this partition since we loaded it.
    #[error("partition {partition} was advanced elsewhere (expected next offset {expected:?}, found {found:?})")]
    Fenced {
        /// Partition.
        partition: i32,
        /// Offset we expected.
        expected: Option<i64>,
        /// Offset in storage.
        found: Option<i64>,
    },
    /// Restoring state on partition assignment failed.
    #[error("restoring partition state failed: {0}")]
    Restore(String),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

impl ProcessorError {
    /// Whether abandoning the batch and reloading state can fix it.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ProcessorError::Postgres(_)
                // Could not (re)connect: the server may be restarting.
                | ProcessorError::Db(clickstream_db::DbError::Postgres(_))
                | ProcessorError::Fenced { .. }
                | ProcessorError::DeadLetter(_)
        )
    }
}
