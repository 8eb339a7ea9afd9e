//! The ledger keys this instance staged lately, so that most of a batch needs no ledger
//! probe (the probe was about a sixth of PostgreSQL's time per event).
//!
//! When it starts, the set picks a bound `B` ahead of the processing clock (the accepted
//! future plus an hour) and reads the newest key time in the ledger up to it (`M`). A key
//! stamped in `(M, B]` cannot have been recorded before the start; if this instance has
//! not staged it since either, it is new, unless another instance recorded it meanwhile (a re-send
//! that reached a partition this instance did not own). That last case is left to the
//! ledger's primary key: the COPY fails, the batch is abandoned and retried after a reset,
//! and a reset starts the set afresh with a newer `M`, so the retry probes the key. Keys
//! after `B` (a device clock far ahead: key times follow the device's clock up to the
//! maximum event age) are always probed, so one such key cannot switch the set off; the
//! set starts afresh when the clock nears `B`.
//!
//! The set is kept across an assignment change when every partition assigned resumes
//! where this instance left it (nobody else processed it meanwhile; re-sends from other
//! partitions are again the primary key's), and started afresh otherwise.
//!
//! Each such refusal costs a retried batch and a reset, so after one the set is
//! suspended for [`RecentKeys::SUSPENSION`]: every key is probed, as before the set
//! existed. A stream whose re-sends cross partitions (producers keying records by
//! something else than the user, or not at all) then costs one retried batch per
//! suspension, not one per re-send.
//!
//! Keys this instance staged are remembered by a 64-bit hash: a false match only sends a
//! key to the probe, never drops an event. A key that matches is probed too (a staged
//! batch may never commit: then the set has been started afresh anyway, but the probe
//! keeps the set out of the correctness argument for matches). The set is bounded: past
//! [`RecentKeys::MAX_KEYS`] it forgets its oldest minutes of event time, and keys of
//! those minutes are probed again.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use clickstream_model::{EventKey, EventTime};
use foldhash::HashSet;

const MINUTE: i64 = 60_000_000;

/// See the module docs.
#[derive(Default)]
pub(super) struct RecentKeys {
    /// Keys stamped at or after this time (microseconds) are covered; `None` until the
    /// set is started.
    covered_from: Option<i64>,
    /// ... and up to this one (`B`).
    covered_until: i64,
    /// Hashes of the staged keys, by minute of their time.
    minutes: BTreeMap<i64, HashSet<u64>>,
    len: usize,
    hasher: foldhash::fast::RandomState,
    /// Per partition, the offset after the last record this instance staged.
    staged_until: std::collections::HashMap<i32, i64>,
    /// Every key is probed until then (see the module docs).
    suspended_until: Option<Instant>,
}

impl RecentKeys {
    /// Most keys remembered (about 16 bytes each).
    pub(super) const MAX_KEYS: usize = 1_000_000;
    /// How long every key is probed after the ledger refused one.
    pub(super) const SUSPENSION: Duration = Duration::from_secs(600);

    /// The ledger refused a key another instance recorded: probe every key for a while.
    pub(super) fn suspend(&mut self) {
        self.suspended_until = Some(Instant::now() + Self::SUSPENSION);
    }

    /// Whether every key is to be probed now.
    pub(super) fn is_suspended(&self) -> bool {
        self.suspended_until.is_some_and(|t| Instant::now() < t)
    }

    /// Whether the set covers anything (it must be started after a reset).
    #[cfg(test)]
    fn is_started(&self) -> bool {
        self.covered_from.is_some()
    }

    /// Starts covering keys stamped after `newest` up to `until`, where `newest` is the
    /// newest key time in the ledger not after `until` (`None`: there is none).
    pub(super) fn start(&mut self, newest: Option<EventTime>, until: EventTime) {
        self.forget();
        self.covered_from = Some(newest.map_or(i64::MIN, |t| t.as_micros().saturating_add(1)));
        self.covered_until = until.as_micros();
    }

    /// Whether the set covers keys up to `t` (else it should be started afresh).
    pub(super) fn covers_until(&self, t: EventTime) -> bool {
        self.covered_from.is_some() && t.as_micros() <= self.covered_until
    }

    /// Covers nothing until started again: after a reset (a batch this instance staged
    /// may be lost, another instance may have recorded keys) or an assignment change.
    pub(super) fn forget(&mut self) {
        self.covered_from = None;
        self.minutes.clear();
        self.len = 0;
        self.staged_until.clear();
    }

