//! The micro-batch loop: poll up to `batch_max_records` or `batch_max_wait`, validate,
//! dead-letter the rejects, drop re-sends (dedup ledger probe), run the operators, then
//! one PostgreSQL transaction writes everything, while the loop prepares the next batch.
//!
//! Runs on a dedicated thread (librdkafka's consumer is blocking); PostgreSQL calls go
//! through the runtime handle.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clickstream_model::{parse_event, EventKey, EventTime, ValidationPolicy};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_postgres::Client;

use crate::alerts::AlertSink;
use crate::engine::{dedup_batch, BatchOutput, EngineConfig, PartitionState, SourcedEvent};
use crate::kafka::{Assignment, DeadLetters, RestoringContext};
use crate::metrics::{Metrics, PartitionLabel, ReasonLabel};
use crate::store::{self, AlertRule, Heartbeat, Position, Rejected};
use crate::ProcessorError;

/// Settings of one processor instance.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Consumer group (instances in one group share the partitions).
    pub group: String,
    /// Source topic.
    pub topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Writer-role connection URL.
    pub database_url: String,
    /// A batch closes at this many records...
    pub batch_max_records: usize,
    /// ... or this long after its first record.
    pub batch_max_wait: Duration,
    /// Operator settings.
    pub engine: EngineConfig,
    /// Flash-sale thresholds.
    pub alert: AlertRule,
    /// Oldest accepted event time, before now (also the dedup horizon).
    pub max_event_age: Duration,
    /// Furthest accepted event time ahead of now.
    pub max_event_future: Duration,
    /// Largest accepted record.
    pub max_record_bytes: usize,
    /// Keep every valid distinct event in `analytics.events`.
    pub audit_events: bool,
    /// Wait for each batch's WAL flush before the next batch (PostgreSQL's
    /// `synchronous_commit`); see [`writer_connection`].
    pub durable_commits: bool,
    /// Kafka group session timeout.
    pub session_timeout: Duration,
    /// This instance's name in heartbeats.
    pub instance_id: String,
    /// Extra librdkafka consumer properties.
    pub kafka_opts: Vec<(String, String)>,
}

/// What a run did, for the caller's log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunReport {
    /// Counters at the end.
    pub totals: Heartbeat,
}

struct Owned {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

struct Part {
    /// Next offset stored in PostgreSQL (what the fence expects).
    stored_next: Option<i64>,
    state: PartitionState,
}

struct Loop<'a> {
    cfg: &'a ProcessorConfig,
    /// The same settings, shareable with the transaction task.
    shared: Arc<ProcessorConfig>,
    handle: Handle,
    /// `None` while a transaction task has it.
    client: Option<Client>,
    /// Reads the dedup ledger while a transaction holds `client`.
    probe: Option<Client>,
    consumer: BaseConsumer<RestoringContext>,
    dlq: DeadLetters,
    metrics: Arc<Metrics>,
    sinks: Vec<Box<dyn AlertSink>>,
    parts: HashMap<i32, Part>,
    partition_count: i32,
    alerts_closed_until: Option<EventTime>,
    totals: Heartbeat,
    started: chrono::DateTime<Utc>,
}

