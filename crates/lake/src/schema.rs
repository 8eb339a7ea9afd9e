//! The Arrow schemas of bronze and silver, row buffers that turn records into Arrow
//! batches, and the Parquet settings every lake file is written with.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use clickstream_model::Event;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

fn ts(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some("UTC".into()))
}

/// Bronze: every raw record exactly as Kafka delivered it.
pub fn bronze_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_timestamp", ts(TimeUnit::Millisecond), true),
        Field::new("ingest_time", ts(TimeUnit::Microsecond), false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
    ]))
}

/// Silver: validated, typed, deduplicated events (money in cents, ids as strings).
pub fn silver_schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    Arc::new(Schema::new(vec![
        s("event_id", false),
        s("event_type", false),
        Field::new("event_time", ts(TimeUnit::Microsecond), false),
        s("user_id", false),
        s("session_id", false),
        s("product_id", true),
        s("category", true),
        Field::new("price_cents", DataType::Int64, true),
        Field::new("quantity", DataType::Int32, true),
        s("order_id", true),
        Field::new("amount_cents", DataType::Int64, true),
        s("device", true),
        s("country", true),
        s("user_agent", true),
        s("referrer", true),
        s("utm_source", true),
        s("page", true),
        Field::new("is_bot", DataType::Boolean, false),
        s("browser", true),
        s("os", true),
        s("ip", true),
        Field::new("client_time", ts(TimeUnit::Microsecond), true),
        Field::new("sent_at", ts(TimeUnit::Microsecond), true),
        Field::new("received_at", ts(TimeUnit::Microsecond), true),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_timestamp", ts(TimeUnit::Millisecond), true),
    ]))
}

/// zstd, row groups of `row_group_rows`, statistics on (row-group pruning by readers).
/// Columns of (nearly) unique values skip dictionary encoding: a dictionary cannot help
/// them, and its buffers are what the writer holds in memory per open file.
pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)));
    for col in [
        "key",
        "value",
        "event_id",
        "session_id",
        "order_id",
        "ingest_time",
        "kafka_offset",
    ] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    b.build()
}

/// One raw record.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Topic it came from.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka timestamp (ms), if the record has one.
    pub timestamp_ms: Option<i64>,
    /// When the lake writer received it (µs).
    pub ingest_us: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
}

/// Bronze rows being collected for the next Arrow batch.
pub struct BronzeRows {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    ingest: TimestampMicrosecondBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    len: usize,
}

impl Default for BronzeRows {
    fn default() -> Self {
        BronzeRows {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            ingest: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            len: 0,
        }
    }
}

impl BronzeRows {
    /// Appends one record.
    pub fn push(&mut self, r: &RawRecord<'_>) {
        self.topic.append_value(r.topic);
        self.partition.append_value(r.partition);
        self.offset.append_value(r.offset);
        self.timestamp.append_option(r.timestamp_ms);
        self.ingest.append_value(r.ingest_us);
        self.key.append_option(r.key);
        self.value.append_option(r.value);
        self.len += 1;
    }

    /// Rows collected.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The collected rows as a batch; the buffer starts over.
    pub fn finish(&mut self) -> RecordBatch {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.ingest.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
        ];
        RecordBatch::try_new(bronze_schema(), cols).expect("columns match the bronze schema")
    }
}

/// Silver rows being collected for the next Arrow batch.
pub struct SilverRows {
    strings: [StringBuilder; 16],
    event_time: TimestampMicrosecondBuilder,
    /// `client_time`, `sent_at`, `received_at`.
    clocks: [TimestampMicrosecondBuilder; 3],
    price: Int64Builder,
    quantity: Int32Builder,
    amount: Int64Builder,
    is_bot: BooleanBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    len: usize,
}

impl Default for SilverRows {
    fn default() -> Self {
        SilverRows {
            strings: std::array::from_fn(|_| StringBuilder::new()),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            clocks: std::array::from_fn(|_| {
                TimestampMicrosecondBuilder::new().with_timezone("UTC")
            }),
            price: Int64Builder::new(),
            quantity: Int32Builder::new(),
            amount: Int64Builder::new(),
            is_bot: BooleanBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            len: 0,
        }
    }
}

