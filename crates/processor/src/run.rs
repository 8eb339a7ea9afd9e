//! The micro-batch loop: poll up to `batch_max_records` or `batch_max_wait`, validate,
//! dead-letter the rejects, drop re-sends (dedup ledger probe), run the operators, then
//! one PostgreSQL transaction writes everything, while the loop prepares the next batch.
//!
//! Runs on a dedicated thread (librdkafka's consumer is blocking); PostgreSQL calls go
//! through the runtime handle. The parts: [`consumer`] (Kafka setup, polling, resets),
//! [`batch`] (one batch from records to a committed transaction), [`housekeeping`]
//! (alerts, lag, heartbeat, pruning between batches); this module holds the loop and how
//! it meets failure (see [`crate::retry`]).

mod batch;
mod consumer;
mod housekeeping;
mod recent_keys;
mod recovery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clickstream_model::{ContractLimits, EventTime, EventType};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::runtime::Handle;
use tokio_postgres::Client;

use crate::alerts::AlertSink;
use crate::engine::{EngineConfig, PartitionState};
use crate::kafka::{DeadLetters, RestoringContext};
use crate::metrics::Metrics;
use crate::retry::{FailedBatch, Splitter, Stall};
use crate::store::{self, AlertRule, Heartbeat};
use crate::ProcessorError;
use batch::InFlight;

pub use batch::UNSTORABLE;

/// The first wait after a failure; it doubles per consecutive failure up to
/// [`ProcessorConfig::retry_max_backoff`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// How often day partitions are created ahead and dropped by retention...
const UPKEEP_EVERY: Duration = Duration::from_secs(600);
/// ... and how soon a failed round is tried again.
const UPKEEP_RETRY: Duration = Duration::from_secs(60);

/// Settings of one processor instance.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Bootstrap servers and every Kafka client property (TLS, SASL, tuning): connection
    /// properties reach the consumer, the dead-letter producer and the admin client,
    /// tuning only the consumer.
    pub kafka: clickstream_kafka::KafkaConnection,
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
    /// The contract's bounds (shared with the lake writer).
    pub limits: ContractLimits,
    /// How long event keys are remembered and each table family keeps its days.
    pub retention: crate::retention::Retention,
    /// The clock event times are judged by (see [`crate::clock`]).
    pub clock: crate::clock::ClockMode,
    /// Keep every valid distinct event in `analytics.events`.
    pub audit_events: bool,
    /// Wait for each batch's WAL flush before the next batch (PostgreSQL's
    /// `synchronous_commit`); see [`writer_connection`].
    pub durable_commits: bool,
    /// Kafka group session timeout.
    pub session_timeout: Duration,
    /// This instance's name in heartbeats.
    pub instance_id: String,
    /// Longest wait between attempts while failing (the wait doubles per failure).
    pub retry_max_backoff: Duration,
    /// A caught-up partition without records for this long follows the processing clock
    /// (zero: never).
    pub idle_timeout: Duration,
}

/// What a run did, for the caller's log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunReport {
    /// Counters at the end.
    pub totals: Heartbeat,
}

/// A polled batch: each record's position, with all keys and values copied into one
/// buffer (two allocations per record showed in the profile).
#[derive(Default)]
struct Polled {
    records: Vec<Owned>,
    bytes: Vec<u8>,
}

/// One record of a [`Polled`] batch; its key and value are ranges of the batch's buffer.
struct Owned {
    partition: i32,
    offset: i64,
    key: Option<std::ops::Range<usize>>,
    payload: std::ops::Range<usize>,
}

impl Polled {
    fn push(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        let key = key.map(|k| self.append(k));
        let payload = self.append(payload);
        self.records.push(Owned {
            partition,
            offset,
            key,
            payload,
        });
    }

