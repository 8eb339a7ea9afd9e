//! Where generated records go.
//!
//! [`Sink`] is small on purpose: send a keyed record, flush at the end. Kafka delivery is
//! asynchronous; failures are counted by the delivery callback and reported by `flush`,
//! so a run never ends "successfully" with records silently lost.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clickstream_kafka::KafkaConnection;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use thiserror::Error;

/// Errors of a sink.
#[derive(Debug, Error)]
pub enum SinkError {
    /// Writing to a file or stdout failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The Kafka client refused a record or its configuration.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Some records were not acknowledged by the broker.
    #[error("{failed} of {sent} records were not delivered to Kafka (first error: {first_error})")]
    Undelivered {
        /// Records that failed.
        failed: u64,
        /// Records handed to the producer.
        sent: u64,
        /// The first delivery error seen.
        first_error: String,
    },
}

/// A destination for keyed records.
pub trait Sink {
    /// Queues or writes one record.
    fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<(), SinkError>;
    /// Waits until everything sent is durable (or fails), at most `timeout`.
    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError>;
}

/// Discards records; counts bytes. Measures the simulator alone.
#[derive(Debug, Default)]
pub struct NullSink {
    /// Payload bytes seen.
    pub bytes: u64,
}

impl Sink for NullSink {
    fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<(), SinkError> {
        self.bytes += (key.len() + payload.len()) as u64;
        std::hint::black_box(payload);
        Ok(())
    }
    fn flush(&mut self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes payloads as lines (JSON Lines for valid events; malformed records are written
/// as they are, and the simulator never puts a newline in one).
pub struct WriterSink<W: Write> {
    out: W,
}

impl<W: Write> WriterSink<W> {
    /// Wraps a writer; buffer it yourself if it is unbuffered.
    pub fn new(out: W) -> Self {
        WriterSink { out }
    }
}

impl<W: Write> Sink for WriterSink<W> {
    fn send(&mut self, _key: &[u8], payload: &[u8]) -> Result<(), SinkError> {
        self.out.write_all(payload)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }
    fn flush(&mut self, _: Duration) -> Result<(), SinkError> {
        Ok(self.out.flush()?)
    }
}

/// Kafka producer settings for [`KafkaSink`].
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers and every client property (TLS, SASL, tuning).
    pub connection: KafkaConnection,
    /// Target topic.
    pub topic: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// How long the producer waits to fill a batch.
    pub linger_ms: u32,
}

#[derive(Default)]
struct DeliveryCounts {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct CountingContext(Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(error = %e, "kafka delivery failed");
                    if let Ok(mut g) = self.0.first_error.lock() {
                        *g = Some(e.to_string());
                    }
                }
            }
        }
    }
}

/// An idempotent Kafka producer keyed by user id.
pub struct KafkaSink {
    producer: BaseProducer<CountingContext>,
    topic: String,
    counts: Arc<DeliveryCounts>,
    sent: u64,
}

impl KafkaSink {
    /// Connects a producer (no records are sent yet).
    pub fn new(s: &KafkaSettings) -> Result<Self, SinkError> {
        let counts = Arc::new(DeliveryCounts::default());
        let mut cfg = s.connection.client_config();
        cfg.set("enable.idempotence", "true")
            .set("compression.type", &s.compression)
            .set("linger.ms", s.linger_ms.to_string())
            .set("batch.size", "1000000")
            // The queue only has to keep batches full: 64 MB does (same rate as 512 MB
            // here), and bounds memory when compression or the broker is the slower side.
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "65536")
            // Same key hashing as the Java client, so other producers agree on partitions.
            .set("partitioner", "murmur2_random");
        s.connection.apply_tuning(&mut cfg);
        let producer = cfg.create_with_context(CountingContext(counts.clone()))?;
        Ok(KafkaSink {
            producer,
            topic: s.topic.clone(),
            counts,
            sent: 0,
        })
    }

    /// Records acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.counts.delivered.load(Ordering::Relaxed)
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<(), SinkError> {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: serve delivery reports until the local queue drains.
                    self.producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        self.producer.flush(timeout)?;
        let failed = self.counts.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first_error = self
                .counts
                .first_error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_default();
            return Err(SinkError::Undelivered {
                failed,
                sent: self.sent,
                first_error,
            });
        }
        Ok(())
    }
}

/// Creates `topic` with `partitions` partitions if it does not exist yet.
pub async fn ensure_topic(
    connection: &KafkaConnection,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = connection.client_config().create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = %t, %code, "could not create topic"))
            }
        }
    }
    Ok(())
}
