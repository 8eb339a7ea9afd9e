//! Work done between batches while the batch connection is home: alerts for windows
//! that other instances' progress closed and their delivery, lag, idle partitions, the
//! heartbeat (with the stall state), pending dead letters, and day partitions (created
//! ahead, dropped by retention).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use clickstream_model::EventTime;
use rdkafka::consumer::Consumer;

use super::batch::Staged;
use super::Loop;
use crate::engine::BatchOutput;
use crate::kafka::Letter;
use crate::metrics::PartitionLabel;
use crate::retention;
use crate::store::{self, Position};
use crate::ProcessorError;

impl Loop<'_> {
    /// Raises alerts for windows closed since the last evaluation, in its own transaction.
    pub(super) fn evaluate_alerts(&mut self) -> Result<(), ProcessorError> {
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
        if !alerts.is_empty() {
            self.deliver_alerts();
        }
        Ok(())
    }

    /// Hands undelivered alerts (this instance's, another's, or a crashed run's) to the
    /// sinks and marks them notified, in one transaction per round (see [`crate::alerts`]).
    pub(super) fn deliver_alerts(&mut self) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let sinks = &mut self.sinks;
        let delivered = self.handle.block_on(async {
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            let alerts = store::claim_undelivered_alerts(&tx, ALERTS_PER_ROUND)
                .await
                .map_err(|e| e.to_string())?;
            if alerts.is_empty() {
                return Ok(0);
            }
            for a in &alerts {
                for s in sinks.iter_mut() {
                    s.raise(a).map_err(|e| format!("alert sink failed: {e}"))?;
                }
            }
            store::mark_notified(&tx, &alerts)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(alerts.len())
        });
        match delivered {
            Ok(0) => {}
            Ok(n) => tracing::debug!(alerts = n, "alerts delivered"),
            // Left undelivered: offered again on the next round.
            Err(e) => tracing::warn!(error = %e, "delivering alerts failed; will retry"),
        }
    }

    /// Fetches each assigned partition's log range: lag for `/metrics`, and whether the
    /// partition is caught up (for idleness).
    pub(super) fn update_lag(&mut self) {
        for (p, part) in &mut self.parts {
            match self
                .consumer
                .fetch_watermarks(&self.cfg.topic, *p, Duration::from_secs(1))
            {
                Ok((low, high)) => {
                    part.log = Some((low, high));
                    let lag = high - part.stored_next.unwrap_or(low);
                    self.metrics
                        .lag
                        .get_or_create(&PartitionLabel { partition: *p })
                        .set(lag.max(0));
                }
                // Without the broker nobody knows whether records are waiting (a feed
                // buffered through a broker restart): not caught up, so never idle.
                Err(_) => part.log = None,
            }
        }
        let timeout = self.cfg.idle_timeout;
        let idle = self
            .parts
            .values()
            .filter(|p| !timeout.is_zero() && p.caught_up() && p.last_record.elapsed() >= timeout)
            .count();
        self.metrics.idle_partitions.set(idle as i64);
    }

    /// Liveness for dashboards and `status` while no batch commits (idle input).
    pub(super) fn touch_heartbeat(&self) {
        let Some(client) = &self.client else { return };
        let touch = store::touch_heartbeat(
            client,
            &self.cfg.instance_id,
            &self.cfg.group,
            self.started,
            &self.stall,
        );
        if let Err(e) = self.handle.block_on(touch) {
            tracing::debug!(error = %e, "heartbeat failed; the next commit writes it");
        }
    }

    /// Notices partitions added to the topic: the global watermark waits for all of them.
    pub(super) fn refresh_partition_count(&mut self) {
        match super::consumer::partition_count(&self.consumer, &self.cfg.topic) {
            Ok(Some(n)) if n != self.partition_count => {
                tracing::info!(from = self.partition_count, to = n, topic = %self.cfg.topic, "partition count changed");
                self.partition_count = n;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "reading topic metadata failed"),
        }
    }

    /// Creates the day partitions until it succeeds (or `stop`): before the first batch,
    /// which may write to any day the contract accepts. Failures back off like failed
    /// batches. Retention waits for the first regular round.
    pub(super) fn upkeep_patiently(&mut self, stop: &AtomicBool) -> Result<(), ProcessorError> {
        while !stop.load(Ordering::Relaxed) {
            let attempt = match self.client.as_ref() {
                Some(c) if !c.is_closed() => self.maintain(false),
                _ => self
                    .handle
                    .block_on(super::writer_connection(self.cfg))
                    .map(|c| self.client = Some(c))
                    .and_then(|()| self.maintain(false)),
            };
            match attempt {
                Ok(()) => {
                    self.recovered();
                    return Ok(());
                }
                Err(e) if e.is_retriable() => {
                    let wait = self.note_failure(&e);
                    tracing::warn!(error = %e, retry_in = ?wait, "creating day partitions failed; retrying");
                    self.pause(wait, stop);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the day partitions accepted events can reach and drops the days retention
    /// no longer keeps (see [`crate::retention`]). `Err` leaves it to the next round (the
    /// partitions are made days ahead, so a missed round costs nothing).
    pub(super) fn upkeep(&mut self) -> Result<(), ProcessorError> {
        self.maintain(true)
    }

    fn maintain(&mut self, enforce: bool) -> Result<(), ProcessorError> {
        let t0 = Instant::now();
        let (cfg, metrics) = (self.cfg, self.metrics.clone());
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let at = |t: EventTime| {
            chrono::DateTime::from_timestamp_micros(t.as_micros()).unwrap_or_else(Utc::now)
        };
        let now = at(self.clock.now());
        // On the event-time clock, retention goes by the clock of the last committed batch
        // (none yet: no retention): a staged batch judged by a later clock may still write
        // to older days.
        let drop_at = match (self.clock.follows_events(), self.committed_clock) {
            (false, _) => Some(now),
            (true, c) => c.map(at),
        }
        .filter(|_| enforce);
        let lateness = cfg.engine.lateness_micros;
        let result = self.handle.block_on(async {
            let created = retention::create_ahead(client, now, &cfg.limits, &cfg.retention).await?;
            // Instances on the event-time clock share the tables: none may drop a day the
            // slowest partition of the group still writes to.
            let drop_at = match drop_at {
                Some(t) if cfg.clock == crate::clock::ClockMode::EventTime => {
                    let slowest: Option<chrono::DateTime<Utc>> = client
                        .query_one(
                            "SELECT min(watermark) FROM analytics.consumer_offsets
                              WHERE consumer_group = $1 AND topic = $2",
                            &[&cfg.group, &cfg.topic],
                        )
                        .await?
                        .get(0);
                    let slowest = slowest.map(|w| w + chrono::Duration::microseconds(lateness));
                    Some(slowest.map_or(t, |s| s.min(t)))
                }
                other => other,
            };
            let dropped = match drop_at {
                Some(t) => retention::enforce(client, t, &cfg.limits, &cfg.retention).await?,
                None => Vec::new(),
            };
            Ok::<_, ProcessorError>((created, dropped))
        });
        let took = t0.elapsed();
        metrics.retention_seconds.inc_by(took.as_secs_f64());
        let (created, dropped) = result?;
        self.ready_days = Some(retention::ready_days(now, &cfg.limits, &cfg.retention));
        metrics.partitions_created.inc_by(created);
        metrics.partitions_dropped.inc_by(dropped.len() as u64);
        if created > 0 || !dropped.is_empty() {
            tracing::info!(created, dropped = ?dropped, took_ms = took.as_millis() as u64, "day partitions maintained");
        }
        Ok(())
    }

    /// A batch without records for the partitions that are idle: caught up and without a
    /// record for the idle timeout. Their watermarks follow the processing clock (see
    /// [`crate::engine::PartitionState::advance_idle`]), which closes their sessions and
    /// lets the global watermark decide flash-sale windows after a feed stops, or on a topic
    /// where only some partitions get traffic. `None` when no partition is idle.
    pub(super) fn stage_idle(&mut self) -> Option<Staged> {
        let timeout = self.cfg.idle_timeout;
        if timeout.is_zero() {
            return None;
        }
        let engine = &self.cfg.engine;
        let now = self.clock.now();
        let mut out = BatchOutput::default();
        let mut positions = Vec::new();
        let mut ends = HashMap::new();
        for (p, part) in &mut self.parts {
            if !part.caught_up() || part.last_record.elapsed() < timeout {
                continue;
            }
            if !part.state.advance_idle(now, engine) {
                continue;
            }
            part.state.finish_batch(engine, &mut out);
            // Caught up: the stored offset, or the log's end for a partition never written.
            let next = part
                .stored_next
                .or(part.log.map(|(_, high)| high))
                .unwrap_or(0);
            ends.insert(*p, next);
            positions.push(Position {
                partition: *p,
                next_offset: next,
                watermark: part.state.watermark,
                max_event_time: part.state.max_event_time,
                idle: true,
            });
        }
        if ends.is_empty() {
            return None;
        }
        tracing::trace!(partitions = ?ends.keys().collect::<Vec<_>>(), "idle partitions follow the clock");
        Some(Staged::without_records(out, positions, ends))
    }

    /// The dead-letter topic failed to take or acknowledge records: from now on rejects
    /// are committed as pending and delivered by [`Loop::deliver_pending_dead_letters`].
    pub(super) fn dead_letters_failed(&mut self, e: &ProcessorError) {
        let (_, wait) = self.dlq_retry;
        if self.dlq_down.is_none() {
            self.dlq_down = Some(Utc::now());
            tracing::error!(
                topic = %self.cfg.dlq_topic,
                error = %e,
                "dead-letter topic unreachable; rejects are recorded in analytics.rejected_events \
                 (dlq_pending) and delivered when it is back"
            );
        } else {
            tracing::warn!(topic = %self.cfg.dlq_topic, error = %e, retry_in = ?wait, "dead-letter topic still unreachable");
        }
        self.dlq_retry = (Instant::now() + wait, (wait * 2).min(DLQ_MAX_BACKOFF));
    }

    /// Delivers dead letters recorded as pending (by this run or an earlier one) once the
    /// dead-letter topic takes them again, then marks them delivered.
    pub(super) fn deliver_pending_dead_letters(&mut self) {
        if Instant::now() < self.dlq_retry.0 {
            return;
        }
        let Some(client) = &self.client else { return };
        let topic = &self.cfg.topic;
        let letters =
            match self
                .handle
                .block_on(store::pending_letters(client, topic, PENDING_BATCH))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "reading pending dead letters failed; will retry");
                    return;
                }
            };
        let sent = letters.iter().try_for_each(|l| {
            let letter = Letter::new(
                l.key.as_deref(),
                &l.payload,
                usize::try_from(l.payload_bytes).unwrap_or(0),
            );
            self.dlq
                .send(&letter, &l.reason, &l.detail, l.partition, l.offset)
        });
        let delivered = sent.and_then(|()| self.dlq.confirm(DLQ_RETRY_TIMEOUT));
        if let Err(e) = delivered {
            self.metrics.dlq_pending.set(letters.len() as i64);
            self.dead_letters_failed(&e);
            return;
        }
        let positions: Vec<(i32, i64)> = letters.iter().map(|l| (l.partition, l.offset)).collect();
        if let Err(e) = self
            .handle
            .block_on(store::letters_delivered(client, topic, &positions))
        {
            // They stay pending and are sent again: at-least-once, like any dead letter.
            tracing::warn!(error = %e, "marking dead letters delivered failed; will retry");
            return;
        }
        if !letters.is_empty() {
            tracing::info!(
                records = letters.len(),
                "delivered pending dead letters from PostgreSQL"
            );
        }
        if (letters.len() as i64) < PENDING_BATCH {
            if let Some(since) = self.dlq_down.take() {
                tracing::info!(topic = %self.cfg.dlq_topic, down_since = %since, "dead-letter topic reachable again");
            }
            self.metrics.dlq_pending.set(0);
            // Healthy: look again only after the next failure.
            self.dlq_retry = (
                Instant::now() + Duration::from_secs(86_400 * 365),
                DLQ_FIRST_BACKOFF,
            );
        } else {
            self.dlq_retry = (Instant::now(), self.dlq_retry.1);
        }
    }
}

/// Alerts handed to the sinks per transaction.
const ALERTS_PER_ROUND: i64 = 100;
/// Pending dead letters delivered per housekeeping round.
const PENDING_BATCH: i64 = 500;
/// How long a delivery round waits for acknowledgements.
const DLQ_RETRY_TIMEOUT: Duration = Duration::from_secs(12);
/// The first and the longest wait between delivery rounds while the topic is down.
pub(super) const DLQ_FIRST_BACKOFF: Duration = Duration::from_secs(2);
const DLQ_MAX_BACKOFF: Duration = Duration::from_secs(60);
