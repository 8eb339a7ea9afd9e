//! The lake: bronze (raw records) and silver (validated, deduplicated events) Parquet
//! written exactly once from Kafka, the daily gold batch computed from silver, reports,
//! and the lambda check against the stream processor's tables.
//!
//! # Layout
//!
//! - [`layout`]: directory layout, file names (Kafka offset ranges), crash recovery.
//! - [`store`]: a local directory or an object store (S3, GCS, Azure) behind one API.
//! - [`schema`]: Arrow schemas and row buffers of bronze and silver.
//! - [`writer`]: the consumer that writes bronze and silver.
//! - [`read`]: reading silver events and bronze records back.
//! - [`gold`]: the daily aggregates as pure functions; [`batch`]: reading a day of
//!   silver, writing gold Parquet and the PostgreSQL `gold_*` tables.
//! - [`verify`]: the lambda check against the stream processor; [`report`]: daily reports.

pub mod batch;
pub mod gold;
pub mod layout;
pub mod metrics;
pub mod read;
pub mod report;
pub mod schema;
pub mod store;
pub mod verify;
pub mod writer;

use std::path::Path;

use thiserror::Error;

pub use layout::Lake;
pub use metrics::LakeMetrics;
pub use store::LakeFile;
pub use writer::{LakeWriter, WriterConfig, WriterReport};

/// Errors of the lake.
#[derive(Debug, Error)]
pub enum LakeError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another writer holds the lake.
    #[error("another lake writer is running on {0} (its lock file is held)")]
    Locked(String),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A lake file does not have the expected columns.
    #[error("{0}: not a lake file of this version (unexpected columns)")]
    Corrupt(String),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
}

impl LakeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> LakeError {
        LakeError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
