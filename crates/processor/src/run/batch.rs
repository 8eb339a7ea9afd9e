//! One micro-batch from polled records to a committed transaction: validate and
//! dead-letter ([`Loop::prepare`]), probe the dedup ledger and run the operators
//! ([`Loop::stage`]), write everything in one transaction on the runtime
//! ([`Loop::start_transaction`], [`run_transaction`]), then account for it
//! ([`Loop::finish`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use clickstream_model::{parse_event, printable, EventKey, EventTime};
use foldhash::{HashSet, HashSetExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::Client;

use super::{Loop, Part, Polled, ProcessorConfig};
use crate::engine::{dedup_batch, BatchOutput, SourcedEvent};
use crate::metrics::ReasonLabel;
use crate::retry::FailedBatch;
use crate::store::{self, Heartbeat, Position, Rejected};
use crate::ProcessorError;

/// How long a batch waits for its dead letters' acknowledgements before it commits them
/// as pending (longer than the producer's 10 s message timeout).
const DLQ_CONFIRM_TIMEOUT: Duration = Duration::from_secs(12);

/// Reason code of a valid record PostgreSQL refused to store (see [`crate::retry`]).
pub const UNSTORABLE: &str = "unstorable";

impl Loop<'_> {
    /// Validates and deduplicates a polled batch and dead-letters its rejects (before any
    /// commit that covers them, so a crash can repeat a dead letter but never lose one).
    pub(super) fn prepare(&mut self, batch: Polled) -> Result<Prepared, ProcessorError> {
        if self.clock.unset() {
            self.seed_clock(&batch);
        }
        let policy = self.clock.policy(&self.cfg.limits);
        let mut valid = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let first_polled = Instant::now();
        for r in &batch.records {
            ends.insert(r.partition, r.offset + 1);
            let payload = batch.payload(r);
            let reject = |reason: &'static str, detail: String| Rejected {
                partition: r.partition,
                offset: r.offset,
                reason,
                detail,
                key: batch.key(r).map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                dlq_pending: false,
            };
            if let Some(error) = self.splitter.unstorable((r.partition, r.offset)) {
                rejected.push(reject(
                    UNSTORABLE,
                    format!("PostgreSQL refused to store it: {error}"),
                ));
                continue;
            }
            match parse_event(payload, &policy) {
                Ok(event) => valid.push(SourcedEvent {
                    event,
                    partition: r.partition,
                    offset: r.offset,
                }),
                Err(reason) => rejected.push(reject(reason.code(), reason.to_string())),
            }
        }
        let offsets: Vec<(i32, i64)> = batch
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        let mut bytes = batch.bytes;
        bytes.clear();
        self.spare_bytes = bytes;
        if self.clock.follows_events() {
            // The next batch is judged by this one's median time: a few skewed or bad
            // timestamps cannot move it.
            if let Some(t) = median(valid.iter().map(|e| e.event.timestamp).collect()) {
                self.clock.advance(t);
            }
        }
        let (valid, _) = dedup_batch(valid);
        if self.dlq_down.is_none() && !rejected.is_empty() {
            if let Err(e) = self.dlq.send_all(&rejected) {
                self.dead_letters_failed(&e);
            }
        }
        if self.dlq_down.is_some() {
            for r in &mut rejected {
                r.dlq_pending = true;
            }
        }
        Ok(Prepared {
            judged_at: policy.now,
            valid,
            rejected,
            ends,
            offsets,
            first_polled,
        })
    }

    /// Starts an event-time clock at the median of the batch's event times, so neither an
    /// ancient nor a far-future timestamp at the head of a replay sets it.
    fn seed_clock(&self, batch: &Polled) {
        let policy = self.clock.seed_policy(&self.cfg.limits);
        let times = batch
            .records
            .iter()
            .filter_map(|r| parse_event(batch.payload(r), &policy).ok())
            .map(|e| e.timestamp)
            .collect();
        if let Some(t) = median(times) {
            tracing::info!(clock = %t, "event-time clock starts");
            self.clock.advance(t);
        }
    }

    /// Finds the batch's re-sends of earlier events (the ledger's committed keys, plus the
    /// in-flight batch's `pending` keys, which it cannot see yet) and applies the operators
    /// to the rest, advancing the partitions' state.
    pub(super) fn stage(
        &mut self,
        p: Prepared,
        pending: Option<&HashSet<EventKey>>,
    ) -> Result<Staged, ProcessorError> {
        let t0 = Instant::now();
        if self.probe.as_ref().is_none_or(|c| c.is_closed()) {
            let probe = self.handle.block_on(super::batch_connection(self.cfg))?;
            // See `store::known_keys`: the probe must not be planned for its literal array.
            self.handle
                .block_on(probe.batch_execute("SET plan_cache_mode = force_generic_plan"))?;
            self.probe = Some(probe);
        }
        let Some(probe) = self.probe.as_ref() else {
            return Err(ProcessorError::Internal("no probe connection".into()));
        };
        // The same cut-off for the lookup and the recording (`Staged::ledger_from`).
        let horizon = self.cfg.retention.dedup_horizon.as_micros() as i64;
        // From the clock the batch was validated by: an event-time clock has moved since.
        let ledger_from = p.judged_at.add_micros(-horizon);
        // What the set covers reaches an hour past the accepted future; it starts afresh
        // ten minutes before the clock gets there.
        let future = self.clock.policy(&self.cfg.limits).max_future_micros;
        if !self
            .recent_keys
            .covers_until(p.judged_at.add_micros(future + 10 * 60_000_000))
        {
            let until = p.judged_at.add_micros(future + 60 * 60_000_000);
            let newest = self
                .handle
                .block_on(store::newest_ledger_key(probe, until))?;
            self.recent_keys.start(newest, until);
            if let Some(pending) = pending {
                self.recent_keys.insert(pending);
            }
        }
        let recent = &self.recent_keys;
        let probe_all = recent.is_suspended();
        let mut known =
            self.handle
                .block_on(store::known_keys(probe, &p.valid, ledger_from, |k| {
                    probe_all || !recent.is_unseen(k)
                }))?;
        if let Some(pending) = pending {
            known.extend(
                p.valid
                    .iter()
                    .map(|e| e.event.key())
                    .filter(|k| pending.contains(k)),
            );
        }
        let mut fresh = p.valid;
        if !known.is_empty() {
            fresh.retain(|e| !known.contains(&e.event.key()));
        }
        let rejected_at = store::ts(self.clock.now());
        self.ready_batch_days(&fresh, !p.rejected.is_empty(), rejected_at)?;
        let probed = t0.elapsed();
        let engine = &self.cfg.engine;
        let now = self.clock.now();
        let mut out = BatchOutput::default();
        for e in &fresh {
            if let Some(part) = self.parts.get_mut(&e.partition) {
                part.state.apply(e, engine, now, &mut out);
            }
        }
        let mut positions = Vec::with_capacity(p.ends.len());
        for (partition, next) in &p.ends {
            if let Some(part) = self.parts.get_mut(partition) {
                part.last_record = Instant::now();
                part.state.finish_batch(engine, &mut out);
                positions.push(Position {
                    partition: *partition,
                    next_offset: *next,
                    watermark: part.state.watermark,
                    max_event_time: part.state.max_event_time,
                    idle: false,
                });
            }
        }
        self.hourly_seen.forget_known(&mut out.hourly_users);
        let keys: HashSet<EventKey> = fresh.iter().map(|e| e.event.key()).collect();
        self.recent_keys.insert(&keys);
        self.recent_keys.staged_until(&p.ends);
        let records = p.offsets.len();
        let counts = Heartbeat {
            batches: 1,
            records: records as i64,
            events: fresh.len() as i64,
            rejected: p.rejected.len() as i64,
            duplicates: records.saturating_sub(p.rejected.len() + fresh.len()) as i64,
            late: out.late.len() as i64,
        };
        Ok(Staged {
            fresh,
            out,
            positions,
            rejected: p.rejected,
            ends: p.ends,
            counts,
            single: (records == 1).then(|| p.offsets[0]),
            first_polled: p.first_polled,
            keys,
            ledger_from,
            rejected_at,
            clock: self.clock.now(),
            probe_time: probed,
            apply_time: t0.elapsed() - probed,
        })
    }

    /// Makes sure every day the batch writes to has its partitions: the days of its
    /// events (and of the windows they fall in) and of its rejections. Normally within the
    /// days housekeeping keeps ready; a replay or a jumping clock creates more here, on the
    /// probe connection (the batch connection may be busy with the previous batch). Days,
    /// not a range: one odd timestamp must not ask for every day in between.
    fn ready_batch_days(
        &mut self,
        fresh: &[SourcedEvent],
        rejections: bool,
        rejected_at: chrono::DateTime<Utc>,
    ) -> Result<(), ProcessorError> {
        const DAY: i64 = store::DAY;
        let window = self.cfg.engine.window_micros;
        // Day numbers first (integer division per event, consecutive repeats skipped),
        // dates only for the few distinct ones.
        let mut numbers = std::collections::BTreeSet::new();
        let mut last = None;
        for e in fresh {
            let t = e.event.timestamp.as_micros();
            // The ledger keys by the client's corrected time when there is one.
            let key = e.event.key().timestamp.as_micros();
            for n in [
                (t - window).div_euclid(DAY),
                t.div_euclid(DAY),
                key.div_euclid(DAY),
            ] {
                if last != Some(n) {
                    numbers.insert(n);
                    last = Some(n);
                }
            }
        }
        let day = |n: i64| {
            chrono::DateTime::from_timestamp_micros(n.saturating_mul(DAY))
                .unwrap_or_default()
                .date_naive()
        };
        let ready = self.ready_days;
        let mut missing: std::collections::BTreeSet<chrono::NaiveDate> = numbers
            .into_iter()
            .map(day)
            .chain(rejections.then_some(rejected_at.date_naive()))
            .filter(|d| !ready.is_some_and(|(a, b)| a <= *d && *d <= b))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let Some(probe) = self.probe.as_ref() else {
            return Err(ProcessorError::Internal("no probe connection".into()));
        };
        let mut created = 0;
        for d in &missing {
            created += self
                .handle
                .block_on(crate::retention::create_days(probe, *d, *d))?;
        }
        if created > 0 {
            self.metrics.partitions_created.inc_by(created);
            tracing::info!(created, days = missing.len(), first = %missing.first().copied().unwrap_or_default(), "day partitions created for a batch outside the ready days");
        }
        // The ready range grows only across days that are contiguous with it.
        if let Some((mut a, mut b)) = self.ready_days {
            while missing.remove(&(a - chrono::Days::new(1))) {
                a = a - chrono::Days::new(1);
            }
            while missing.remove(&(b + chrono::Days::new(1))) {
                b = b + chrono::Days::new(1);
            }
            self.ready_days = Some((a, b));
        }
        Ok(())
    }

    /// Moves the connection and the staged batch into a task that runs its transaction.
    pub(super) fn start_transaction(&mut self, staged: Staged) -> InFlight {
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
            totals: self.totals.plus(&staged.counts),
            started: self.started,
        };
        let mut staged = staged;
        let keys = std::mem::take(&mut staged.keys);
        let task = self.handle.spawn(async move {
            let result = match client.as_mut() {
                Some(c) => run_transaction(&cfg, c, &staged, &expected, ctx).await,
                None => Err(ProcessorError::Internal(
                    "a transaction started without the batch connection".into(),
                )),
            };
            (client, staged, result)
        });
        InFlight { task, keys }
    }

    /// Waits for the transaction task, takes the connection back, and on success advances
    /// the offsets the fence expects and tells Kafka, the metrics and the alert sinks. On
    /// failure, remembers what the batch was for [`crate::retry::Splitter`].
    pub(super) fn finish(&mut self, job: InFlight) -> Result<(), ProcessorError> {
        let (client, staged, result) = self
            .handle
            .block_on(job.task)
            .map_err(|e| ProcessorError::Internal(format!("transaction task failed: {e}")))?;
        self.client = client;
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                self.last_failed = Some(FailedBatch {
                    records: staged.counts.records as usize,
                    fresh: staged.fresh.len(),
                    single: staged.single,
                });
                return Err(e);
            }
        };
        let cfg = self.cfg;
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
        if staged.counts.records > 0 && self.clock.follows_events() {
            self.committed_clock = Some(staged.clock);
        }
        self.hourly_seen
            .committed(&staged.out.hourly_users, staged.clock);
        let c = staged.counts;
        self.totals = self.totals.plus(&c);
        self.splitter
            .committed(staged.ends.iter().map(|(p, n)| (*p, *n)));
        self.recovered();
        let m = &self.metrics;
        if c.records > 0 {
            m.commit_seconds.observe(done.phases[2].as_secs_f64());
            m.batch_seconds
                .observe(staged.first_polled.elapsed().as_secs_f64());
            m.batches.inc();
            m.batch_size.observe(c.records as f64);
        }
        m.future_events.inc_by(staged.out.future_events() as u64);
        m.records_in.inc_by(c.records as u64);
        m.events_valid.inc_by(c.events as u64);
        m.duplicates.inc_by(c.duplicates as u64);
        m.late.inc_by(c.late as u64);
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
        if !done.alerts.is_empty() {
            self.deliver_alerts();
        }
        tracing::debug!(
            records = c.records,
            applied = c.events,
            rejected = c.rejected,
            duplicates = c.duplicates,
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
}