/// Runs until `stop` is set. Retriable failures (PostgreSQL away, fenced by a rebalance)
/// abandon the batch, reload state and go on; others return an error.
pub fn run(
    cfg: &ProcessorConfig,
    handle: Handle,
    metrics: Arc<Metrics>,
    sinks: Vec<Box<dyn AlertSink>>,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, ProcessorError> {
    if cfg.engine.window_micros % cfg.engine.slide_micros != 0 {
        return Err(ProcessorError::Config(
            "the window length must be a multiple of the slide".into(),
        ));
    }
    let client = handle.block_on(writer_connection(cfg))?;
    handle.block_on(clickstream_db::migrate::require_current(&client))?;
    let loader = handle.block_on(clickstream_db::connect(&cfg.database_url))?;
    let ctx = RestoringContext::new(
        handle.clone(),
        loader,
        &cfg.database_url,
        &cfg.group,
        &cfg.topic,
        cfg.engine,
    );
    let mut kc = ClientConfig::new();
    kc.set("bootstrap.servers", &cfg.bootstrap)
        .set("group.id", &cfg.group)
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
        .set("client.id", &cfg.instance_id);
    for (k, v) in &cfg.kafka_opts {
        kc.set(k, v);
    }
    let consumer: BaseConsumer<RestoringContext> = kc.create_with_context(ctx)?;
    let md = consumer.fetch_metadata(Some(&cfg.topic), Duration::from_secs(10))?;
    let partition_count = md
        .topics()
        .iter()
        .find(|t| t.name() == cfg.topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if partition_count == 0 {
        return Err(ProcessorError::Config(format!(
            "topic {} does not exist or has no partitions",
            cfg.topic
        )));
    }
    consumer.subscribe(&[&cfg.topic])?;
    let dlq = DeadLetters::new(&cfg.bootstrap, &cfg.dlq_topic, &cfg.topic)?;
    let mut l = Loop {
        cfg,
        shared: Arc::new(cfg.clone()),
        handle,
        client: Some(client),
        probe: None,
        consumer,
        dlq,
        metrics,
        sinks,
        parts: HashMap::new(),
        partition_count,
        alerts_closed_until: None,
        totals: Heartbeat::default(),
        started: Utc::now(),
    };
    tracing::info!(topic = %cfg.topic, partitions = partition_count, group = %cfg.group, "processor started");
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let mut last_prune = Instant::now();
    // Pipelined: while batch N's transaction runs on the runtime, this thread polls,
    // validates and dead-letters batch N+1, probes the dedup ledger for it and applies the
    // operators, so batch N+1's transaction only writes. Operator state stays on this
    // thread; a failed transaction reloads it from PostgreSQL (it is only ever a cache).
    let mut inflight: Option<InFlight> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let c0 = Instant::now();
        let polled = if stopping {
            Vec::new()
        } else {
            l.poll_batch(&stop)?
        };
        let cp = Instant::now();
        // A dead-letter delivery failure abandons this batch like a failed transaction.
        let mut abandoned = None;
        let mut prepared = if polled.is_empty() {
            None
        } else {
            match l.prepare(polled) {
                Ok(p) => Some(p),
                Err(e) if e.is_retriable() => {
                    abandoned = Some(e);
                    None
                }
                Err(e) => return Err(e),
            }
        };
        let c1 = Instant::now();
        let changes = l.consumer.context().take_changes();
        if !changes.is_empty() {
            // A partition (re)assigned now has state loaded from before the in-flight
            // transaction: let that transaction finish first, so its bookkeeping does not
            // land on the new state (the fence then sorts out any remaining race).
            if let Some(job) = inflight.take() {
                if let Err(e) = l.finish(job) {
                    abandoned = Some(fatal_or(e)?);
                }
            }
        }
        let reload = l.apply_assignment_changes(changes)?;
        let mut staged = None;
        if let Some(mut p) = prepared.take().filter(|_| abandoned.is_none() && !reload) {
            p.retain_owned(&l.parts);
            if !p.ends.is_empty() {
                // Dead letters were queued in `prepare`; their acknowledgements arrive
                // while the batch is staged.
                let pending = inflight.as_ref().map(|j| &j.keys);
                match l
                    .stage(p, pending)
                    .and_then(|s| l.dlq.confirm().map(|()| s))
                {
                    Ok(s) => staged = Some(s),
                    Err(e) => abandoned = Some(fatal_or(e)?),
                }
            }
        }
        let c2 = Instant::now();
        if let Some(job) = inflight.take() {
            if let Err(e) = l.finish(job) {
                abandoned = Some(fatal_or(e)?);
            }
        }
        tracing::trace!(
            poll_ms = (cp - c0).as_millis() as u64,
            prepare_ms = (c1 - cp).as_millis() as u64,
            stage_ms = (c2 - c1).as_millis() as u64,
            finish_ms = c2.elapsed().as_millis() as u64,
            "loop iteration"
        );
        if let Some(e) = abandoned {
            l.metrics.batches_abandoned.inc();
            tracing::warn!(error = %e, "batch abandoned; reloading state and retrying");
            // The staged batch was applied to state that is reloaded now; it is read again.
            staged = None;
            l.reset(&stop)?;
        } else if reload {
            // Assigned while PostgreSQL was away: load state and seek (retrying) before
            // anything of those partitions is processed.
            staged = None;
            l.reset(&stop)?;
        }
        // The connection is home between transactions: housekeeping goes here.
        if last_lag.elapsed() > Duration::from_secs(2) {
            l.update_lag();
            // Other instances may have moved the global watermark meanwhile.
            if let Err(e) = l.evaluate_alerts() {
                tracing::warn!(error = %e, "evaluating alerts failed; will retry");
            }
            l.touch_heartbeat();
            last_lag = Instant::now();
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            l.prune();
            last_prune = Instant::now();
        }
        if let Some(s) = staged {
            inflight = Some(l.start_transaction(s));
            continue;
        }
        if stopping {
            break;
        }
    }
    if let Some(client) = &l.client {
        if let Err(e) = l
            .handle
            .block_on(store::mark_stopped(client, &cfg.instance_id))
        {
            tracing::debug!(error = %e, "could not record the clean shutdown");
        }
    }
    tracing::info!("processor stopping: the last batch was committed");
    Ok(RunReport { totals: l.totals })
}

impl Loop<'_> {
    /// Takes over assignment changes; returns whether state must be reloaded first.
    fn apply_assignment_changes(
        &mut self,
        changes: Vec<Assignment>,
    ) -> Result<bool, ProcessorError> {
        let mut reload = false;
        for change in changes {
            match change {
                Assignment::Assigned(loaded) => {
                    for (p, sp) in loaded {
                        self.parts.insert(
                            p,
                            Part {
                                stored_next: sp.next_offset,
                                state: sp.state,
                            },
                        );
                    }
                }
                Assignment::Revoked(ps) => {
                    for p in &ps {
                        self.parts.remove(p);
                    }
                }
                Assignment::Reload(ps) => {
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

    fn poll_batch(&self, stop: &AtomicBool) -> Result<Vec<Owned>, ProcessorError> {
        let mut batch: Vec<Owned> = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.cfg.batch_max_records && !stop.load(Ordering::Relaxed) {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(w) if !w.is_zero() => w,
                    _ => break,
                },
                None => Duration::from_millis(200),
            };
            let msg = self.consumer.poll(wait).map(|r| {
                r.map(|m| Owned {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                })
            });
            match msg {
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
                    batch.push(m);
                }
            }
        }
        Ok(batch)
    }

    fn policy(&self) -> ValidationPolicy {
        let mut p = ValidationPolicy::new(EventTime::now());
        p.max_age_micros = self.cfg.max_event_age.as_micros() as i64;
        p.max_future_micros = self.cfg.max_event_future.as_micros() as i64;
        p.max_bytes = self.cfg.max_record_bytes;
        p
    }

    /// Validates and deduplicates a polled batch and dead-letters its rejects (before any
    /// commit that covers them, so a crash can repeat a dead letter but never lose one).
    fn prepare(&self, batch: Vec<Owned>) -> Result<Prepared, ProcessorError> {
        let policy = self.policy();
        let mut valid = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let first_polled = Instant::now();
        for r in batch.iter() {
            ends.insert(r.partition, r.offset + 1);
            match parse_event(&r.payload, &policy) {
                Ok(event) => valid.push(SourcedEvent {
                    event,
                    partition: r.partition,
                    offset: r.offset,
                }),
                Err(reason) => rejected.push(Rejected {
                    partition: r.partition,
                    offset: r.offset,
                    reason: reason.code(),
                    detail: reason.to_string(),
                    key: r.key.clone(),
                    payload: r.payload.clone(),
                }),
            }
        }
        let offsets: Vec<(i32, i64)> = batch.iter().map(|r| (r.partition, r.offset)).collect();
        drop(batch);
        let (valid, _) = dedup_batch(valid);
        self.dlq.send_all(&rejected)?;
        Ok(Prepared {
            valid,
            rejected,
            ends,
            offsets,
            first_polled,
        })
    }

    /// Finds the batch's re-sends of earlier events (the ledger's committed keys, plus the
    /// in-flight batch's `pending` keys, which it cannot see yet) and applies the operators
    /// to the rest, advancing the partitions' state.
    fn stage(
        &mut self,
        p: Prepared,
        pending: Option<&HashSet<EventKey>>,
    ) -> Result<Staged, ProcessorError> {
        let t0 = Instant::now();
        if self.probe.as_ref().is_none_or(|c| c.is_closed()) {
            self.probe = Some(
                self.handle
                    .block_on(clickstream_db::connect(&self.cfg.database_url))?,
            );
        }
        let probe = self.probe.as_ref().expect("probe connection");
        let mut known = self.handle.block_on(store::known_keys(probe, &p.valid))?;
        if let Some(pending) = pending {
            known.extend(
                p.valid
                    .iter()
                    .map(|e| e.event.key())
                    .filter(|k| pending.contains(k)),
            );
        }
        let probed = t0.elapsed();
        let mut fresh = p.valid;
        if !known.is_empty() {
            fresh.retain(|e| !known.contains(&e.event.key()));
        }
        let engine = &self.cfg.engine;
        let mut out = BatchOutput::default();
        for e in &fresh {
            if let Some(part) = self.parts.get_mut(&e.partition) {
                part.state.apply(e, engine, &mut out);
            }
        }
        let mut positions = Vec::with_capacity(p.ends.len());
        for (partition, next) in &p.ends {
            if let Some(part) = self.parts.get_mut(partition) {
                part.state.finish_batch(engine, &mut out);
                positions.push(Position {
                    partition: *partition,
                    next_offset: *next,
                    watermark: part.state.watermark,
                    max_event_time: part.state.max_event_time,
                });
            }
        }
        let keys = fresh.iter().map(|e| e.event.key()).collect();
        Ok(Staged {
            fresh,
            out,
            positions,
            rejected: p.rejected,
            ends: p.ends,
            records: p.offsets.len(),
            first_polled: p.first_polled,
            keys,
            probe_time: probed,
            apply_time: t0.elapsed() - probed,
        })
    }

    /// Moves the connection and the staged batch into a task that runs its transaction.
    fn start_transaction(&mut self, staged: Staged) -> InFlight {
        let expected: HashMap<i32, Option<i64>> = staged
            .ends
            .keys()
            .map(|p| (*p, self.parts.get(p).and_then(|x| x.stored_next)))
            .collect();
        let mut client = self.client.take();
        let cfg = self.shared.clone();
        let ctx = TxContext {
            partition_count: self.partition_count,
            alerts_since: self.alerts_closed_until,
            totals: self.totals,
            started: self.started,
        };
        let mut staged = staged;
        let keys = std::mem::take(&mut staged.keys);
        let task = self.handle.spawn(async move {
            let result = match client.as_mut() {
                Some(c) => run_transaction(&cfg, c, &staged, &expected, ctx).await,
                None => Err(ProcessorError::Config("no database connection".into())),
            };
            (client, staged, result)
        });
        InFlight { task, keys }
    }

    /// Waits for the transaction task, takes the connection back, and on success advances
    /// the offsets the fence expects and tells Kafka, the metrics and the alert sinks.
    fn finish(&mut self, job: InFlight) -> Result<(), ProcessorError> {
        let (client, staged, result) = self
            .handle
            .block_on(job.task)
            .map_err(|e| ProcessorError::Config(format!("transaction task failed: {e}")))?;
        self.client = client;
        let done = result?;
        let cfg = self.cfg;
        let records = staged.records;
        let rejected = staged.rejected.len();
        let applied = staged.fresh.len();
        let late = staged.out.late.len();
        let duplicates = records.saturating_sub(rejected + applied);
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &staged.ends {
            if let Some(part) = self.parts.get_mut(p) {
                part.stored_next = Some(*next);
            }
            let _ = tpl.add_partition_offset(&cfg.topic, *p, Offset::Offset(*next));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit to kafka failed (PostgreSQL is authoritative)");
        }
        if done.closed_until.is_some() {
            self.alerts_closed_until = done.closed_until.max(self.alerts_closed_until);
        }
        self.totals.batches += 1;
        self.totals.records += records as i64;
        self.totals.events += applied as i64;
        self.totals.rejected += rejected as i64;
        self.totals.duplicates += duplicates as i64;
        self.totals.late += late as i64;
        let m = &self.metrics;
        m.commit_seconds.observe(done.phases[2].as_secs_f64());
        m.batch_seconds
            .observe(staged.first_polled.elapsed().as_secs_f64());
        m.batches.inc();
        m.batch_size.observe(records as f64);
        m.records_in.inc_by(records as u64);
        m.events_valid.inc_by(applied as u64);
        m.duplicates.inc_by(duplicates as u64);
        m.late.inc_by(late as u64);
        for r in &staged.rejected {
            m.rejected
                .get_or_create(&ReasonLabel {
                    reason: r.reason.to_string(),
                })
                .inc();
        }
        m.alerts.inc_by(done.alerts.len() as u64);
        m.last_commit
            .set(Utc::now().timestamp_micros() as f64 / 1e6);
        m.open_sessions.set(
            self.parts
                .values()
                .map(|p| p.state.open_sessions() as i64)
                .sum(),
        );
        for a in &done.alerts {
            for s in &mut self.sinks {
                s.raise(a);
            }
        }
        tracing::debug!(
            records,
            applied,
            rejected,
            duplicates,
            sessions = staged.out.sessions.len(),
            probe_ms = staged.probe_time.as_millis() as u64,
            apply_ms = staged.apply_time.as_millis() as u64,
            ledger_ms = done.phases[0].as_millis() as u64,
            write_ms = (done.phases[1] - done.phases[0]).as_millis() as u64,
            tx_ms = done.phases[2].as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// After an abandoned batch: reload every assigned partition from PostgreSQL and seek
    /// the consumer back to the stored offsets.
    fn reset(&mut self, stop: &AtomicBool) -> Result<(), ProcessorError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            // The batch connection too may have died with the server.
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                match self.handle.block_on(writer_connection(self.cfg)) {
                    Ok(c) => self.client = Some(c),
                    Err(e) if e.is_retriable() && !stop.load(Ordering::Relaxed) => {
                        tracing::warn!(error = %e, ?backoff, "reconnecting to PostgreSQL failed; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let assigned: Vec<i32> = self
                .consumer
                .assignment()?
                .elements_for_topic(&self.cfg.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            match self.consumer.context().load(&assigned) {
                Ok(loaded) => {
                    self.parts.clear();
                    for (p, sp) in loaded {
                        let offset = sp.next_offset.map_or(Offset::Beginning, Offset::Offset);
                        if let Err(e) =
                            self.consumer
                                .seek(&self.cfg.topic, p, offset, Duration::from_secs(10))
                        {
                            tracing::warn!(partition = p, error = %e, "seek failed");
                        }
                        self.parts.insert(
                            p,
                            Part {
                                stored_next: sp.next_offset,
                                state: sp.state,
                            },
                        );
                    }
                    return Ok(());
                }
                Err(e) if e.is_retriable() && !stop.load(Ordering::Relaxed) => {
                    tracing::warn!(error = %e, ?backoff, "reloading state failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Raises alerts for windows closed since the last evaluation, in its own transaction.
    fn evaluate_alerts(&mut self) -> Result<(), ProcessorError> {
        let cfg = self.cfg;
        let since = self.alerts_closed_until;
        let count = self.partition_count;
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let (alerts, gwm) = self.handle.clone().block_on(async {
            let tx = client.transaction().await?;
            let gwm = store::global_watermark(&tx, &cfg.group, &cfg.topic, count).await?;
            let mut alerts = Vec::new();
            if let Some(g) = gwm.filter(|g| since.is_none_or(|c| *g > c)) {
                alerts = store::raise_alerts(&tx, g, since, cfg.alert).await?;
            }
            tx.commit().await?;
            Ok::<_, ProcessorError>((alerts, gwm))
        })?;
        if gwm.is_some() {
            self.alerts_closed_until = gwm.max(since);
        }
        self.metrics.alerts.inc_by(alerts.len() as u64);
        for a in &alerts {
            for s in &mut self.sinks {
                s.raise(a);
            }
        }
        Ok(())
    }

    fn update_lag(&self) {
        for (p, part) in &self.parts {
            if let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(&self.cfg.topic, *p, Duration::from_secs(1))
            {
                let lag = high - part.stored_next.unwrap_or(0);
                self.metrics
                    .lag
                    .get_or_create(&PartitionLabel { partition: *p })
                    .set(lag.max(0));
            }
        }
    }

    /// Liveness for dashboards and `status` while no batch commits (idle input).
    fn touch_heartbeat(&self) {
        let Some(client) = &self.client else { return };
        let touch =
            store::touch_heartbeat(client, &self.cfg.instance_id, &self.cfg.group, self.started);
        if let Err(e) = self.handle.block_on(touch) {
            tracing::debug!(error = %e, "heartbeat failed; the next commit writes it");
        }
    }

    fn prune(&self) {
        let horizon = EventTime::now()
            .add_micros(-(self.cfg.max_event_age.as_micros() as i64) - 3_600_000_000);
        let Some(client) = &self.client else { return };
        match self.handle.block_on(store::prune_seen(client, horizon)) {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned dedup ledger beyond the horizon"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning the dedup ledger failed"),
        }
    }
}

/// The connection batches are written on. Unless `durable_commits`, it commits
/// asynchronously (`synchronous_commit = off`): a PostgreSQL crash can then lose the last
/// few hundred milliseconds of committed batches, but each batch's results and offsets are
/// one transaction, so they are lost together; the dropped connection makes the processor
/// reload state and offsets and process those records again. Exactly-once holds; only
/// side effects outside PostgreSQL (dead letters, alert notifications, which are
/// at-least-once anyway) may repeat. Not waiting for the WAL flush is worth ~15% throughput.
async fn writer_connection(cfg: &ProcessorConfig) -> Result<Client, ProcessorError> {
    let client = clickstream_db::connect(&cfg.database_url).await?;
    if !cfg.durable_commits {
        client.batch_execute("SET synchronous_commit = off").await?;
    }
    Ok(client)
}

/// A polled batch, validated and deduplicated, its rejects already dead-lettered.
struct Prepared {
    valid: Vec<SourcedEvent>,
    rejected: Vec<Rejected>,
    /// Next offset per partition after this batch.
    ends: HashMap<i32, i64>,
    /// Every record's position (valid, rejected or duplicate).
    offsets: Vec<(i32, i64)>,
    first_polled: Instant,
}

impl Prepared {
    /// Keeps only records of partitions we own that are not yet committed (after a
    /// rebalance or a seek back, the consumer can hand over records of either kind).
    fn retain_owned(&mut self, parts: &HashMap<i32, Part>) {
        let keep = |p: i32, o: i64| {
            parts
                .get(&p)
                .is_some_and(|x| x.stored_next.is_none_or(|n| o >= n))
        };
        self.valid.retain(|e| keep(e.partition, e.offset));
        self.rejected.retain(|r| keep(r.partition, r.offset));
        self.offsets.retain(|&(p, o)| keep(p, o));
        self.ends.retain(|&p, end| keep(p, *end - 1));
    }
}

/// A prepared batch whose operators have run: what its transaction writes.
struct Staged {
    /// Distinct valid events not seen before (for the ledger and the audit table).
    fresh: Vec<SourcedEvent>,
    out: BatchOutput,
    positions: Vec<Position>,
    rejected: Vec<Rejected>,
    /// Next offset per partition after this batch.
    ends: HashMap<i32, i64>,
    /// Records polled (valid, rejected or duplicate).
    records: usize,
    first_polled: Instant,
    /// Keys of `fresh`, for the next batch's probe while this one is in flight.
    keys: HashSet<EventKey>,
    probe_time: Duration,
    apply_time: Duration,
}

/// A batch transaction running on the runtime.
struct InFlight {
    #[allow(clippy::type_complexity)]
    task: tokio::task::JoinHandle<(Option<Client>, Staged, Result<TxDone, ProcessorError>)>,
    /// The batch's ledger keys, not visible to other connections before it commits.
    keys: HashSet<EventKey>,
}

#[derive(Clone, Copy)]
struct TxContext {
    partition_count: i32,
    alerts_since: Option<EventTime>,
    totals: Heartbeat,
    started: chrono::DateTime<Utc>,
}

/// What a committed transaction did.
struct TxDone {
    alerts: Vec<store::Alert>,
    closed_until: Option<EventTime>,
    /// Elapsed at: ledger recorded, outputs written, committed.
    phases: [Duration; 3],
}

/// Retriable errors abandon the batch (`Ok`); any other stops the processor.
fn fatal_or(e: ProcessorError) -> Result<ProcessorError, ProcessorError> {
    if e.is_retriable() {
        Ok(e)
    } else {
        Err(e)
    }
}

/// One batch, one transaction: fence, dedup ledger, every output, offsets, alerts,
/// heartbeat. Nothing is computed here but the alerts (SQL over the committed windows).
async fn run_transaction(
    cfg: &ProcessorConfig,
    client: &mut Client,
    staged: &Staged,
    expected: &HashMap<i32, Option<i64>>,
    ctx: TxContext,
) -> Result<TxDone, ProcessorError> {
    let t0 = Instant::now();
    let mut phases = [Duration::ZERO; 3];
    let tx = client.transaction().await?;
    store::fence(&tx, &cfg.group, &cfg.topic, expected).await?;
    store::record_keys(&tx, &staged.fresh).await?;
    phases[0] = t0.elapsed();
    let out = &staged.out;
    if cfg.audit_events {
        store::copy_events(&tx, &staged.fresh, &out.late_flags).await?;
    }
    store::write_outputs(&tx, out, &cfg.engine).await?;
    store::write_rejected(&tx, &cfg.topic, &staged.rejected).await?;
    phases[1] = t0.elapsed();
    store::write_positions(&tx, &cfg.group, &cfg.topic, &staged.positions).await?;
    let gwm = store::global_watermark(&tx, &cfg.group, &cfg.topic, ctx.partition_count).await?;
    let mut alerts = Vec::new();
    if let Some(g) = gwm.filter(|g| ctx.alerts_since.is_none_or(|c| *g > c)) {
        alerts = store::raise_alerts(&tx, g, ctx.alerts_since, cfg.alert).await?;
    }
    let applied = staged.fresh.len();
    let rejected = staged.rejected.len();
    let mut hb = ctx.totals;
    hb.batches += 1;
    hb.records += staged.records as i64;
    hb.events += applied as i64;
    hb.rejected += rejected as i64;
    hb.duplicates += staged.records.saturating_sub(rejected + applied) as i64;
    hb.late += out.late.len() as i64;
    store::write_heartbeat(&tx, &cfg.instance_id, &cfg.group, ctx.started, &hb).await?;
    tx.commit().await?;
    phases[2] = t0.elapsed();
    Ok(TxDone {
        alerts,
        closed_until: gwm,
        phases,
    })
}
