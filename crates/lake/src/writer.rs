//! The lake writer: consumes the raw topic as its own consumer group and writes every
//! record to bronze and every distinct valid event to silver, exactly once per offset.
//!
//! Per Kafka partition there is one open bronze file and one open silver file per (event
//! date, event type), all covering the same offset range. A range is closed ("rolled")
//! when it reaches `roll_records`, when it is `roll_interval` old, when the ingest date
//! changes, or on shutdown: silver files are finished and published, then the bronze
//! file, which commits the range (see [`crate::layout`]). Kafka offsets are committed after
//! that, for lag tools only; the lake's own files say where to resume.
//!
//! Deduplication in silver is per partition (events are keyed by user, so a re-sent event
//! lands on the partition of the original) over a window of event time behind the
//! partition's newest event (`dedup_window`, 30 min by default: re-sends arrive within
//! minutes), by event id and event time like the stream processor. The window's keys are
//! rebuilt from the newest committed silver files on start. The daily batch deduplicates
//! again over the whole day, so gold is exact even beyond the window.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{StringArray, TimestampMicrosecondArray};
use clickstream_model::{parse_event, ContractLimits, EventTime, EventType, ValidationPolicy};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::layout::{Lake, Range};
use crate::read::{dedup_key, DedupKey};
use crate::schema::{
    bronze_schema, silver_schema, writer_properties, BronzeRows, RawRecord, SilverRows,
};
use crate::{LakeError, LakeFile};

/// Rows collected before they are handed to the Parquet writer (which builds row groups
/// of `row_group_rows` from them): small, so raw rows are not buffered twice.
const WRITE_BATCH_ROWS: usize = 4096;

/// Settings of the lake writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The lake: a directory or an object store URL (see [`Lake::open`]).
    pub location: String,
    /// Bootstrap servers and every Kafka client property (TLS, SASL, tuning).
    pub kafka: clickstream_kafka::KafkaConnection,
    /// Raw topic.
    pub topic: String,
    /// Consumer group (offsets committed for lag tools; the lake is authoritative).
    pub group: String,
    /// Close a partition's files after this many records...
    pub roll_records: usize,
    /// ... or when they are this old.
    pub roll_interval: Duration,
    /// Rows per Parquet row group (and per Arrow batch handed to the writer).
    pub row_group_rows: usize,
    /// Re-sent events whose event time is within this much of the partition's newest event
    /// are dropped from silver.
    pub dedup_window: Duration,
    /// The contract's bounds, the same as the processor's.
    pub limits: ContractLimits,
    /// Live counters (for `/metrics`).
    pub metrics: crate::LakeMetrics,
    /// Stop (committing everything) once every partition reached the end offset it had
    /// when the writer started: a one-shot backfill instead of a service.
    pub stop_at_end: bool,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterReport {
    /// Records written to bronze.
    pub records: u64,
    /// Events written to silver.
    pub events: u64,
    /// Duplicates kept out of silver.
    pub duplicates: u64,
    /// Records that failed validation (bronze only).
    pub invalid: u64,
    /// Ranges committed.
    pub ranges: u64,
    /// Records deleted by Kafka's retention before the lake read them.
    pub lost_to_retention: u64,
}

/// A Parquet file being written to a staged local file, published when its range closes.
struct OpenFile {
    staged: PathBuf,
    /// Key of the directory it is published in.
    dir: String,
    writer: ArrowWriter<File>,
}

impl OpenFile {
    fn create(
        lake: &Lake,
        dir: String,
        partition: i32,
        start: i64,
        schema: arrow_schema::SchemaRef,
        rows: usize,
    ) -> Result<OpenFile, LakeError> {
        let staged = lake
            .backend()
            .staging(&format!("{dir}/part-p{partition:03}-{start:020}.parquet"))?;
        let file = File::create(&staged).map_err(|e| LakeError::io(&staged, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties(rows)))?;
        Ok(OpenFile {
            staged,
            dir,
            writer,
        })
    }

    /// Finishes the file and publishes it under its range's name (durably).
    fn commit(self, lake: &Lake, range: Range) -> Result<(), LakeError> {
        let file = self.writer.into_inner()?;
        if lake.local_root().is_some() {
            file.sync_all()
                .map_err(|e| LakeError::io(&self.staged, e))?;
        }
        drop(file);
        let key = format!("{}/{}", self.dir, range.file_name());
        lake.backend().publish(&self.staged, &key)
    }
}

