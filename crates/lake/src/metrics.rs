//! Prometheus metrics of the lake writer, served by `clickstream lake` on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The lake writer's counters (cheap to clone: clones share the values).
#[derive(Debug, Clone, Default)]
pub struct LakeMetrics {
    /// Records written to bronze.
    pub records: Counter,
    /// Events written to silver (committed ranges).
    pub events: Counter,
    /// Duplicates kept out of silver.
    pub duplicates: Counter,
    /// Records that failed validation (bronze only).
    pub invalid: Counter,
    /// Ranges committed.
    pub ranges: Counter,
    /// Records Kafka's retention deleted before the lake read them.
    pub lost_to_retention: Counter,
    /// Kafka errors retried.
    pub kafka_errors: Counter,
    /// Records in the topic not yet read, over all partitions.
    pub lag: Gauge,
}

impl LakeMetrics {
    /// Registers every metric under `clickstream_lake_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("clickstream_lake");
        r.register("records", "Records written to bronze", self.records.clone());
        r.register("events", "Events written to silver", self.events.clone());
        r.register(
            "duplicates",
            "Duplicates kept out of silver",
            self.duplicates.clone(),
        );
        r.register(
            "invalid",
            "Records that failed validation (bronze only)",
            self.invalid.clone(),
        );
        r.register("ranges", "Offset ranges committed", self.ranges.clone());
        r.register(
            "lost_to_retention",
            "Records Kafka's retention deleted before the lake read them",
            self.lost_to_retention.clone(),
        );
        r.register(
            "kafka_errors",
            "Kafka errors retried",
            self.kafka_errors.clone(),
        );
        r.register(
            "lag_records",
            "Records in the topic not yet read",
            self.lag.clone(),
        );
    }
}
