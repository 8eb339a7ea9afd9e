//! Kafka plumbing: a consumer context that, on partition assignment, loads the stored
//! offsets and operator state from PostgreSQL and assigns the partitions at those offsets;
//! and the dead-letter producer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_postgres::Client;

use crate::engine::EngineConfig;
use crate::store::{load_partitions, Rejected, StoredPartition};
use crate::ProcessorError;

/// A change of assignment, handed from the rebalance callback to the batch loop.
#[derive(Debug)]
pub enum Assignment {
    /// These partitions are ours now, with their restored state.
    Assigned(Vec<(i32, StoredPartition)>),
    /// These partitions are no longer ours.
    Revoked(Vec<i32>),
    /// Restoring failed for a reason that may pass (PostgreSQL away): the partitions are
    /// assigned anyway and the loop must reload them before processing anything.
    Reload(Vec<i32>),
    /// Restoring failed; the loop should stop.
    Failed(String),
}

/// Consumer context: restores state on assignment (the consumer runs on its own thread,
/// so blocking on the runtime here is fine).
pub struct RestoringContext {
    handle: Handle,
    client: Arc<tokio::sync::Mutex<Client>>,
    database_url: String,
    group: String,
    topic: String,
    engine: EngineConfig,
    /// Assignment changes not yet seen by the loop.
    pub changes: Mutex<Vec<Assignment>>,
}

impl RestoringContext {
    /// A context that loads state through `client` on `handle` (reconnecting to
    /// `database_url` when the connection was lost).
    pub fn new(
        handle: Handle,
        client: Client,
        database_url: &str,
        group: &str,
        topic: &str,
        engine: EngineConfig,
    ) -> Self {
        RestoringContext {
            handle,
            client: Arc::new(tokio::sync::Mutex::new(client)),
            database_url: database_url.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
            engine,
            changes: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, a: Assignment) {
        if let Ok(mut g) = self.changes.lock() {
            g.push(a);
        }
    }

    /// Takes the pending assignment changes.
    pub fn take_changes(&self) -> Vec<Assignment> {
        self.changes
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }

    /// Loads state for `partitions` (also used after an abandoned batch).
    pub fn load(&self, partitions: &[i32]) -> Result<Vec<(i32, StoredPartition)>, ProcessorError> {
        self.handle.block_on(async {
            let mut c = self.client.lock().await;
            // The server may have restarted since the last load.
            if c.is_closed() {
                *c = clickstream_db::connect(&self.database_url).await?;
            }
            load_partitions(&mut c, &self.group, &self.topic, partitions, &self.engine).await
        })
    }
}

impl ClientContext for RestoringContext {}

impl ConsumerContext for RestoringContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.load(&parts) {
                    Ok(loaded) => {
                        for (p, sp) in &loaded {
                            let offset = sp.next_offset.map_or(Offset::Beginning, Offset::Offset);
                            let _ = tpl.set_partition_offset(&self.topic, *p, offset);
                        }
                        tracing::info!(partitions = ?parts, "assigned; resuming from stored offsets");
                        self.push(Assignment::Assigned(loaded));
                    }
                    Err(e) if e.is_retriable() => {
                        tracing::warn!(error = %e, partitions = ?parts, "assigned, but loading their state failed; will retry");
                        self.push(Assignment::Reload(parts.clone()));
                    }
                    Err(e) => self.push(Assignment::Failed(e.to_string())),
                }
                if let Err(e) = consumer.assign(tpl) {
                    self.push(Assignment::Failed(format!("assign: {e}")));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?parts, "revoked");
                self.push(Assignment::Revoked(parts));
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

#[derive(Default)]
struct DeliveryCounts {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct DlqContext(Arc<DeliveryCounts>);

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.0.first_error.lock() {
                g.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Largest record value written to the dead-letter topic: under the broker's default
/// 1 MB message limit even when it does not compress. Longer values are cut to this and
/// described by headers (`original.size`, `original.sha256`).
pub const DLQ_MAX_PAYLOAD: usize = 512 * 1024;
/// Largest record key written to the dead-letter topic (keys are ids; longer ones are cut
/// and described by `original.key.size`).
pub const DLQ_MAX_KEY: usize = 1024;

/// Producer for the dead-letter topic: the original key and value (cut to
/// [`DLQ_MAX_PAYLOAD`] / [`DLQ_MAX_KEY`] if longer), lz4-compressed, with the reason and
/// the source position in headers.
pub struct DeadLetters {
    producer: BaseProducer<DlqContext>,
    counts: Arc<DeliveryCounts>,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    /// An idempotent producer to the configured dead-letter topic.
    pub fn new(cfg: &crate::ProcessorConfig) -> Result<Self, KafkaError> {
        let counts = Arc::new(DeliveryCounts::default());
        let mut pc = cfg.kafka.client_config();
        pc.set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("socket.nagle.disable", "true")
            .set("message.max.bytes", "2097152")
            // An unreachable dead-letter topic is reported within seconds, not after
            // librdkafka's default five minutes, so the batch can go on without it.
            .set("message.timeout.ms", "10000");
        let producer = pc.create_with_context(DlqContext(counts.clone()))?;
        Ok(DeadLetters {
            producer,
            counts,
            topic: cfg.dlq_topic.clone(),
            source_topic: cfg.topic.clone(),
        })
    }

    /// Queues `rejected` for sending; [`DeadLetters::confirm`] waits for them. The batch
    /// commits only after that, so a crash can only repeat a dead letter, never lose one.
    pub fn send_all(&self, rejected: &[Rejected]) -> Result<(), ProcessorError> {
        for r in rejected {
            let letter = Letter::new(r.key.as_deref(), &r.payload, r.payload.len());
            self.send(&letter, r.reason, &r.detail, r.partition, r.offset)?;
        }
        Ok(())
    }

    /// Queues one dead letter.
    pub fn send(
        &self,
        letter: &Letter<'_>,
        reason: &str,
        detail: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ProcessorError> {
        let partition = partition.to_string();
        let offset = offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "detail",
                value: Some(detail),
            })
            .insert(Header {
                key: "source.topic",
                value: Some(self.source_topic.as_str()),
            })
            .insert(Header {
                key: "source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source.offset",
                value: Some(offset.as_str()),
            });
        for (key, value) in &letter.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(letter.payload)
            .headers(headers);
        if let Some(k) = letter.key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => return Err(ProcessorError::DeadLetter(e.to_string())),
            }
        }
    }