/// Ids of the partition's events within the window of event time behind its newest event,
/// bucketed by second so pruning is cheap. Memory follows event-time density, so a backfill
/// of a whole day holds only the window's events.
#[derive(Default)]
struct Dedup {
    seen: HashSet<DedupKey>,
    buckets: BTreeMap<i64, Vec<DedupKey>>,
    newest_s: Option<i64>,
}

impl Dedup {
    /// Remembers `id` (event time `t_us`) unless it is already older than the window.
    fn insert(&mut self, id: u128, t_us: i64, window_s: i64) {
        let s = t_us.div_euclid(1_000_000);
        let newest = self.newest_s.map_or(s, |n| n.max(s));
        if s < newest.saturating_sub(window_s) {
            return;
        }
        let key = dedup_key(id, t_us);
        self.seen.insert(key);
        self.buckets.entry(s).or_default().push(key);
        if self.newest_s != Some(newest) {
            self.newest_s = Some(newest);
            while let Some(entry) = self.buckets.first_entry() {
                if *entry.key() >= newest.saturating_sub(window_s) {
                    break;
                }
                for old in entry.remove() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: u128, t_us: i64) -> bool {
        self.seen.contains(&dedup_key(id, t_us))
    }
}

/// One partition's open range.
struct PartitionFiles {
    /// First offset of the open range.
    start: i64,
    /// Next offset expected.
    next: i64,
    opened: Option<Instant>,
    bronze_date: String,
    bronze: Option<(OpenFile, BronzeRows)>,
    silver: BTreeMap<(String, EventType), (OpenFile, SilverRows)>,
    records: usize,
    dedup: Dedup,
    /// Ids written in the open range (forgotten if it is abandoned).
    pending_events: u64,
}

impl PartitionFiles {
    fn new(start: i64, dedup: Dedup) -> Self {
        PartitionFiles {
            start,
            next: start,
            opened: None,
            bronze_date: String::new(),
            bronze: None,
            silver: BTreeMap::new(),
            records: 0,
            dedup,
            pending_events: 0,
        }
    }
}

/// The writer's state: the lake, the lock that keeps a second writer out, the partitions.
pub struct LakeWriter {
    cfg: WriterConfig,
    lake: Lake,
    _lock: Option<File>,
    parts: HashMap<i32, PartitionFiles>,
    report: WriterReport,
}

impl LakeWriter {
    /// Takes the lake's lock, removes what a crash left behind, and loads each
    /// partition's resume offset and dedup window.
    pub fn open(cfg: WriterConfig) -> Result<LakeWriter, LakeError> {
        let lake = Lake::open(&cfg.location)?;
        // A directory has a lock file; an object store has no lock to take, so keeping a
        // second writer away from its prefix is the deployment's job (one replica).
        let lock = match lake.local_root() {
            Some(root) => {
                std::fs::create_dir_all(root).map_err(|e| LakeError::io(root, e))?;
                let lock_path = root.join(".writer.lock");
                let lock = File::create(&lock_path).map_err(|e| LakeError::io(&lock_path, e))?;
                lock.try_lock()
                    .map_err(|_| LakeError::Locked(root.display().to_string()))?;
                Some(lock)
            }
            None => None,
        };
        let removed = lake.recover()?;
        if removed > 0 {
            tracing::info!(removed, "removed files of ranges that were never committed");
        }
        Ok(LakeWriter {
            cfg,
            lake,
            _lock: lock,
            parts: HashMap::new(),
            report: WriterReport::default(),
        })
    }

    /// Rebuilds partition `p`'s dedup window from its newest committed silver files
    /// (`silver`: every silver file of the lake, listed once for all partitions).
    fn load_dedup(&self, p: i32, silver: &[(LakeFile, Range)]) -> Result<Dedup, LakeError> {
        let window_s = self.cfg.dedup_window.as_secs() as i64;
        let mut by_range: BTreeMap<Range, Vec<&LakeFile>> = BTreeMap::new();
        for (path, r) in silver.iter().filter(|(_, r)| r.partition == p) {
            by_range.entry(*r).or_default().push(path);
        }
        let mut ids: Vec<(i64, u128)> = Vec::new();
        let mut newest = i64::MIN;
        for (_, paths) in by_range.iter().rev() {
            let mut range_max = i64::MIN;
            for path in paths {
                for (t, id) in read_ids(&self.lake, path)? {
                    range_max = range_max.max(t);
                    ids.push((t, id));
                }
            }
            newest = newest.max(range_max);
            // Older ranges can only hold events behind this one's window.
            if range_max < newest.saturating_sub(window_s * 1_000_000) {
                break;
            }
        }
        ids.sort_unstable();
        let mut d = Dedup::default();
        for (t, id) in ids {
            d.insert(id, t, window_s);
        }
        Ok(d)
    }

    fn policy(&self) -> ValidationPolicy {
        self.cfg.limits.policy(EventTime::now())
    }

    /// Consumes until `stop` is set, then commits every open range and returns.
    pub fn run(mut self, stop: &AtomicBool) -> Result<WriterReport, LakeError> {
        let mut kc = self.cfg.kafka.client_config();
        kc.set("group.id", &self.cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // The lake decides where to resume; if that offset is gone (retention), start at
            // the log's beginning and report the gap rather than jump to the end.
            .set("auto.offset.reset", "earliest")
            // Bounded prefetch (8 MB per partition), and no 1 s pause (librdkafka's default
            // fetch.queue.backoff.ms) each time a partition's queue is full.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.queue.backoff.ms", "10");
        self.cfg.kafka.apply_tuning(&mut kc);
        let consumer: BaseConsumer = kc.create()?;
        let md = consumer.fetch_metadata(Some(&self.cfg.topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.cfg.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(LakeError::Config(format!(
                "topic `{topic}` does not exist on {bootstrap}. Create it (`clickstream generate` \
                 does, or `kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} \
                 --partitions 6`), or name an existing topic with --topic",
                topic = self.cfg.topic,
                bootstrap = self.cfg.kafka.bootstrap,
            )));
        }
        let committed = self.lake.committed_offsets()?;
        let silver = self.lake.files("silver")?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let mut start = committed.get(p).copied().unwrap_or(0);
            let (low, _) =
                consumer.fetch_watermarks(&self.cfg.topic, *p, Duration::from_secs(10))?;
            if start < low {
                self.retention_gap(*p, start, low);
                start = low;
            }
            let dedup = self.load_dedup(*p, &silver)?;
            tracing::info!(
                partition = p,
                resume_offset = start,
                dedup_ids = dedup.seen.len(),
                "partition ready"
            );
            self.parts.insert(*p, PartitionFiles::new(start, dedup));
            let offset = if start == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(start)
            };
            tpl.add_partition_offset(&self.cfg.topic, *p, offset)?;
        }
        // Every partition is ours: the lake lock already keeps a second writer out.
        consumer.assign(&tpl)?;
        let mut ends: HashMap<i32, i64> = HashMap::new();
        if self.cfg.stop_at_end {
            for p in &partitions {
                let (_, high) =
                    consumer.fetch_watermarks(&self.cfg.topic, *p, Duration::from_secs(10))?;
                ends.insert(*p, high);
            }
        }
        tracing::info!(topic = %self.cfg.topic, partitions = partitions.len(), lake = %self.lake.location(), "lake writer started");
        let mut policy = self.policy();
        let mut last_check = Instant::now();
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        let mut kafka_failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if self.cfg.stop_at_end
                && self
                    .parts
                    .iter()
                    .all(|(p, f)| f.next >= ends.get(p).copied().unwrap_or(0))
            {
                tracing::info!("every partition reached its end offset");
                break;
            }
            if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
                let msg = match msg {
                    Ok(m) => {
                        kafka_failures = 0;
                        m
                    }
                    Err(e) if !is_fatal(&e) => {
                        // The broker away, a leader moving: librdkafka reconnects by itself.
                        kafka_failures += 1;
                        self.cfg.metrics.kafka_errors.inc();
                        let wait = Duration::from_millis(100 << kafka_failures.min(7));
                        tracing::warn!(error = %e, failures = kafka_failures, retry_in = ?wait, "kafka error; retrying");
                        std::thread::sleep(wait);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let expected = self.parts.get(&msg.partition()).map(|f| f.next);
                if let Some(next) = expected.filter(|n| msg.offset() > *n) {
                    // Offsets skipped: retention deleted them (the consumer restarted at the
                    // log's beginning), or they are transaction markers (not data).
                    let (low, _) = consumer
                        .fetch_watermarks(&self.cfg.topic, msg.partition(), Duration::from_secs(10))
                        .unwrap_or((0, 0));
                    if low > next {
                        self.retention_gap(msg.partition(), next, low.min(msg.offset()));
                    }
                }
                let rec = RawRecord {
                    topic: msg.topic(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    timestamp_ms: msg.timestamp().to_millis(),
                    ingest_us: EventTime::now().as_micros(),
                    key: msg.key(),
                    value: msg.payload(),
                };
                self.append(&rec, &policy)?;
            }
            if last_lag.elapsed() >= Duration::from_secs(10) {
                last_lag = Instant::now();
                self.update_lag(&consumer);
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                policy = self.policy();
                let due: Vec<i32> = self
                    .parts
                    .iter()
                    .filter(|(_, f)| {
                        f.opened
                            .is_some_and(|t| t.elapsed() >= self.cfg.roll_interval)
                    })
                    .map(|(p, _)| *p)
                    .collect();
                for p in due {
                    self.roll(p, &consumer)?;
                }
            }
        }
        let all: Vec<i32> = self.parts.keys().copied().collect();
        for p in all {
            self.roll(p, &consumer)?;
        }
        tracing::info!("lake writer stopped; every open range was committed");
        Ok(self.report)
    }

    /// Sets the lag gauge: records in the topic past each partition's next offset.
    fn update_lag(&self, consumer: &BaseConsumer) {
        let mut lag = 0;
        for (p, f) in &self.parts {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&self.cfg.topic, *p, Duration::from_millis(500))
            {
                lag += (high - f.next).max(0);
            }
        }
        self.cfg.metrics.lag.set(lag);
    }

    /// Offsets `[from, to)` of `partition` were deleted by retention before the lake read
    /// them: said loudly, counted, and noted in the lake for `clickstream status`.
    fn retention_gap(&mut self, partition: i32, from: i64, to: i64) {
        let records = (to - from).max(0) as u64;
        self.report.lost_to_retention += records;
        self.cfg.metrics.lost_to_retention.inc_by(records);
        tracing::error!(
            partition,
            from,
            to,
            records,
            "records deleted by Kafka retention before the lake read them; they are not in bronze or silver"
        );
        if let Err(e) = self.lake.record_gap(partition, from, to) {
            tracing::error!(error = %e, "could not note the retention gap in the lake");
        }
    }

    fn append(&mut self, r: &RawRecord<'_>, policy: &ValidationPolicy) -> Result<(), LakeError> {
        let rg_rows = self.cfg.row_group_rows;
        let roll_records = self.cfg.roll_records;
        let window_s = self.cfg.dedup_window.as_secs() as i64;
        let Some(f) = self.parts.get_mut(&r.partition) else {
            return Ok(());
        };
        if r.offset < f.next {
            return Ok(()); // already in the lake (a repeated fetch)
        }
        let ts_ms = r.timestamp_ms.unwrap_or(r.ingest_us / 1000);
        let date = EventTime::from_millis(ts_ms).date_string();
        if f.bronze.is_some() && f.bronze_date != date {
            // A new ingest day starts a new bronze file.
            self.roll_to(r.partition, r.offset)?;
        }
        let f = self.parts.get_mut(&r.partition).expect("partition present");
        if f.bronze.is_none() {
            f.start = r.offset;
            f.opened = Some(Instant::now());
            f.bronze_date = date.clone();
            let dir = self.lake.bronze_dir(&date);
            f.bronze = Some((
                OpenFile::create(
                    &self.lake,
                    dir,
                    r.partition,
                    r.offset,
                    bronze_schema(),
                    rg_rows,
                )?,
                BronzeRows::default(),
            ));
        }
        let (bf, rows) = f.bronze.as_mut().expect("open bronze file");
        rows.push(r);
        if rows.len() >= WRITE_BATCH_ROWS {
            bf.writer.write(&rows.finish())?;
        }
        self.report.records += 1;
        self.cfg.metrics.records.inc();
        match parse_event(r.value.unwrap_or_default(), policy) {
            Ok(ev) => {
                let id = ev.event_id.as_u128();
                if f.dedup.contains(id, ev.timestamp.as_micros()) {
                    self.report.duplicates += 1;
                    self.cfg.metrics.duplicates.inc();
                } else {
                    f.dedup.insert(id, ev.timestamp.as_micros(), window_s);
                    let key = (ev.timestamp.date_string(), ev.event_type);
                    let (sf, srows) = match f.silver.entry(key) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let (d, t) = v.key();
                            let dir = self.lake.silver_dir(d, t.as_str());
                            let file = OpenFile::create(
                                &self.lake,
                                dir,
                                r.partition,
                                f.start,
                                silver_schema(),
                                rg_rows,
                            )?;
                            v.insert((file, SilverRows::default()))
                        }
                    };
                    srows.push(&ev, r.partition, r.offset, r.timestamp_ms);
                    if srows.len() >= WRITE_BATCH_ROWS {
                        sf.writer.write(&srows.finish())?;
                    }
                    f.pending_events += 1;
                }
            }
            Err(_) => {
                self.report.invalid += 1;
                self.cfg.metrics.invalid.inc();
            }
        }
        f.next = r.offset + 1;
        f.records += 1;
        if f.records >= roll_records {
            let next = f.next;
            self.roll_to(r.partition, next)?;
        }
        Ok(())
    }