/// A polled batch, validated and deduplicated, its rejects already dead-lettered.
pub(super) struct Prepared {
    /// The processing clock's time the batch was validated at.
    judged_at: EventTime,
    valid: Vec<SourcedEvent>,
    rejected: Vec<Rejected>,
    /// Next offset per partition after this batch.
    pub(super) ends: HashMap<i32, i64>,
    /// Every record's position (valid, rejected or duplicate).
    offsets: Vec<(i32, i64)>,
    first_polled: Instant,
}

impl Loop<'_> {
    /// The first record of a partition after an assignment or a reset must be the one at
    /// its stored offset: a seek that did not take effect would otherwise carry the
    /// consumer past records never applied. A gap is a lost seek (abandon and reset) unless
    /// Kafka's retention deleted those records (said loudly, then accepted) or it keeps
    /// coming back (offsets that hold no records, such as transaction markers).
    pub(super) fn check_resume(&mut self, p: &Prepared) -> Result<(), ProcessorError> {
        if !self.parts.values().any(|x| x.resuming) {
            return Ok(());
        }
        for &(partition, offset) in &p.offsets {
            let Some(part) = self.parts.get_mut(&partition) else {
                continue;
            };
            if !part.resuming {
                continue;
            }
            part.resuming = false;
            let Some(expected) = part.stored_next.filter(|n| offset > *n) else {
                continue;
            };
            let (low, _) = self
                .consumer
                .fetch_watermarks(&self.cfg.topic, partition, Duration::from_secs(5))
                .unwrap_or((0, 0));
            if low > expected {
                let lost = low.min(offset) - expected;
                self.metrics.lost_to_retention.inc_by(lost as u64);
                tracing::error!(
                    partition,
                    expected,
                    first = offset,
                    records = lost,
                    "records deleted by Kafka retention before they were processed"
                );
                continue;
            }
            let seen = self.resume_gaps.entry((partition, expected)).or_insert(0);
            *seen += 1;
            if *seen >= 3 {
                tracing::warn!(
                    partition,
                    expected,
                    first = offset,
                    "offsets hold no records (transaction markers?); going on"
                );
                continue;
            }
            return Err(ProcessorError::ResumeGap {
                partition,
                expected,
                found: offset,
            });
        }
        Ok(())
    }
}