    /// Waits until the broker has every dead letter queued so far; fails if any was refused
    /// or none came back within `timeout`.
    pub fn confirm(&self, timeout: Duration) -> Result<(), ProcessorError> {
        // Not `flush`: it sleeps in 100 ms steps, a fixed cost per batch; `poll` returns as
        // soon as a delivery report is served.
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(ProcessorError::DeadLetter(format!(
                    "no acknowledgement from Kafka within {timeout:?}"
                )));
            }
            self.producer.poll(Duration::from_millis(5));
        }
        if self.counts.failed.swap(0, Ordering::Relaxed) > 0 {
            let first = self
                .counts
                .first_error
                .lock()
                .ok()
                .and_then(|mut g| g.take())
                .unwrap_or_default();
            return Err(ProcessorError::DeadLetter(first));
        }
        Ok(())
    }
}

/// A dead letter's key and value as written: cut to the topic's bounds when longer, with
/// headers that describe the original.
#[derive(Debug)]
pub struct Letter<'a> {
    /// Key, at most [`DLQ_MAX_KEY`] bytes.
    pub key: Option<&'a [u8]>,
    /// Value, at most [`DLQ_MAX_PAYLOAD`] bytes.
    pub payload: &'a [u8],
    /// Extra headers describing what was cut.
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Letter<'a> {
    /// The letter for a record whose value was `original_size` bytes long; `payload` may
    /// already be a prefix of it (as stored in `rejected_events`).
    pub fn new(key: Option<&'a [u8]>, payload: &'a [u8], original_size: usize) -> Self {
        let mut headers = Vec::new();
        let key = key.map(|k| {
            if k.len() > DLQ_MAX_KEY {
                headers.push(("original.key.size", k.len().to_string()));
                &k[..DLQ_MAX_KEY]
            } else {
                k
            }
        });
        let whole = payload.len() == original_size;
        let mut payload = payload;
        if payload.len() > DLQ_MAX_PAYLOAD || !whole {
            headers.push(("truncated", "true".into()));
            headers.push(("original.size", original_size.to_string()));
            if whole {
                headers.push(("original.sha256", sha256_hex(payload)));
            }
            payload = &payload[..payload.len().min(DLQ_MAX_PAYLOAD)];
        }
        Letter {
            key,
            payload,
            headers,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn long_records_are_cut_and_described() {
        let big = vec![b'x'; 2 * 1024 * 1024];
        let key = vec![b'k'; 5000];
        let l = Letter::new(Some(&key), &big, big.len());
        assert_eq!(l.payload.len(), DLQ_MAX_PAYLOAD);
        assert_eq!(l.key.unwrap().len(), DLQ_MAX_KEY);
        let h: HashMap<_, _> = l.headers.into_iter().collect();
        assert_eq!(h["original.size"], "2097152");
        assert_eq!(h["original.key.size"], "5000");
        assert_eq!(h["original.sha256"].len(), 64);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let small = Letter::new(None, b"{}", 2);
        assert!(small.headers.is_empty());
        // A prefix stored in PostgreSQL is marked as cut, without a hash of the prefix.
        let stored = Letter::new(None, &big[..1000], big.len());
        let h: HashMap<_, _> = stored.headers.into_iter().collect();
        assert_eq!(h["truncated"], "true");
        assert!(!h.contains_key("original.sha256"));
    }
}
