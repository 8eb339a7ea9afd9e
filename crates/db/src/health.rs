//! One read model of a consumer group's health, from PostgreSQL: per-partition progress
//! (committed offset, watermark, last update) and per-instance liveness, counters and stall
//! state. `clickstream status` and the dashboard both read it, so they never disagree about
//! what "running", "stalled" or "lag" mean. Lag needs Kafka's end offsets, which the caller
//! fetches with its own client and hands to [`GroupHealth::lag`]. The dashboard's API
//! serialises these types as they are.

use serde::Serialize;
use tokio_postgres::Client;

/// One partition's progress as PostgreSQL knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionProgress {
    /// Kafka partition.
    pub partition: i32,
    /// Next offset to process (committed with the results).
    pub committed: i64,
    /// Event-time watermark, epoch milliseconds.
    pub watermark_ms: Option<i64>,
    /// Seconds since the partition's offsets were last committed.
    pub updated_seconds_ago: f64,
    /// Seconds since the partition went idle (caught up, no records; its watermark follows
    /// the clock); `None` while records flow.
    pub idle_seconds: Option<f64>,
}

/// One processor instance, from its heartbeat row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceHealth {
    /// Instance id (host and process).
    pub instance_id: String,
    /// Seconds since it was last alive.
    pub seen_seconds_ago: f64,
    /// Seconds since its last batch commit (`None`: never committed).
    pub commit_seconds_ago: Option<f64>,
    /// Seconds between its start and its last sign of life.
    pub uptime_seconds: f64,
    /// It shut down cleanly (and has not restarted).
    pub stopped: bool,
    /// Alive within the staleness bound and not stopped.
    pub running: bool,
    /// Batches committed.
    pub batches: i64,
    /// Records consumed.
    pub records: i64,
    /// Distinct valid events applied.
    pub events: i64,
    /// Records rejected.
    pub rejected: i64,
    /// Duplicates dropped.
    pub duplicates: i64,
    /// Late events.
    pub late: i64,
    /// Failed attempts since its last commit (0 while healthy).
    pub consecutive_failures: i32,
    /// Seconds since its current run of failures began.
    pub stalled_seconds: Option<f64>,
    /// Its latest error while failing.
    pub last_error: Option<String>,
}

impl InstanceHealth {
    /// Running, but failing and backing off.
    pub fn is_stalled(&self) -> bool {
        self.running && self.consecutive_failures > 0
    }
}

/// One partition's lag: stored progress against Kafka's end offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PartitionLag {
    /// Kafka partition.
    pub partition: i32,
    /// Next offset to process (0 if never committed).
    pub committed: i64,
    /// Kafka's end offset, if known.
    pub end: Option<i64>,
    /// `end - committed`, if the end is known.
    pub lag: Option<i64>,
    /// Event-time watermark, epoch milliseconds.
    pub watermark_ms: Option<i64>,
    /// Seconds since it went idle, if it is.
    pub idle_seconds: Option<f64>,
}

/// A consumer group's health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupHealth {
    /// Partitions with stored progress, by partition.
    pub partitions: Vec<PartitionProgress>,
    /// Instances of the group, most recently alive first.
    pub instances: Vec<InstanceHealth>,
}

impl GroupHealth {
    /// Whether any instance is running.
    pub fn running(&self) -> bool {
        self.instances.iter().any(|i| i.running)
    }

    /// A running instance that is stalled, if any.
    pub fn stalled(&self) -> Option<&InstanceHealth> {
        self.instances.iter().find(|i| i.is_stalled())
    }

    /// Seconds since the group's most recent commit.
    pub fn last_commit_seconds_ago(&self) -> Option<f64> {
        self.instances
            .iter()
            .filter_map(|i| i.commit_seconds_ago)
            .reduce(f64::min)
    }

    /// Events applied and duplicates dropped, summed over every instance that ever ran.
    pub fn totals(&self) -> (i64, i64) {
        self.instances
            .iter()
            .fold((0, 0), |(e, d), i| (e + i.events, d + i.duplicates))
    }

