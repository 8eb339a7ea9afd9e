//! Kafka end offsets for the lag panel (lag = end offset - offset committed in PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

/// A metadata-only Kafka client (it never joins a group or reads records).
#[derive(Clone)]
pub struct EndOffsets {
    consumer: Arc<BaseConsumer>,
    topic: String,
}

impl EndOffsets {
    /// A client for `topic` on `kafka`'s cluster. Connecting is lazy: a broker that is down now
    /// only makes [`EndOffsets::fetch`] fail.
    pub fn new(
        kafka: &clickstream_kafka::KafkaConnection,
        topic: &str,
    ) -> Result<EndOffsets, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("client.id", "clickstream-dashboard")
            .create()?;
        Ok(EndOffsets {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
        })
    }

    /// `(partition, end offset)` for every partition of the topic, or why not.
    pub async fn fetch(&self) -> Result<Vec<(i32, i64)>, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.fetch_blocking())
            .await
            .map_err(|e| format!("lag lookup failed: {e}"))?
    }

    fn fetch_blocking(&self) -> Result<Vec<(i32, i64)>, String> {
        let timeout = Duration::from_secs(2);
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| format!("kafka unreachable: {e}"))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(format!("topic {} not found", self.topic));
        };
        if let Some(e) = t.error() {
            return Err(format!("topic {}: {:?}", self.topic, e));
        }
        let mut out = Vec::with_capacity(t.partitions().len());
        for p in t.partitions() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p.id(), timeout)
                .map_err(|e| format!("end offset of partition {}: {e}", p.id()))?;
            out.push((p.id(), high));
        }
        out.sort_unstable();
        Ok(out)
    }
}
