//! The collector's Prometheus metrics (`clickstream_collector_*` on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A response status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// HTTP status code.
    pub status: u16,
}

/// A rejection reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason code.
    pub reason: String,
}

/// Everything the collector counts.
pub struct Metrics {
    /// Requests answered, by status.
    pub requests: Family<StatusLabel, Counter>,
    /// Events acknowledged by Kafka.
    pub events_accepted: Counter,
    /// Events refused, by their DLQ reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Whole requests refused before their events were looked at, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Requests answered 503 because Kafka did not acknowledge.
    pub unavailable: Counter,
    /// Requests answered 429.
    pub rate_limited: Counter,
    /// Records waiting in the producer for the broker.
    pub kafka_in_flight: Gauge,
    /// Request duration, seconds.
    pub latency: Histogram,
    /// Events whose `timestamp` was corrected for the device's clock.
    pub clock_corrected: Counter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            events_accepted: Counter::default(),
            rejected: Family::default(),
            refused: Family::default(),
            unavailable: Counter::default(),
            rate_limited: Counter::default(),
            kafka_in_flight: Gauge::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            clock_corrected: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("clickstream_collector");
        r.register(
            "requests",
            "Requests answered, by status",
            m.requests.clone(),
        );
        r.register(
            "events_accepted",
            "Events acknowledged by Kafka",
            m.events_accepted.clone(),
        );
        r.register(
            "events_rejected",
            "Events refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "requests_refused",
            "Requests refused whole (key, origin, size, rate, Kafka), by reason",
            m.refused.clone(),
        );
        r.register(
            "unavailable",
            "Requests answered 503 (Kafka did not acknowledge)",
            m.unavailable.clone(),
        );
        r.register(
            "rate_limited",
            "Requests answered 429",
            m.rate_limited.clone(),
        );
        r.register(
            "kafka_in_flight",
            "Records waiting for the broker's acknowledgement",
            m.kafka_in_flight.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request to answer",
            m.latency.clone(),
        );
        r.register(
            "clock_corrected",
            "Events whose timestamp was corrected for a wrong device clock",
            m.clock_corrected.clone(),
        );
        m
    }

    /// Counts a request refused whole for `reason`.
    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts `n` events refused for `reason`.
    pub fn reject(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }
}