    /// Lag of every partition Kafka (`ends`) or PostgreSQL knows, by partition.
    pub fn lag(&self, ends: &[(i32, i64)]) -> Vec<PartitionLag> {
        let mut ids: Vec<i32> = ends.iter().map(|(p, _)| *p).collect();
        ids.extend(self.partitions.iter().map(|p| p.partition));
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|p| {
                let stored = self.partitions.iter().find(|x| x.partition == p);
                let committed = stored.map_or(0, |x| x.committed);
                let end = ends.iter().find(|(q, _)| *q == p).map(|(_, e)| *e);
                PartitionLag {
                    partition: p,
                    committed,
                    end,
                    lag: end.map(|e| (e - committed).max(0)),
                    watermark_ms: stored.and_then(|x| x.watermark_ms),
                    idle_seconds: stored.and_then(|x| x.idle_seconds),
                }
            })
            .collect()
    }
}

/// Reads the health of `group` on `topic`. An instance counts as running if it was seen
/// within `stale_after_secs` and has not stopped.
pub async fn group_health(
    c: &Client,
    group: &str,
    topic: &str,
    stale_after_secs: f64,
) -> Result<GroupHealth, tokio_postgres::Error> {
    let gt: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&group, &topic];
    let (offsets, beats) = tokio::try_join!(
        c.query(
            "SELECT kafka_partition, next_offset, (extract(epoch FROM watermark) * 1000)::int8,
                    extract(epoch FROM now() - updated_at)::float8,
                    extract(epoch FROM now() - idle_since)::float8
               FROM analytics.consumer_offsets
              WHERE consumer_group = $1 AND topic = $2 ORDER BY 1",
            &gt,
        ),
        c.query(
            "SELECT instance_id, extract(epoch FROM now() - last_seen_at)::float8,
                    extract(epoch FROM now() - last_commit_at)::float8,
                    extract(epoch FROM last_seen_at - started_at)::float8,
                    stopped_at IS NOT NULL, batches, records, events, rejected, duplicates, late,
                    consecutive_failures, extract(epoch FROM now() - stalled_since)::float8,
                    last_error
               FROM analytics.processor_heartbeat WHERE consumer_group = $1
              ORDER BY last_seen_at DESC",
            &gt[..1],
        ),
    )?;
    let partitions = offsets
        .iter()
        .map(|r| PartitionProgress {
            partition: r.get(0),
            committed: r.get(1),
            watermark_ms: r.get(2),
            updated_seconds_ago: r.get(3),
            idle_seconds: r.get(4),
        })
        .collect();
    let instances = beats
        .iter()
        .map(|r| {
            let seen: f64 = r.get(1);
            let stopped: bool = r.get(4);
            InstanceHealth {
                instance_id: r.get(0),
                seen_seconds_ago: seen,
                commit_seconds_ago: r.get(2),
                uptime_seconds: r.get(3),
                stopped,
                running: !stopped && seen <= stale_after_secs,
                batches: r.get(5),
                records: r.get(6),
                events: r.get(7),
                rejected: r.get(8),
                duplicates: r.get(9),
                late: r.get(10),
                consecutive_failures: r.get(11),
                stalled_seconds: r.get(12),
                last_error: r.get(13),
            }
        })
        .collect();
    Ok(GroupHealth {
        partitions,
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_covers_partitions_known_to_either_side() {
        let h = GroupHealth {
            partitions: vec![
                PartitionProgress {
                    partition: 0,
                    committed: 90,
                    watermark_ms: Some(5),
                    updated_seconds_ago: 1.0,
                    idle_seconds: None,
                },
                PartitionProgress {
                    partition: 7,
                    committed: 10,
                    watermark_ms: None,
                    updated_seconds_ago: 1.0,
                    idle_seconds: Some(90.0),
                },
            ],
            instances: Vec::new(),
        };
        let lag = h.lag(&[(0, 100), (1, 40)]);
        assert_eq!(lag.len(), 3);
        assert_eq!((lag[0].committed, lag[0].lag), (90, Some(10)));
        assert_eq!((lag[1].committed, lag[1].lag), (0, Some(40)));
        assert_eq!((lag[2].partition, lag[2].lag), (7, None));
        assert!(!h.running() && h.stalled().is_none());
    }
}
