//! The Kafka side of the loop: creating the consumer, checking the topics before the first
//! poll, polling a bounded batch, taking over assignment changes, and resetting to the
//! offsets stored in PostgreSQL after an abandoned batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;
use tokio::runtime::Handle;

use super::{writer_connection, Loop, Part, Polled, ProcessorConfig};
use crate::kafka::{Assignment, RestoringContext};
use crate::ProcessorError;

/// The consumer: manual offsets (PostgreSQL is authoritative), bounded prefetch.
pub(super) fn create_consumer(
    cfg: &ProcessorConfig,
    ctx: RestoringContext,
) -> Result<BaseConsumer<RestoringContext>, ProcessorError> {
    let mut kc = cfg.kafka.client_config();
    kc.set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            cfg.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout.as_millis() / 4).max(500).to_string(),
        )
        // librdkafka prefetches up to 64 MB per partition by default; 4 MB per partition
        // keeps the processor well under 150 MB RSS at full speed (bench/run.sh; 8 MB gave
        // the same throughput at ~160 MB). Override with --kafka-opt.
        .set("queued.min.messages", "50000")
        .set("queued.max.messages.kbytes", "4096")
        // Without this, librdkafka waits 1 s before fetching again for a partition whose
        // queue was full: with a bounded queue that pause, not PostgreSQL, set the pace.
        .set("fetch.queue.backoff.ms", "10")
        .set("max.partition.fetch.bytes", "4194304")
        // Partitions added to the topic are assigned within 30 s, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "30000")
        .set("client.id", &cfg.instance_id);
    cfg.kafka.apply_tuning(&mut kc);
    Ok(kc.create_with_context(ctx)?)
}

/// Partitions of `topic`, or `None` if the cluster does not have it. Other metadata
/// errors (a broker still starting, a leader moving) are errors, to be retried.
pub(super) fn partition_count<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
) -> Result<Option<i32>, ProcessorError> {
    use rdkafka::types::RDKafkaRespErr as E;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None if t.partitions().is_empty() => Ok(None),
        None => Ok(Some(t.partitions().len() as i32)),
        Some(E::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART | E::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) => {
            Ok(None)
        }
        Some(e) => Err(ProcessorError::Kafka(
            rdkafka::error::KafkaError::MetadataFetch(e.into()),
        )),
    }
}

/// [`partition_count`], retried for up to a minute while the cluster cannot answer (a
/// broker restarting): only a definite "no such topic" fails at once.
fn partition_count_patiently(
    consumer: &BaseConsumer<RestoringContext>,
    topic: &str,
) -> Result<Option<i32>, ProcessorError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match partition_count(consumer, topic) {
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(topic, error = %e, "reading topic metadata failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Checks the topics before the first poll, so a typo or a fresh cluster fails once,
/// loudly, instead of retrying every batch: the source topic must exist (its producer
/// owns its partitioning); a missing dead-letter topic is created with the cluster's
/// default partitions and replication. Returns the source topic's partition count.
pub(super) fn check_topics(
    cfg: &ProcessorConfig,
    consumer: &BaseConsumer<RestoringContext>,
    handle: &Handle,
) -> Result<i32, ProcessorError> {
    let Some(partitions) = partition_count_patiently(consumer, &cfg.topic)? else {
        return Err(ProcessorError::Config(format!(
            "source topic `{topic}` does not exist on {bootstrap}. Create it (`clickstream \
             generate` does, or `kafka-topics.sh --bootstrap-server {bootstrap} --create \
             --topic {topic} --partitions 6`), or name an existing topic with --topic",
            topic = cfg.topic,
            bootstrap = cfg.kafka.bootstrap,
        )));
    };
    if partition_count_patiently(consumer, &cfg.dlq_topic)?.is_none() {
        create_topic(cfg, &cfg.dlq_topic, handle)?;
        tracing::info!(topic = %cfg.dlq_topic, "created the missing dead-letter topic (cluster defaults)");
    }
    Ok(partitions)
}

fn create_topic(cfg: &ProcessorConfig, topic: &str, handle: &Handle) -> Result<(), ProcessorError> {
    let admin: AdminClient<DefaultClientContext> = cfg.kafka.client_config().create()?;
    // -1: the broker's num.partitions and default.replication.factor.
    let topic_spec = NewTopic::new(topic, -1, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = handle.block_on(admin.create_topics([&topic_spec], &opts))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(ProcessorError::Config(format!(
                    "dead-letter topic `{name}` does not exist and creating it failed ({code}); \
                     create it with `kafka-topics.sh --bootstrap-server {} --create --topic {name}`",
                    cfg.kafka.bootstrap
                )))
            }
        }
    }
    Ok(())
}