    /// Commits partition `p`'s open range as `[start, end)`.
    fn roll_to(&mut self, p: i32, end: i64) -> Result<(), LakeError> {
        let Some(f) = self.parts.get_mut(&p) else {
            return Ok(());
        };
        let Some((mut bf, mut rows)) = f.bronze.take() else {
            return Ok(());
        };
        let range = Range {
            partition: p,
            start: f.start,
            end,
        };
        // Silver first; bronze last, which commits the range.
        for (_, (mut sf, mut srows)) in std::mem::take(&mut f.silver) {
            if !srows.is_empty() {
                sf.writer.write(&srows.finish())?;
            }
            sf.commit(&self.lake, range)?;
        }
        if !rows.is_empty() {
            bf.writer.write(&rows.finish())?;
        }
        bf.commit(&self.lake, range)?;
        self.report.events += f.pending_events;
        self.report.ranges += 1;
        self.cfg.metrics.events.inc_by(f.pending_events);
        self.cfg.metrics.ranges.inc();
        tracing::debug!(
            partition = p,
            start = range.start,
            end = range.end,
            records = f.records,
            "range committed"
        );
        f.pending_events = 0;
        f.records = 0;
        f.opened = None;
        f.start = end;
        f.next = end;
        Ok(())
    }

    fn roll(&mut self, p: i32, consumer: &BaseConsumer) -> Result<(), LakeError> {
        let Some(next) = self
            .parts
            .get(&p)
            .filter(|f| f.bronze.is_some())
            .map(|f| f.next)
        else {
            return Ok(());
        };
        self.roll_to(p, next)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.cfg.topic, p, Offset::Offset(next))?;
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit to kafka failed (the lake is authoritative)");
        }
        Ok(())
    }
}

/// `(event time µs, event id)` of every row of a silver file.
fn read_ids(lake: &Lake, path: &LakeFile) -> Result<Vec<(i64, u128)>, LakeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(lake.open_file(path)?)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["event_id", "event_time"]);
    let reader = builder.with_projection(mask).build()?;
    let corrupt = || LakeError::Corrupt(path.to_string());
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let ids = batch
            .column_by_name("event_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(corrupt)?;
        let ts = batch
            .column_by_name("event_time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(corrupt)?;
        for i in 0..batch.num_rows() {
            let id = uuid::Uuid::parse_str(ids.value(i)).map_err(|_| corrupt())?;
            out.push((ts.value(i), id.as_u128()));
        }
    }
    Ok(out)
}

/// Kafka errors no retry can fix (librdkafka's fatal errors, authentication).
fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
        )
    )
}