impl Staged {
    /// A batch that only moves watermarks and closes sessions (idle partitions).
    pub(super) fn without_records(
        out: BatchOutput,
        positions: Vec<Position>,
        ends: HashMap<i32, i64>,
    ) -> Self {
        Staged {
            fresh: Vec::new(),
            out,
            positions,
            rejected: Vec::new(),
            ends,
            counts: Heartbeat::default(),
            single: None,
            first_polled: Instant::now(),
            keys: HashSet::new(),
            ledger_from: EventTime::now(),
            rejected_at: Utc::now(),
            clock: EventTime::now(),
            probe_time: Duration::ZERO,
            apply_time: Duration::ZERO,
        }
    }

    /// Waits for the dead-letter topic to acknowledge this batch's rejects. If it does
    /// not, the batch goes on anyway with them marked pending: their `rejected_events`
    /// rows, committed with the batch, are the durable record, and housekeeping delivers
    /// them once the topic is back. A dead-letter outage never holds up the stream.
    pub(super) fn confirm_dead_letters(&mut self, l: &mut Loop<'_>) {
        if self.rejected.is_empty() || self.rejected.iter().all(|r| r.dlq_pending) {
            return;
        }
        if let Err(e) = l.dlq.confirm(DLQ_CONFIRM_TIMEOUT) {
            l.dead_letters_failed(&e);
            for r in &mut self.rejected {
                r.dlq_pending = true;
            }
        }
    }
}

