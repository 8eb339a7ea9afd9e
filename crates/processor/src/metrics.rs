//! Prometheus metrics: one set of counters shared by the batch loop, `/metrics` and tests.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::registry::Registry;

/// Label set for per-partition gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Kafka partition.
    pub partition: i32,
}

/// Label set for rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reject reason code.
    pub reason: String,
}

/// The processor's metrics.
pub struct Metrics {
    /// Records consumed.
    pub records_in: Counter,
    /// Distinct valid events applied.
    pub events_valid: Counter,
    /// Records rejected, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Late events.
    pub late: Counter,
    /// Duplicates dropped.
    pub duplicates: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Batches abandoned (fenced, database error) and retried.
    pub batches_abandoned: Counter,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Seconds from the first record polled to the commit.
    pub batch_seconds: Histogram,
    /// Seconds spent in the PostgreSQL transaction.
    pub commit_seconds: Histogram,
    /// Records behind the partition's high watermark.
    pub lag: Family<PartitionLabel, Gauge>,
    /// Open sessions held in memory.
    pub open_sessions: Gauge,
    /// Flash-sale alerts raised.
    pub alerts: Counter,
    /// Unix time of the last commit.
    pub last_commit: Gauge<f64, AtomicU64>,
    /// Failed attempts since the last commit (0 while healthy).
    pub consecutive_failures: Gauge,
    /// Unix time of the first failure of the current stall (0 while healthy).
    pub stalled_since: Gauge<f64, AtomicU64>,
    /// Batches split to isolate records PostgreSQL refused.
    pub batches_split: Counter,
    /// Events stamped ahead of the processing clock.
    pub future_events: Counter,
    /// Records Kafka's retention deleted before they were processed.
    pub lost_to_retention: Counter,
    /// Assigned partitions that are idle (caught up, no records for the idle timeout).
    pub idle_partitions: Gauge,
    /// Dead letters queued while the dead-letter topic was unreachable, delivered later
    /// from `analytics.rejected_events`.
    pub dlq_pending: Gauge,
    /// Day partitions created ahead.
    pub partitions_created: Counter,
    /// Day partitions dropped by retention.
    pub partitions_dropped: Counter,
    /// Time spent creating and dropping partitions (and rolling up dropped hours).
    pub retention_seconds: Counter<f64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them under `clickstream_processor_*`.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics {
            records_in: Counter::default(),
            events_valid: Counter::default(),
            rejected: Family::default(),
            late: Counter::default(),
            duplicates: Counter::default(),
            batches: Counter::default(),
            batches_abandoned: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(10.0, 4.0, 8)),
            batch_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.002, 2.0, 12)),
            lag: Family::default(),
            open_sessions: Gauge::default(),
            alerts: Counter::default(),
            last_commit: Gauge::default(),
            consecutive_failures: Gauge::default(),
            stalled_since: Gauge::default(),
            batches_split: Counter::default(),
            future_events: Counter::default(),
            lost_to_retention: Counter::default(),
            idle_partitions: Gauge::default(),
            dlq_pending: Gauge::default(),
            partitions_created: Counter::default(),
            partitions_dropped: Counter::default(),
            retention_seconds: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("clickstream_processor");
        r.register(
            "records_in",
            "Records consumed from Kafka",
            m.records_in.clone(),
        );
        r.register(
            "events_valid",
            "Distinct valid events applied",
            m.events_valid.clone(),
        );
        r.register(
            "rejected",
            "Records rejected to the dead-letter topic",
            m.rejected.clone(),
        );
        r.register(
            "late_events",
            "Events behind their partition watermark",
            m.late.clone(),
        );
        r.register(
            "duplicates",
            "Duplicate events dropped",
            m.duplicates.clone(),
        );
        r.register("batches", "Batches committed", m.batches.clone());
        r.register(
            "batches_abandoned",
            "Batches abandoned and retried",
            m.batches_abandoned.clone(),
        );
        r.register(
            "batch_size_records",
            "Records per batch",
            m.batch_size.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "First poll to commit",
            m.batch_seconds.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "PostgreSQL transaction time",
            m.commit_seconds.clone(),
        );
        r.register(
            "consumer_lag_records",
            "Records behind the high watermark",
            m.lag.clone(),
        );
        r.register(
            "open_sessions",
            "Open sessions in memory",
            m.open_sessions.clone(),
        );
        r.register(
            "flash_sale_alerts",
            "Flash-sale alerts raised",
            m.alerts.clone(),
        );
        r.register(
            "last_commit_timestamp_seconds",
            "Unix time of the last commit",
            m.last_commit.clone(),
        );
        r.register(
            "consecutive_failures",
            "Failed batch attempts since the last commit (0 while healthy)",
            m.consecutive_failures.clone(),
        );
        r.register(
            "stalled_since_timestamp_seconds",
            "Unix time of the first failure of the current stall (0 while healthy)",
            m.stalled_since.clone(),
        );
        r.register(
            "batches_split",
            "Batches split to isolate records PostgreSQL refused",
            m.batches_split.clone(),
        );
        r.register(
            "future_events",
            "Events stamped ahead of the processing clock (they drive the watermark only up to it)",
            m.future_events.clone(),
        );
        r.register(
            "lost_to_retention",
            "Records Kafka's retention deleted before they were processed",
            m.lost_to_retention.clone(),
        );
        r.register(
            "idle_partitions",
            "Assigned partitions idle for the idle timeout (their watermark follows the clock)",
            m.idle_partitions.clone(),
        );
        r.register(
            "dlq_pending_records",
            "Dead letters recorded in PostgreSQL but not yet acknowledged by Kafka",
            m.dlq_pending.clone(),
        );
        r.register(
            "partitions_created",
            "Day partitions created ahead of the events",
            m.partitions_created.clone(),
        );
        r.register(
            "partitions_dropped",
            "Day partitions dropped by retention",
            m.partitions_dropped.clone(),
        );
        r.register(
            "retention_seconds",
            "Seconds spent creating and dropping day partitions",
            m.retention_seconds.clone(),
        );
        Arc::new(m)
    }
}