    /// Notes how far this instance staged each partition of a batch.
    pub(super) fn staged_until<'a>(&mut self, ends: impl IntoIterator<Item = (&'a i32, &'a i64)>) {
        if self.covered_from.is_some() {
            self.staged_until
                .extend(ends.into_iter().map(|(p, n)| (*p, *n)));
        }
    }

    /// After partitions were assigned with their stored offsets: whether the set still
    /// holds (every one resumes where this instance's staging left it). If not, it is
    /// forgotten.
    pub(super) fn keep_if_resumed(
        &mut self,
        assigned: impl IntoIterator<Item = (i32, Option<i64>)>,
    ) {
        let resumed = assigned
            .into_iter()
            .all(|(p, stored)| stored.is_some() && self.staged_until.get(&p).copied() == stored);
        if !resumed {
            self.forget();
        }
    }

    /// Whether `k` certainly is not in the ledger (see the module docs); `false` means
    /// "probe it".
    pub(super) fn is_unseen(&self, k: &EventKey) -> bool {
        let Some(from) = self.covered_from else {
            return false;
        };
        let t = k.timestamp.as_micros();
        t >= from
            && t <= self.covered_until
            && !self
                .minutes
                .get(&t.div_euclid(MINUTE))
                .is_some_and(|s| s.contains(&self.hasher.hash_one(k)))
    }

    /// Remembers keys this instance staged.
    pub(super) fn insert<'a>(&mut self, keys: impl IntoIterator<Item = &'a EventKey>) {
        let Some(from) = self.covered_from else {
            return;
        };
        for k in keys {
            let t = k.timestamp.as_micros();
            if t < from || t > self.covered_until {
                continue;
            }
            let hash = self.hasher.hash_one(k);
            if self
                .minutes
                .entry(t.div_euclid(MINUTE))
                .or_default()
                .insert(hash)
            {
                self.len += 1;
            }
        }
        while self.len > Self::MAX_KEYS {
            let Some((minute, hashes)) = self.minutes.pop_first() else {
                break;
            };
            self.len -= hashes.len();
            // Every forgotten key is older than the next minute: from there on, the set
            // knows all keys it staged again.
            let next = minute.saturating_add(1).saturating_mul(MINUTE);
            self.covered_from = self.covered_from.map(|f| f.max(next));
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(micros: i64, n: u128) -> EventKey {
        EventKey {
            timestamp: EventTime::from_micros(micros),
            event_id: Uuid::from_u128(n),
        }
    }

    #[test]
    fn covers_only_keys_after_the_ledger_and_not_staged() {
        let mut r = RecentKeys::default();
        let newest = 10 * MINUTE;
        assert!(!r.is_unseen(&key(newest + 1, 1)), "not started: probe all");
        let until = EventTime::from_micros(newest + 60 * MINUTE);
        r.start(Some(EventTime::from_micros(newest)), until);
        assert!(!r.is_unseen(&key(newest, 1)), "the ledger may hold it");
        assert!(!r.is_unseen(&key(newest - MINUTE, 1)));
        assert!(r.is_unseen(&key(newest + 1, 1)));
        assert!(r.is_unseen(&key(until.as_micros(), 1)));
        assert!(
            !r.is_unseen(&key(until.as_micros() + 1, 1)),
            "beyond the bound: probe"
        );
        assert!(r.covers_until(until) && !r.covers_until(until.add_micros(1)));
        r.insert(&[key(newest + 1, 1), key(newest - 1, 2)]);
        assert!(!r.is_unseen(&key(newest + 1, 1)), "staged: probe it");
        assert!(r.is_unseen(&key(newest + 1, 3)), "same time, other id");
        assert!(r.is_unseen(&key(newest + 2, 1)), "same id, other time");
        assert_eq!(r.len(), 1, "keys before the covered time are not kept");
        r.forget();
        assert!(
            !r.is_unseen(&key(newest + 1, 3)),
            "after a reset: probe all"
        );
        r.start(None, EventTime::from_micros(i64::MAX));
        assert!(
            r.is_unseen(&key(i64::MIN / 2, 3)),
            "an empty ledger covers all"
        );
    }

    #[test]
    fn a_suspension_outlives_a_reset() {
        let mut r = RecentKeys::default();
        assert!(!r.is_suspended());
        r.suspend();
        r.forget();
        r.start(None, EventTime::from_micros(i64::MAX));
        assert!(r.is_suspended());
    }

    #[test]
    fn kept_only_when_every_assigned_partition_resumes_where_it_staged() {
        let mut r = RecentKeys::default();
        r.start(None, EventTime::from_micros(i64::MAX));
        r.staged_until([(&0, &10), (&1, &7)]);
        r.keep_if_resumed([(0, Some(10)), (1, Some(7))]);
        assert!(r.is_started());
        // Partition 1 went on elsewhere (or a batch of ours never committed).
        r.keep_if_resumed([(0, Some(10)), (1, Some(9))]);
        assert!(!r.is_started());
        r.start(None, EventTime::from_micros(i64::MAX));
        r.keep_if_resumed([(2, None)]);
        assert!(!r.is_started(), "a partition it never staged");
    }

    #[test]
    fn past_its_bound_it_forgets_whole_minutes_and_probes_them_again() {
        let mut r = RecentKeys::default();
        r.start(None, EventTime::from_micros(i64::MAX));
        let per_minute = RecentKeys::MAX_KEYS as u128 / 4;
        let keys: Vec<EventKey> = (0..5 * per_minute)
            .map(|n| key((n / per_minute) as i64 * MINUTE + (n % 1000) as i64, n))
            .collect();
        r.insert(&keys);
        assert!(r.len() <= RecentKeys::MAX_KEYS);
        // The first minute is forgotten: its keys (staged or not) are probed again.
        assert!(!r.is_unseen(&keys[0]));
        assert!(!r.is_unseen(&key(5, u128::MAX)));
        // The newest minutes are known.
        assert!(!r.is_unseen(keys.last().unwrap()));
        assert!(r.is_unseen(&key(4 * MINUTE + 7, u128::MAX)));
    }
}