// Indexes into `SilverRows::strings`.
const EVENT_ID: usize = 0;
const EVENT_TYPE: usize = 1;
const USER_ID: usize = 2;
const SESSION_ID: usize = 3;
const PRODUCT_ID: usize = 4;
const CATEGORY: usize = 5;
const ORDER_ID: usize = 6;
const DEVICE: usize = 7;
const COUNTRY: usize = 8;
const USER_AGENT: usize = 9;
const REFERRER: usize = 10;
const UTM_SOURCE: usize = 11;
const PAGE: usize = 12;
const BROWSER: usize = 13;
const OS: usize = 14;
const IP: usize = 15;

impl SilverRows {
    /// Appends one event with its Kafka position.
    pub fn push(&mut self, e: &Event, partition: i32, offset: i64, timestamp_ms: Option<i64>) {
        let mut uuid = uuid::Uuid::encode_buffer();
        let s = &mut self.strings;
        s[EVENT_ID].append_value(e.event_id.hyphenated().encode_lower(&mut uuid));
        s[EVENT_TYPE].append_value(e.event_type.as_str());
        s[USER_ID].append_value(e.user_id.hyphenated().encode_lower(&mut uuid));
        s[SESSION_ID].append_value(e.session_id.hyphenated().encode_lower(&mut uuid));
        s[PRODUCT_ID].append_option(e.product_id.as_deref());
        s[CATEGORY].append_option(e.category.as_deref());
        match e.order_id {
            Some(o) => s[ORDER_ID].append_value(o.hyphenated().encode_lower(&mut uuid)),
            None => s[ORDER_ID].append_null(),
        }
        s[DEVICE].append_option(e.device.as_deref());
        s[COUNTRY].append_option(e.country.as_deref());
        s[USER_AGENT].append_option(e.user_agent.as_deref());
        s[REFERRER].append_option(e.referrer.as_deref());
        s[UTM_SOURCE].append_option(e.utm_source.as_deref());
        s[PAGE].append_option(e.page.as_deref());
        s[BROWSER].append_option(e.browser.as_deref());
        s[OS].append_option(e.os.as_deref());
        s[IP].append_option(e.ip.as_deref());
        for (b, t) in self
            .clocks
            .iter_mut()
            .zip([e.client_timestamp, e.sent_at, e.received_at])
        {
            b.append_option(t.map(|t| t.as_micros()));
        }
        self.event_time.append_value(e.timestamp.as_micros());
        self.price.append_option(e.price.map(|m| m.cents()));
        self.quantity
            .append_option(e.quantity.map(|q| i32::try_from(q).unwrap_or(i32::MAX)));
        self.amount.append_option(e.amount.map(|m| m.cents()));
        self.is_bot.append_value(e.is_bot());
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_option(timestamp_ms);
        self.len += 1;
    }

    /// Rows collected.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The collected rows as a batch; the buffer starts over.
    pub fn finish(&mut self) -> RecordBatch {
        self.len = 0;
        let mut s = |i: usize| -> ArrayRef { Arc::new(self.strings[i].finish()) };
        let cols: Vec<ArrayRef> = vec![
            s(EVENT_ID),
            s(EVENT_TYPE),
            Arc::new(self.event_time.finish()),
            s(USER_ID),
            s(SESSION_ID),
            s(PRODUCT_ID),
            s(CATEGORY),
            Arc::new(self.price.finish()),
            Arc::new(self.quantity.finish()),
            s(ORDER_ID),
            Arc::new(self.amount.finish()),
            s(DEVICE),
            s(COUNTRY),
            s(USER_AGENT),
            s(REFERRER),
            s(UTM_SOURCE),
            s(PAGE),
            Arc::new(self.is_bot.finish()),
            s(BROWSER),
            s(OS),
            s(IP),
            Arc::new(self.clocks[0].finish()),
            Arc::new(self.clocks[1].finish()),
            Arc::new(self.clocks[2].finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
        ];
        RecordBatch::try_new(silver_schema(), cols).expect("columns match the silver schema")
    }
}
