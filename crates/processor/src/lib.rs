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
//! - [`retry`]: backoff and the stall state, and isolating records PostgreSQL refuses.
//! - [`run`]: the micro-batch loop (consumer, batch transaction, housekeeping).
//! - [`retention`]: day partitions created ahead and dropped by retention.
//! - [`clock`]: the processing clock (wall, or event time for replays).
//!
//! # Exactly once
//!
//! A batch's results, its dedup ledger entries and the partitions' next offsets and
//! watermarks commit in one PostgreSQL transaction. On assignment the consumer starts at
//! the stored offsets with the stored state; each batch first locks its partitions' offset
//! rows and checks they are where this instance left them, so a zombie or a rebalance can
//! never apply a batch twice. Offsets are committed to Kafka only afterwards, for lag tools.

pub mod alerts;
pub mod clock;
pub mod engine;
pub mod kafka;
pub mod metrics;
pub mod retention;
pub mod retry;
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
    /// Seeking back to the stored offset failed (the reset is retried).
    #[error("seeking partition {partition} to its stored offset failed: {error}")]
    Seek {
        /// Partition.
        partition: i32,
        /// What librdkafka said.
        error: rdkafka::error::KafkaError,
    },
    /// The first record after an assignment or reset was not at the stored offset.
    #[error("partition {partition} resumed at offset {found}, expected {expected}; seeking again")]
    ResumeGap {
        /// Partition.
        partition: i32,
        /// The stored next offset.
        expected: i64,
        /// The offset received.
        found: i64,
    },
    /// Restoring state on partition assignment failed.
    #[error("restoring partition state failed: {0}")]
    Restore(String),
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A bug: an invariant of the processor did not hold.
    #[error("internal error (a bug): {0}")]
    Internal(String),
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
                | ProcessorError::Seek { .. }
                | ProcessorError::ResumeGap { .. }
        )
    }

    /// PostgreSQL's SQLSTATE, when PostgreSQL reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        let e = match self {
            ProcessorError::Postgres(e)
            | ProcessorError::Db(clickstream_db::DbError::Postgres(e)) => e,
            _ => return None,
        };
        e.code().map(tokio_postgres::error::SqlState::code)
    }

    /// PostgreSQL refused the data itself (SQLSTATE class 22, data exception, or 23,
    /// integrity constraint violation): retrying the same batch unchanged can succeed only
    /// if another instance's concurrent write caused it (a ledger key recorded twice), so
    /// a batch that fails like this twice is split to isolate the records it cannot store.
    /// The offset fence is not one of these: it is its own variant.
    pub fn is_data_error(&self) -> bool {
        self.sqlstate()
            .is_some_and(|s| s.starts_with("22") || s.starts_with("23"))
            && !self.is_missing_partition()
    }

    /// A row's day has no partition (SQLSTATE 23514, but not the data's fault): the
    /// partitions are created again and the batch retried, never split.
    pub fn is_missing_partition(&self) -> bool {
        let e = match self {
            ProcessorError::Postgres(e)
            | ProcessorError::Db(clickstream_db::DbError::Postgres(e)) => e,
            _ => return false,
        };
        // A CHECK violation names its constraint; a row without a partition does not
        // (and the message is translated with lc_messages, so it is not matched).
        e.as_db_error()
            .is_some_and(|d| d.code().code() == "23514" && d.constraint().is_none())
    }
}
