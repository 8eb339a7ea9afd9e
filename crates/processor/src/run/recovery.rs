//! How the loop meets a failed batch: what the failure means (see [`crate::retry`]), the
//! reset to the stored state, the backoff, and the stall state it reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::batch::error_detail;
use super::{Loop, FIRST_BACKOFF};
use crate::retry::Verdict;
use crate::ProcessorError;

impl Loop<'_> {
    /// After an abandoned batch: decide how to retry (unchanged, split, or with one record
    /// dead-lettered as unstorable), reload state and seek back, and back off unless the
    /// next attempt is a step of isolating a refused record.
    pub(super) fn recover(
        &mut self,
        e: &ProcessorError,
        stop: &AtomicBool,
    ) -> Result<(), ProcessorError> {
        self.metrics.batches_abandoned.inc();
        let detail = error_detail(e);
        if e.sqlstate() == Some("23505") && !self.recent_keys.is_suspended() {
            // A key recorded by another instance (a re-send from another partition) that
            // this one did not probe: probe every key for a while.
            self.recent_keys.suspend();
            tracing::info!(
                for_secs = super::recent_keys::RecentKeys::SUSPENSION.as_secs(),
                "a re-send reached this instance from another's partition; probing every event key for a while"
            );
        }
        let verdict = match self.last_failed.take() {
            Some(b) if e.is_data_error() => Some((b, self.splitter.data_error(b, &detail))),
            _ => None,
        };
        let wait = self.note_failure(e);
        match verdict {
            Some((b, Verdict::RetryOnce)) => tracing::warn!(
                error = %detail,
                records = b.records,
                "PostgreSQL refused the batch's data; retrying it once"
            ),
            Some((b, Verdict::Split(next))) => {
                self.metrics.batches_split.inc();
                tracing::warn!(
                    error = %detail,
                    records = b.records,
                    next_batch = next,
                    "PostgreSQL refused the batch's data again; splitting it to isolate the records it cannot store"
                );
            }
            Some((_, Verdict::Unstorable((partition, offset)))) => tracing::error!(
                partition,
                offset,
                error = %detail,
                "PostgreSQL refuses this record on its own; dead-lettering it as `unstorable`"
            ),
            Some((_, Verdict::NotTheRecords)) | None => tracing::warn!(
                error = %detail,
                failures = self.stall.consecutive,
                stalled_since = ?self.stall.since,
                retry_in = ?wait,
                "batch abandoned; reloading state and retrying after a pause"
            ),
        }
        let isolating = matches!(
            verdict,
            Some((
                _,
                Verdict::RetryOnce | Verdict::Split(_) | Verdict::Unstorable(_)
            ))
        );
        self.reset(stop)?;
        if !isolating {
            self.pause(wait, stop);
        }
        Ok(())
    }

    /// Records a failed attempt in the stall state and the metrics; returns the backoff.
    pub(super) fn note_failure(&mut self, e: &ProcessorError) -> Duration {
        self.stall.failed(&error_detail(e));
        self.metrics
            .consecutive_failures
            .set(i64::from(self.stall.consecutive));
        if let Some(since) = self.stall.since {
            self.metrics
                .stalled_since
                .set(since.timestamp_micros() as f64 / 1e6);
        }
        self.stall
            .backoff(FIRST_BACKOFF, self.cfg.retry_max_backoff)
    }

    /// A batch committed: end the stall, if there was one, and say so.
    pub(super) fn recovered(&mut self) {
        if let Some((failures, took)) = self.stall.recovered() {
            tracing::info!(
                failures,
                stalled_for = %humanize(took),
                "committing again after failures"
            );
        }
        self.metrics.consecutive_failures.set(0);
        self.metrics.stalled_since.set(0.0);
    }

    /// Waits `wait` (or until `stop`), keeping the heartbeat fresh so dashboards show a
    /// stalled instance rather than a dead one.
    pub(super) fn pause(&self, wait: Duration, stop: &AtomicBool) {
        let until = Instant::now() + wait;
        let mut last_touch = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            std::thread::sleep(left.min(Duration::from_millis(100)));
            if last_touch.elapsed() >= Duration::from_secs(2) {
                self.touch_heartbeat();
                last_touch = Instant::now();
            }
        }
    }
}

fn humanize(d: chrono::Duration) -> String {
    format!("{:.1}s", d.num_milliseconds() as f64 / 1000.0)
}
