//! Reading the lake back: silver events (only the columns the batch needs) and bronze
//! record positions, with the `parquet` crate's Arrow reader.

use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use clickstream_model::EventType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::{Lake, LakeError, LakeFile};

/// The silver columns the daily batch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilverEvent {
    /// Event id.
    pub event_id: u128,
    /// Type.
    pub event_type: EventType,
    /// Event time, µs since the epoch.
    pub event_time_us: i64,
    /// The device's time of the event when the collector corrected `event_time` for its
    /// clock skew (part of the dedup identity), µs.
    pub client_time_us: Option<i64>,
    /// User.
    pub user_id: u128,
    /// Visit.
    pub session_id: u128,
    /// Product, if any.
    pub product_id: Option<Arc<str>>,
    /// Category, if any.
    pub category: Option<Arc<str>>,
    /// Units carted or bought.
    pub quantity: Option<i32>,
    /// Order of a purchase line.
    pub order_id: Option<u128>,
    /// Line amount of a purchase, cents.
    pub amount_cents: Option<i64>,
    /// Bot user agent.
    pub is_bot: bool,
    /// Kafka partition.
    pub kafka_partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
}

/// An event's dedup identity (id and event time in µs, as
/// [`clickstream_model::EventKey`]) in 24 bytes: a `(u128, i64)` tuple pads to 32, and a
/// day's set holds millions of them.
pub type DedupKey = (u64, u64, i64);

/// The [`DedupKey`] of event `id` at `t_us`.
pub fn dedup_key(id: u128, t_us: i64) -> DedupKey {
    ((id >> 64) as u64, id as u64, t_us)
}

impl SilverEvent {
    /// This event's dedup identity.
    pub fn key(&self) -> DedupKey {
        dedup_key(
            self.event_id,
            self.client_time_us.unwrap_or(self.event_time_us),
        )
    }
}

/// `client_time` is absent from files written before the collector existed.
const SILVER_COLUMNS: [&str; 14] = [
    "event_id",
    "event_type",
    "event_time",
    "client_time",
    "user_id",
    "session_id",
    "product_id",
    "category",
    "quantity",
    "order_id",
    "amount_cents",
    "is_bot",
    "kafka_partition",
    "kafka_offset",
];

/// The file's batches (of the given columns), decoded lazily.
fn batches(
    lake: &Lake,
    file: &LakeFile,
    columns: &[&str],
) -> Result<impl Iterator<Item = Result<RecordBatch, LakeError>>, LakeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(lake.open_file(file)?)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()?;
    Ok(reader.map(|b| b.map_err(LakeError::from)))
}

/// Rows in a Parquet file, from its footer.
pub fn row_count(lake: &Lake, file: &LakeFile) -> Result<usize, LakeError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(lake.open_file(file)?)?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as usize)
}

fn col<'a, T: 'static>(
    b: &'a RecordBatch,
    name: &str,
    path: &LakeFile,
) -> Result<&'a T, LakeError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| LakeError::Corrupt(format!("{} (column {name})", path)))
}

fn uuid_of(s: &str, path: &LakeFile) -> Result<u128, LakeError> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.as_u128())
        .map_err(|_| LakeError::Corrupt(format!("{} (bad uuid {s})", path)))
}

/// Every event of one silver file.
pub fn read_silver(lake: &Lake, path: &LakeFile) -> Result<Vec<SilverEvent>, LakeError> {
    let mut out = Vec::new();
    for_each_silver(lake, path, |e| out.push(e))?;
    Ok(out)
}

/// Calls `f` with every event of one silver file, a batch at a time (the file is never
/// decoded whole).
pub fn for_each_silver(
    lake: &Lake,
    path: &LakeFile,
    mut f: impl FnMut(SilverEvent),
) -> Result<(), LakeError> {
    // Repeated strings (products, categories) share one allocation per file.
    let mut interned: std::collections::HashMap<String, Arc<str>> = Default::default();
    let mut intern = |s: &str| -> Arc<str> {
        if let Some(a) = interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        interned.insert(s.to_string(), a.clone());
        a
    };
    for b in batches(lake, path, &SILVER_COLUMNS)? {
        let b = b?;
        let id = col::<StringArray>(&b, "event_id", path)?;
        let ty = col::<StringArray>(&b, "event_type", path)?;
        let time = col::<TimestampMicrosecondArray>(&b, "event_time", path)?;
        let client_time = match b.column_by_name("client_time") {
            None => None,
            Some(_) => Some(col::<TimestampMicrosecondArray>(&b, "client_time", path)?),
        };
        let user = col::<StringArray>(&b, "user_id", path)?;
        let session = col::<StringArray>(&b, "session_id", path)?;
        let product = col::<StringArray>(&b, "product_id", path)?;
        let category = col::<StringArray>(&b, "category", path)?;
        let qty = col::<Int32Array>(&b, "quantity", path)?;
        let order = col::<StringArray>(&b, "order_id", path)?;
        let amount = col::<Int64Array>(&b, "amount_cents", path)?;
        let bot = col::<BooleanArray>(&b, "is_bot", path)?;
        let part = col::<Int32Array>(&b, "kafka_partition", path)?;
        let off = col::<Int64Array>(&b, "kafka_offset", path)?;
        for i in 0..b.num_rows() {
            let event_type = ty
                .value(i)
                .parse::<EventType>()
                .map_err(|_| LakeError::Corrupt(format!("{} (event type)", path)))?;
            f(SilverEvent {
                event_id: uuid_of(id.value(i), path)?,
                event_type,
                event_time_us: time.value(i),
                client_time_us: client_time.filter(|c| !c.is_null(i)).map(|c| c.value(i)),
                user_id: uuid_of(user.value(i), path)?,
                session_id: uuid_of(session.value(i), path)?,
                product_id: (!product.is_null(i)).then(|| intern(product.value(i))),
                category: (!category.is_null(i)).then(|| intern(category.value(i))),
                quantity: (!qty.is_null(i)).then(|| qty.value(i)),
                order_id: if order.is_null(i) {
                    None
                } else {
                    Some(uuid_of(order.value(i), path)?)
                },
                amount_cents: (!amount.is_null(i)).then(|| amount.value(i)),
                is_bot: bot.value(i),
                kafka_partition: part.value(i),
                kafka_offset: off.value(i),
            });
        }
    }
    Ok(())
}

/// One bronze row's position and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BronzeRecord {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Record value as received (`None`: tombstone).
    pub value: Option<Vec<u8>>,
}

/// Every record of one bronze file.
pub fn read_bronze(lake: &Lake, path: &LakeFile) -> Result<Vec<BronzeRecord>, LakeError> {
    let mut out = Vec::new();
    for b in batches(lake, path, &["kafka_partition", "kafka_offset", "value"])? {
        let b = b?;
        let part = col::<Int32Array>(&b, "kafka_partition", path)?;
        let off = col::<Int64Array>(&b, "kafka_offset", path)?;
        let val = col::<BinaryArray>(&b, "value", path)?;
        for i in 0..b.num_rows() {
            out.push(BronzeRecord {
                partition: part.value(i),
                offset: off.value(i),
                value: (!val.is_null(i)).then(|| val.value(i).to_vec()),
            });
        }
    }
    Ok(out)
}