    fn append(&mut self, b: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    fn key(&self, r: &Owned) -> Option<&[u8]> {
        r.key.clone().map(|k| &self.bytes[k])
    }

    fn payload(&self, r: &Owned) -> &[u8] {
        &self.bytes[r.payload.clone()]
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

struct Part {
    /// Next offset stored in PostgreSQL (what the fence expects).
    stored_next: Option<i64>,
    state: PartitionState,
    /// When a record of this partition was last staged (or it was assigned).
    last_record: Instant,
    /// The partition's log start and end offsets, as last fetched.
    log: Option<(i64, i64)>,
    /// No record received since it was (re)loaded: the first must be at `stored_next`.
    resuming: bool,
}

impl Part {
    fn new(stored_next: Option<i64>, state: PartitionState) -> Self {
        Part {
            stored_next,
            state,
            last_record: Instant::now(),
            log: None,
            resuming: true,
        }
    }

    /// Caught up with the log: nothing to read that is not committed.
    fn caught_up(&self) -> bool {
        self.log
            .is_some_and(|(low, high)| self.stored_next.map_or(high == low, |n| n >= high))
    }
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
    /// The processing clock.
    clock: crate::clock::Clock,
    /// The processing clock when the last committed batch was staged: retention on the
    /// event-time clock goes by it, never dropping days a staged batch still writes to.
    committed_clock: Option<EventTime>,
    /// `hourly_users` rows committed for the newest hours, so a batch does not send them
    /// again (most of a batch's rows: the user was active earlier in the hour).
    hourly_seen: HourlySeen,
    /// Ledger keys this instance staged lately: most keys of a batch need no probe.
    recent_keys: recent_keys::RecentKeys,
    /// The last polled batch's buffer, emptied, for the next one: a new buffer per batch
    /// had its pages faulted in (and zeroed by the kernel) every time.
    spare_bytes: Vec<u8>,
    /// Days every partitioned table has partitions for (see [`crate::retention`]).
    ready_days: Option<(chrono::NaiveDate, chrono::NaiveDate)>,
    dlq: DeadLetters,
    metrics: Arc<Metrics>,
    sinks: Vec<Box<dyn AlertSink>>,
    parts: HashMap<i32, Part>,
    partition_count: i32,
    alerts_closed_until: Option<EventTime>,
    totals: Heartbeat,
    started: chrono::DateTime<Utc>,
    /// Failures since the last commit.
    stall: Stall,
    /// Batch size control for isolating records PostgreSQL refuses.
    splitter: Splitter,
    /// The last batch whose transaction failed, for the splitter.
    last_failed: Option<FailedBatch>,
    /// Resume gaps seen, by (partition, expected offset), and how often.
    resume_gaps: HashMap<(i32, i64), u32>,
    /// Since when the dead-letter topic has been unreachable (rejects are then committed
    /// as pending and delivered by housekeeping).
    dlq_down: Option<chrono::DateTime<Utc>>,
    /// When housekeeping next tries to deliver pending dead letters, and the wait after.
    dlq_retry: (Instant, Duration),
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
    let client = connect_patiently(cfg, &handle, &stop)?;
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
    let consumer = consumer::create_consumer(cfg, ctx)?;
    let partition_count = consumer::check_topics(cfg, &consumer, &handle)?;
    consumer.subscribe(&[&cfg.topic])?;
    let dlq = DeadLetters::new(cfg)?;
    let mut l = Loop {
        cfg,
        shared: Arc::new(cfg.clone()),
        handle,
        client: Some(client),
        probe: None,
        consumer,
        clock: crate::clock::Clock::new(cfg.clock),
        ready_days: None,
        committed_clock: None,
        hourly_seen: HourlySeen::default(),
        spare_bytes: Vec::new(),
        recent_keys: Default::default(),
        dlq,
        metrics,
        sinks,
        parts: HashMap::new(),
        partition_count,
        alerts_closed_until: None,
        totals: Heartbeat::default(),
        started: Utc::now(),
        stall: Stall::default(),
        splitter: Splitter::new(cfg.batch_max_records),
        last_failed: None,
        resume_gaps: HashMap::new(),
        dlq_down: None,
        // Right away: a previous run may have left pending dead letters.
        dlq_retry: (Instant::now(), housekeeping::DLQ_FIRST_BACKOFF),
    };
    // Every day an accepted event can reach needs its partitions before the first batch.
    l.upkeep_patiently(&stop)?;
    if cfg.clock == crate::clock::ClockMode::EventTime && partition_count > 1 {
        tracing::warn!(
            partitions = partition_count,
            "one event-time clock for several partitions: a backlog's partitions are read unevenly, \
             so events of a partition far behind the others may be judged too old; replay one \
             partition per instance"
        );
    }
    tracing::info!(topic = %cfg.topic, partitions = partition_count, group = %cfg.group, "processor started");
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let mut next_upkeep = Instant::now();
    // Also when the processing clock (or, for retention on the event-time clock, the clock
    // of the last commit) enters a new day: soon after midnight, or every few seconds of a
    // replay.
    let upkeep_days = |l: &Loop<'_>| {
        (
            l.clock.now().date_string(),
            l.committed_clock.map(|c| c.date_string()),
        )
    };
    let mut upkept_day = upkeep_days(&l);
    let mut last_idle = Instant::now();
    let mut last_metadata = Instant::now();
    // Pipelined: while batch N's transaction runs on the runtime, this thread polls,
    // validates and dead-letters batch N+1, probes the dedup ledger for it and applies the
    // operators, so batch N+1's transaction only writes. Operator state stays on this
    // thread; a failed transaction reloads it from PostgreSQL (it is only ever a cache).
    let mut inflight: Option<InFlight> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let c0 = Instant::now();
        let polled = if stopping {
            Polled::default()
        } else {
            l.poll_batch(&stop)?
        };
        let cp = Instant::now();
        // A retriable failure before the transaction (a probe that lost its connection, a
        // resume gap) abandons the batch like a failed transaction.
        let mut abandoned = None;
        let mut prepared = if polled.is_empty() {
            l.spare_bytes = polled.bytes;
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
            if let Err(e) = l.check_resume(&p) {
                abandoned = Some(fatal_or(e)?);
            } else if !p.ends.is_empty() {
                // Dead letters were queued in `prepare`; their acknowledgements arrive
                // while the batch is staged.
                let pending = inflight.as_ref().map(|j| &j.keys);
                match l.stage(p, pending) {
                    Ok(mut s) => {
                        s.confirm_dead_letters(&mut l);
                        staged = Some(s);
                    }
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
            // The staged batch was applied to state that is reloaded now; it is read again.
            staged = None;
            l.recover(&e, &stop)?;
            if e.is_missing_partition() {
                next_upkeep = Instant::now();
            }
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
            l.deliver_alerts();
            l.deliver_pending_dead_letters();
            last_lag = Instant::now();
        }
        if last_metadata.elapsed() > Duration::from_secs(30) {
            l.refresh_partition_count();
            last_metadata = Instant::now();
        }
        let day = upkeep_days(&l);
        if Instant::now() >= next_upkeep || day != upkept_day {
            upkept_day = day;
            next_upkeep = match l.upkeep() {
                Ok(()) => Instant::now() + UPKEEP_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?UPKEEP_RETRY, "maintaining day partitions failed");
                    Instant::now() + UPKEEP_RETRY
                }
            };
        }
        if staged.is_none() && !stopping && last_idle.elapsed() > Duration::from_secs(2) {
            // Nothing to write: let idle partitions' watermarks follow the clock.
            staged = l.stage_idle();
            last_idle = Instant::now();
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

/// The connection batches are written on. Unless `durable_commits`, it commits
/// asynchronously (`synchronous_commit = off`): a PostgreSQL crash can then lose the last
/// few hundred milliseconds of committed batches, but each batch's results and offsets are
/// one transaction, so they are lost together; the dropped connection makes the processor
/// reload state and offsets and process those records again. Exactly-once holds; only
/// side effects outside PostgreSQL (dead letters, alert notifications, which are
/// at-least-once anyway) may repeat. Not waiting for the WAL flush is worth ~15% throughput.
async fn writer_connection(cfg: &ProcessorConfig) -> Result<Client, ProcessorError> {
    let client = batch_connection(cfg).await?;
    if !cfg.durable_commits {
        client.batch_execute("SET synchronous_commit = off").await?;
    }
    Ok(client)
}

/// A connection for per-batch statements (the writes, the ledger probe). JIT is off: the
/// statements' row estimates (a batch of arrays) cross `jit_above_cost`, and compiling them
/// each batch cost more than it saved (LLVM showed in the profile).
pub(crate) async fn batch_connection(cfg: &ProcessorConfig) -> Result<Client, ProcessorError> {
    let client = clickstream_db::connect(&cfg.database_url).await?;
    client.batch_execute("SET jit = off").await?;
    Ok(client)
}

/// The first connection: a database that is still starting (or restarting) is waited
/// for, with backoff and a warning per attempt, for up to two minutes; a wrong password or
/// URL fails at once.
fn connect_patiently(
    cfg: &ProcessorConfig,
    handle: &Handle,
    stop: &AtomicBool,
) -> Result<Client, ProcessorError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stall = Stall::default();
    loop {
        match handle.block_on(writer_connection(cfg)) {
            Ok(c) => return Ok(c),
            Err(e)
                if e.is_retriable()
                    && e.sqlstate().is_none()
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed) =>
            {
                stall.failed(&e.to_string());
                let wait = stall.backoff(FIRST_BACKOFF, Duration::from_secs(10));
                tracing::warn!(error = %e, retry_in = ?wait, "PostgreSQL not reachable yet; retrying");
                std::thread::sleep(wait);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Retriable errors abandon the batch (`Ok`); any other stops the processor.
fn fatal_or(e: ProcessorError) -> Result<ProcessorError, ProcessorError> {
    if e.is_retriable() {
        Ok(e)
    } else {
        Err(e)
    }
}

/// The `(hour, type, user)` rows of `analytics.hourly_users` this instance has committed
/// for the newest hour it committed (not after the clock's) and the one before. Only rows of
/// committed batches enter, and the cache is emptied whenever state is reloaded
/// ([`Loop::reset`]): with asynchronous commits a PostgreSQL crash can lose batches that
/// had committed, and their records are then processed again and must write their rows
/// again. A row not found here is simply sent (`ON CONFLICT DO NOTHING`), so the cache
/// only saves work; other instances have their own.
#[derive(Default)]
struct HourlySeen {
    hours: std::collections::BTreeMap<i64, foldhash::HashSet<(EventType, uuid::Uuid)>>,
    rows: usize,
}

impl HourlySeen {
    /// Most rows kept (~40 bytes each): past it, new rows are not remembered.
    const MAX_ROWS: usize = 1_000_000;

    /// Drops the rows of `batch` that are known to be committed.
    fn forget_known(&self, batch: &mut foldhash::HashSet<(i64, EventType, uuid::Uuid)>) {
        if self.rows == 0 {
            return;
        }
        batch.retain(|(h, t, u)| !self.hours.get(h).is_some_and(|s| s.contains(&(*t, *u))));
    }

    /// Remembers the rows of a committed batch in its newest hour and the one before
    /// (a replay of older traffic is cached too), forgetting older hours. Rows stamped
    /// after the clock's current hour (`now`) are left out: one future-stamped event must
    /// not move the window away from the current hour.
    fn committed(
        &mut self,
        rows: &foldhash::HashSet<(i64, EventType, uuid::Uuid)>,
        now: EventTime,
    ) {
        let hour = crate::engine::HOUR;
        let current = now.as_micros().div_euclid(hour) * hour;
        let newest = rows
            .iter()
            .map(|r| r.0)
            .filter(|h| *h <= current)
            .chain(self.hours.keys().next_back().copied())
            .max();
        let Some(newest) = newest else { return };
        let oldest = newest - hour;
        while let Some(entry) = self.hours.first_entry() {
            if *entry.key() >= oldest {
                break;
            }
            self.rows -= entry.remove().len();
        }
        for &(h, t, u) in rows {
            if self.rows >= Self::MAX_ROWS {
                break;
            }
            if (oldest..=newest).contains(&h) && self.hours.entry(h).or_default().insert((t, u)) {
                self.rows += 1;
            }
        }
    }
}
