//! The collector's Kafka side: one idempotent, `acks=all` producer for accepted events
//! (keyed by user id) and rejected ones (to the dead-letter topic, with the reason).
//!
//! A request is answered only after every one of its records is acknowledged, so a 2xx
//! means the events are in Kafka. Anything else (the local queue full, a broker down past
//! the delivery timeout) turns into [`ProduceError`], which the HTTP layer answers with 503:
//! the client keeps its events and sends them again.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::CollectorError;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers and every client property (TLS, SASL, tuning).
    pub connection: clickstream_kafka::KafkaConnection,
    /// Topic of accepted events (`clickstream.raw`).
    pub topic: String,
    /// Dead-letter topic for rejected events.
    pub dlq_topic: String,
    /// How long a record may wait for the broker's acknowledgement before the request
    /// fails with 503.
    pub delivery_timeout: Duration,
}

/// Why a request's records were not all acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The local queue is full (Kafka slower than the traffic, or down).
    #[error("the Kafka producer queue is full")]
    QueueFull,
    /// A record was not acknowledged in time, or the broker refused it.
    #[error("Kafka did not acknowledge the events: {0}")]
    Delivery(KafkaError),
}

/// A record about to be sent.
pub struct Outgoing<'a> {
    /// Record key (`user_id` for events).
    pub key: &'a [u8],
    /// Record value.
    pub value: &'a [u8],
    /// Headers (dead letters carry the reason).
    pub headers: Option<OwnedHeaders>,
}

/// The shared producer.
pub struct Events {
    /// Replaced when librdkafka reports a fatal error (an idempotent producer whose
    /// sequence state the broker no longer accepts cannot produce again).
    producer: std::sync::RwLock<FutureProducer>,
    config: ClientConfig,
    topic: String,
    dlq_topic: String,
}

/// Largest dead-letter value; longer rejected payloads are cut (the reason is in the
/// headers, and `original.size` says how long it was).
const MAX_LETTER: usize = 512 * 1024;

impl Events {
    /// Creates the producer (it connects lazily; [`Events::check`] probes the broker).
    pub fn new(s: &KafkaSettings) -> Result<Self, CollectorError> {
        let mut cfg = s.connection.client_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            // The Java client's partitioner, as `generate` uses: one user, one partition,
            // whoever produces.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            // Small: requests wait for their acknowledgement, so latency is what batching costs.
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "262144")
            .set(
                "message.timeout.ms",
                s.delivery_timeout.as_millis().max(1).to_string(),
            );
        s.connection.apply_tuning(&mut cfg);
        let producer: FutureProducer = cfg.create().map_err(CollectorError::Kafka)?;
        Ok(Events {
            producer: std::sync::RwLock::new(producer),
            config: cfg,
            topic: s.topic.clone(),
            dlq_topic: s.dlq_topic.clone(),
        })
    }

    /// Fails unless the broker answers and the events topic exists (run at start, so a
    /// typo in the topic name stops the collector instead of 503-ing every request).
    pub async fn check(&self, timeout: Duration) -> Result<(), CollectorError> {
        let producer = self.producer();
        let topic = self.topic.clone();
        let md = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await
        .map_err(|e| CollectorError::Config(format!("metadata task: {e}")))?
        .map_err(CollectorError::Kafka)?;
        let t = md.topics().first();
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(CollectorError::Config(format!(
                "topic `{}` does not exist; create it (kafka-topics.sh --create --topic {} \
                 --partitions 6) or run `clickstream generate` once",
                self.topic, self.topic
            ))),
        }
    }

    /// Sends accepted events and dead letters together and waits for every
    /// acknowledgement. `letters` carry their reason headers already.
    pub async fn send_all(
        &self,
        events: &[Outgoing<'_>],
        letters: &[Outgoing<'_>],
    ) -> Result<(), ProduceError> {
        let producer = self.producer();
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(events.len() + letters.len());
        for (topic, recs) in [(&self.topic, events), (&self.dlq_topic, letters)] {
            for r in recs {
                let value = &r.value[..r.value.len().min(MAX_LETTER)];
                let mut rec = FutureRecord::to(topic).key(r.key).payload(value);
                if let Some(h) = &r.headers {
                    rec = rec.headers(h.clone());
                }
                match producer.send_result(rec) {
                    Ok(f) => pending.push(f),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Records already queued still go out; their events are answered
                        // 503 and re-sent by the client, and the processor drops the copies.
                        return Err(ProduceError::QueueFull);
                    }
                    Err((e, _)) => return Err(ProduceError::Delivery(e)),
                }
            }
        }
        for f in pending {
            let failed = match f.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_) => KafkaError::Canceled,
            };
            self.renew_if_fatal(&producer);
            return Err(ProduceError::Delivery(failed));
        }
        Ok(())
    }

    fn producer(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A fatal error (e.g. the broker lost the idempotent producer's state) makes every
    /// later send fail: build a new producer, once, for whoever saw it first.
    fn renew_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let Ok(mut slot) = self.producer.write() else {
            return;
        };
        if !std::ptr::eq(slot.client().native_ptr(), failed.client().native_ptr()) {
            return; // already renewed
        }
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                tracing::error!(?code, %reason, "Kafka producer hit a fatal error; replaced it");
                *slot = p;
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate the Kafka producer"),
        }
    }

    /// Records waiting in the producer for an acknowledgement.
    pub fn in_flight(&self) -> i32 {
        self.producer().in_flight_count()
    }

    /// Waits up to `timeout` for queued records (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer().flush(timeout) {
            tracing::warn!(error = %e, "not every record was acknowledged at shutdown");
        }
    }
}

/// Headers of a dead letter from the collector.
pub fn letter_headers(
    reason: &str,
    detail: &str,
    site: &str,
    original_size: usize,
) -> OwnedHeaders {
    let size = original_size.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "detail",
            value: Some(detail),
        })
        .insert(Header {
            key: "source",
            value: Some("collector"),
        })
        .insert(Header {
            key: "source.site",
            value: Some(site),
        })
        .insert(Header {
            key: "original.size",
            value: Some(size.as_str()),
        })
}
