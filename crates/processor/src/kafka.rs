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
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
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

/// Producer for `clickstream.dlq`: the original key and value, untouched, with the reason
/// and the source position in headers.
pub struct DeadLetters {
    producer: BaseProducer<DlqContext>,
    counts: Arc<DeliveryCounts>,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    /// An idempotent producer to `topic`.
    pub fn new(bootstrap: &str, topic: &str, source_topic: &str) -> Result<Self, KafkaError> {
        let counts = Arc::new(DeliveryCounts::default());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("socket.nagle.disable", "true")
            .set("message.max.bytes", "4194304")
            .create_with_context(DlqContext(counts.clone()))?;
        Ok(DeadLetters {
            producer,
            counts,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
        })
    }

    /// Queues `rejected` for sending; [`DeadLetters::confirm`] waits for them. The batch
    /// commits only after that, so a crash can only repeat a dead letter, never lose one.
    pub fn send_all(&self, rejected: &[Rejected]) -> Result<(), ProcessorError> {
        for r in rejected {
            let partition = r.partition.to_string();
            let offset = r.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(r.reason),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(r.detail.as_str()),
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
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
                .payload(r.payload.as_slice())
                .headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            let mut record = record;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
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
        Ok(())
    }

    /// Waits until the broker has every dead letter queued so far; fails if any was refused.
    pub fn confirm(&self) -> Result<(), ProcessorError> {
        // Not `flush`: it sleeps in 100 ms steps, a fixed cost per batch; `poll` returns as
        // soon as a delivery report is served.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(ProcessorError::DeadLetter(
                    "no acknowledgement from Kafka within 30 s".into(),
                ));
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