impl Prepared {
    /// Keeps only records of partitions we own that are not yet committed (after a
    /// rebalance or a seek back, the consumer can hand over records of either kind).
    pub(super) fn retain_owned(&mut self, parts: &HashMap<i32, Part>) {
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
pub(super) struct Staged {
    /// Distinct valid events not seen before (for the ledger and the audit table).
    fresh: Vec<SourcedEvent>,
    out: BatchOutput,
    positions: Vec<Position>,
    rejected: Vec<Rejected>,
    /// Next offset per partition after this batch.
    ends: HashMap<i32, i64>,
    /// What the batch adds to the instance's counters (computed once, here).
    counts: Heartbeat,
    /// The position of the batch's only record, if it has exactly one.
    single: Option<(i32, i64)>,
    first_polled: Instant,
    /// Keys of `fresh`, for the next batch's probe while this one is in flight.
    keys: HashSet<EventKey>,
    /// Events older than this are beyond the dedup horizon: not looked up, not recorded.
    ledger_from: EventTime,
    /// The processing clock's time, for `rejected_events.rejected_at` (its partition key).
    rejected_at: chrono::DateTime<Utc>,
    /// The processing clock when the batch was staged.
    clock: EventTime,
    probe_time: Duration,
    apply_time: Duration,
}

/// A batch transaction running on the runtime.
pub(super) struct InFlight {
    #[allow(clippy::type_complexity)]
    task: tokio::task::JoinHandle<(Option<Client>, Staged, Result<TxDone, ProcessorError>)>,
    /// The batch's ledger keys, not visible to other connections before it commits.
    pub(super) keys: HashSet<EventKey>,
}

#[derive(Clone, Copy)]
struct TxContext {
    partition_count: i32,
    alerts_since: Option<EventTime>,
    /// The instance's counters including this batch.
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
    store::record_keys(&tx, &staged.fresh, staged.ledger_from).await?;
    store::copy_purchases(&tx, &staged.fresh).await?;
    phases[0] = t0.elapsed();
    let out = &staged.out;
    if cfg.audit_events {
        store::copy_events(&tx, &staged.fresh, &out.late_flags).await?;
    }
    store::write_outputs(&tx, out, &cfg.engine).await?;
    store::write_rejected(&tx, &cfg.topic, &staged.rejected, staged.rejected_at).await?;
    phases[1] = t0.elapsed();
    store::write_positions(&tx, &cfg.group, &cfg.topic, &staged.positions).await?;
    let gwm = store::global_watermark(&tx, &cfg.group, &cfg.topic, ctx.partition_count).await?;
    let mut alerts = Vec::new();
    if let Some(g) = gwm.filter(|g| ctx.alerts_since.is_none_or(|c| *g > c)) {
        alerts = store::raise_alerts(&tx, g, ctx.alerts_since, cfg.alert).await?;
    }
    store::write_heartbeat(&tx, &cfg.instance_id, &cfg.group, ctx.started, &ctx.totals).await?;
    tx.commit().await?;
    phases[2] = t0.elapsed();
    Ok(TxDone {
        alerts,
        closed_until: gwm,
        phases,
    })
}

/// The median of `times` (`None` when empty).
fn median(mut times: Vec<EventTime>) -> Option<EventTime> {
    if times.is_empty() {
        return None;
    }
    let mid = times.len() / 2;
    Some(*times.select_nth_unstable(mid).1)
}

/// A failure as text fit for a `text` column, a log line and a Kafka header.
pub(super) fn error_detail(e: &ProcessorError) -> String {
    printable(&e.to_string(), 500)
}