impl Loop<'_> {
    /// Takes over assignment changes; returns whether state must be reloaded first.
    pub(super) fn apply_assignment_changes(
        &mut self,
        changes: Vec<Assignment>,
    ) -> Result<bool, ProcessorError> {
        let mut reload = false;
        for change in changes {
            match change {
                Assignment::Assigned(loaded) => {
                    // Partitions taken over come with keys another instance recorded.
                    self.recent_keys
                        .keep_if_resumed(loaded.iter().map(|(p, sp)| (*p, sp.next_offset)));
                    for (p, sp) in loaded {
                        self.parts.insert(p, Part::new(sp.next_offset, sp.state));
                    }
                    if self.clock.unset() {
                        self.resync_clock();
                    }
                }
                Assignment::Revoked(ps) => {
                    for p in &ps {
                        self.parts.remove(p);
                    }
                }
                Assignment::Reload(ps) => {
                    self.recent_keys.forget();
                    for p in &ps {
                        self.parts.remove(p);
                    }
                    reload = true;
                }
                Assignment::Failed(e) => return Err(ProcessorError::Restore(e)),
            }
        }
        Ok(reload)
    }

    /// Polls up to the splitter's cap of records, or until `batch_max_wait` after the
    /// first; returns early (possibly empty) when the input is idle.
    pub(super) fn poll_batch(&mut self, stop: &AtomicBool) -> Result<Polled, ProcessorError> {
        let mut batch = Polled {
            records: Vec::new(),
            bytes: std::mem::take(&mut self.spare_bytes),
        };
        let mut deadline: Option<Instant> = None;
        let cap = self.splitter.cap();
        while batch.len() < cap && !stop.load(Ordering::Relaxed) {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(w) if !w.is_zero() => w,
                    _ => break,
                },
                None => Duration::from_millis(200),
            };
            match self.consumer.poll(wait) {
                None => {
                    if deadline.is_none() {
                        // Idle: hand back so the caller can refresh lag and check `stop`.
                        return Ok(batch);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                Some(Ok(m)) => {
                    // Ownership and already-committed offsets are checked after the
                    // assignment changes are applied (`Prepared::retain_owned`).
                    deadline.get_or_insert_with(|| Instant::now() + self.cfg.batch_max_wait);
                    if batch.is_empty() && batch.bytes.capacity() == 0 {
                        // Room for a full batch of records this size (bounded: the first
                        // record may be an outlier), instead of growing step by step.
                        let size = m.payload_len() + m.key_len();
                        batch.bytes.reserve(size.saturating_mul(cap).min(32 << 20));
                    }
                    batch.push(
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.payload().unwrap_or_default(),
                    );
                }
            }
        }
        Ok(batch)
    }

    /// After an abandoned batch: reload every assigned partition from PostgreSQL and seek
    /// the consumer back to the stored offsets, backing off while that fails.
    pub(super) fn reset(&mut self, stop: &AtomicBool) -> Result<(), ProcessorError> {
        loop {
            match self.try_reset() {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retriable() && !stop.load(Ordering::Relaxed) => {
                    let wait = self.note_failure(&e);
                    tracing::warn!(
                        error = %e,
                        failures = self.stall.consecutive,
                        retry_in = ?wait,
                        "reloading state failed; backing off"
                    );
                    self.pause(wait, stop);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_reset(&mut self) -> Result<(), ProcessorError> {
        // The batch connection too may have died with the server.
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.handle.block_on(writer_connection(self.cfg))?);
        }
        let assigned: Vec<i32> = self
            .consumer
            .assignment()?
            .elements_for_topic(&self.cfg.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let loaded = self.consumer.context().load(&assigned)?;
        self.parts.clear();
        for (p, sp) in loaded {
            let offset = sp.next_offset.map_or(Offset::Beginning, Offset::Offset);
            // A failed seek would let the consumer carry on past records whose batch was
            // just abandoned: retry the reset instead.
            self.consumer
                .seek(&self.cfg.topic, p, offset, Duration::from_secs(10))
                .map_err(|error| ProcessorError::Seek {
                    partition: p,
                    error,
                })?;
            self.parts.insert(p, Part::new(sp.next_offset, sp.state));
        }
        self.resync_clock();
        // Batches this instance saw commit may be gone (asynchronous commits and a
        // PostgreSQL crash): their hourly rows must be written again.
        self.hourly_seen = Default::default();
        // Those batches' keys too, and other instances may have recorded keys meanwhile.
        self.recent_keys.forget();
        Ok(())
    }

    /// An event-time clock restarts where the last committed batch left it (a batch
    /// retried after a failure is judged as it was the first time), or after a restart
    /// from the committed watermarks (which trail the clock by the allowed lateness).
    fn resync_clock(&mut self) {
        if !self.clock.follows_events() {
            return;
        }
        let lateness = self.cfg.engine.lateness_micros;
        let restart = self
            .parts
            .values()
            .filter_map(|p| p.state.watermark)
            .max()
            .map(|w| w.add_micros(lateness));
        let t = self.committed_clock.or(restart);
        self.clock.reset(t);
        self.committed_clock = t;
    }
}
