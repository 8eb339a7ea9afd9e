//! The simulator: interleaves visits in event time, shapes traffic, injects faults.
//!
//! Three queues are merged by the time a record is due to be *sent*:
//! visits in progress (by their next event time), the next visit arrival (a Poisson
//! process whose rate follows `--eps` and the optional daily cycle), and delayed records
//! (late events and re-sent duplicates). Send times never go backwards, so a driver can
//! pace records against the wall clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::f64::consts::PI;

use clickstream_model::{Event, EventTime, EventType, Product};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::{Rng, SeedableRng};
use rand_distr::Exp;
use rand_pcg::Pcg64Mcg;
use uuid::Uuid;

use crate::catalog::build_catalog;
use crate::config::SimConfig;
use crate::faults::{corrupt, FaultKind};
use crate::session::{Kind, Session, Visitor, World};
use crate::users::{build_users, user_agent_for, uuid_from, User};

/// What a record is, from the simulator's point of view (the ground truth tests use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A valid event sent on time.
    Event,
    /// A valid event sent after later events (its delay is `send_at - timestamp`).
    Late,
    /// A byte-identical re-send of an event already sent.
    Duplicate,
    /// A malformed record.
    Malformed(FaultKind),
}

/// One record to send. Borrowed from the simulator until the next call.
#[derive(Debug)]
pub struct Record<'a> {
    /// Kafka key: the user id in hyphenated form.
    pub key: &'a [u8],
    /// Kafka value.
    pub payload: &'a [u8],
    /// Ground truth about the record.
    pub kind: RecordKind,
    /// Simulated send time (never decreases from one record to the next).
    pub send_at: EventTime,
}

/// Counts of what the simulator has emitted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// All records.
    pub records: u64,
    /// Distinct valid events (on time or late).
    pub events: u64,
    /// Valid events sent late.
    pub late: u64,
    /// Re-sent duplicates.
    pub duplicates: u64,
    /// Malformed records.
    pub malformed: u64,
    /// Visits started, and how many of them were bots / flash-sale visitors.
    pub sessions: u64,
    /// Visits by bots.
    pub bot_sessions: u64,
    /// Visits by flash-sale visitors.
    pub flash_sessions: u64,
    /// Visits by users who had visited before.
    pub returning_sessions: u64,
    /// Purchase events (order lines).
    pub purchases: u64,
}

enum Immediate {
    Valid(Box<Event>),
    Raw {
        kind: RecordKind,
        key: Uuid,
        payload: Vec<u8>,
        send_at: EventTime,
    },
}

enum Delayed {
    // Boxed: late events are rare and this keeps duplicate entries small in the heap.
    Late(Box<Event>),
    Duplicate { key: Uuid, payload: Vec<u8> },
}

/// Heap entry ordered by (time, sequence) so ties break deterministically.
struct Due<T> {
    at: EventTime,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Due<T> {}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Due<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The behavioural simulator. Deterministic: same config, same records.
pub struct Simulator {
    world: World,
    rng: Pcg64Mcg,
    users: Vec<User>,
    /// Users `0..seen` have visited before.
    seen: usize,
    countries: WeightedIndex<f64>,
    /// Visits in progress live in a slab; the heap holds only (time, seq, slot), because
    /// sifting whole sessions through the heap dominated the profile.
    visits: BinaryHeap<Reverse<Due<usize>>>,
    slots: Vec<Option<Session>>,
    free_slots: Vec<usize>,
    delayed: BinaryHeap<Reverse<Due<Delayed>>>,
    /// Records to send before anything else (a visit's events, malformed siblings).
    immediate: VecDeque<Immediate>,
    step_out: Vec<Event>,
    next_arrival: EventTime,
    /// Mean seconds between visit arrivals at cycle factor 1.
    mean_gap_secs: f64,
    seq: u64,
    flash_cache: Option<(i64, Vec<usize>)>,
    late_delay: Exp<f64>,
    buf: Vec<u8>,
    key: [u8; 36],
    last_send: EventTime,
    stats: SimStats,
}

impl Simulator {
    /// Builds the catalog, the users and calibrates the visit arrival rate to `cfg.eps`.
    pub fn new(cfg: SimConfig) -> Result<Self, String> {
        cfg.validate()?;
        let catalog = build_catalog(cfg.products, cfg.catalog_seed);
        // The population depends on the seed alone, so users return across runs; the stream
        // (event, session and order ids) also depends on the start time, so two runs with
        // the default `--start now` never reuse an event id (which dedup would drop).
        let users = build_users(&cfg, &mut Pcg64Mcg::seed_from_u64(cfg.seed));
        let stream_seed =
            cfg.seed ^ (cfg.start.as_micros() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let rng = Pcg64Mcg::seed_from_u64(stream_seed);
        let countries = WeightedIndex::new(cfg.country_mix.iter().map(|(_, w)| *w))
            .map_err(|e| format!("country mix: {e}"))?;
        let late_delay = Exp::new(1.0 / cfg.faults.late_mean_secs.max(1e-3))
            .map_err(|e| format!("late delay: {e}"))?;
        let start = cfg.start;
        // Visits start before `start` and their earlier events are dropped, so the stream
        // opens at steady state instead of ramping up from zero open visits. Capped so a
        // very high --eps does not spend long warming up.
        let warmup_secs = (1_000_000.0 / cfg.eps).min(600.0);
        let world = World::new(cfg, catalog);
        let mut sim = Simulator {
            world,
            rng,
            users,
            seen: 0,
            countries,
            visits: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            delayed: BinaryHeap::new(),
            immediate: VecDeque::new(),
            step_out: Vec::with_capacity(8),
            next_arrival: start.add_micros(-(warmup_secs * 1e6) as i64),
            mean_gap_secs: 1.0,
            seq: 0,
            flash_cache: None,
            late_delay,
            buf: Vec::with_capacity(1024),
            key: [0; 36],
            last_send: start,
            stats: SimStats::default(),
        };
        let per_visit = sim.calibrate();
        sim.mean_gap_secs = per_visit / sim.world.cfg.eps;
        Ok(sim)
    }

    /// The product catalog in use.
    pub fn catalog(&self) -> &[Product] {
        &self.world.catalog
    }

    /// The settings in use.
    pub fn config(&self) -> &SimConfig {
        &self.world.cfg
    }

    /// Counts so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Mean events per visit, estimated by simulating visits on a side generator so the
    /// arrival rate can be set to hit `eps` events per second.
    fn calibrate(&mut self) -> f64 {
        let mut rng = Pcg64Mcg::seed_from_u64(self.world.cfg.seed ^ 0x5EED_CA11_B4A7_E000);
        let period = self.world.cfg.flash_sale.every_secs.max(1) as i64 * 1_000_000;
        let n = 4000;
        let mut total = 0u64;
        let mut out = Vec::new();
        for _ in 0..n {
            let at = self.world.cfg.start.add_micros(rng.random_range(0..period));
            let visitor = self.visitor_for_bot(&mut rng);
            let kind = self.kind_for(at, &mut rng);
            let mut s = Session::new(visitor, kind, at, &mut rng, &self.world);
            while !s.finished {
                out.clear();
                s.step(&self.world, &mut rng, &mut out);
                total += out.len() as u64;
            }
        }
        total as f64 / n as f64
    }

    fn visitor_for_bot(&self, rng: &mut impl Rng) -> Visitor {
        let agents = &self.world.pages.bot_agents;
        // Most bots say so in their user agent; some pose as a desktop browser.
        let ua = if rng.random_bool(0.6) {
            agents[rng.random_range(0..agents.len())].clone()
        } else {
            user_agent_for("desktop", rng).into()
        };
        let c = self.countries.sample(rng);
        Visitor {
            user_id: uuid_from(rng),
            device: "desktop".into(),
            country: self.world.cfg.country_mix[c].0.as_str().into(),
            user_agent: ua,
        }
    }

    /// Products promoted by the campaign running at `at`, if any.
    fn flash_products(&mut self, at: EventTime) -> Option<Vec<usize>> {
        let fs = &self.world.cfg.flash_sale;
        if fs.every_secs == 0 || fs.products == 0 {
            return None;
        }
        let since = at.as_micros() - self.world.cfg.start.as_micros();
        let every = fs.every_secs as i64 * 1_000_000;
        let idx = since.div_euclid(every);
        if since.rem_euclid(every) >= fs.duration_secs as i64 * 1_000_000 {
            return None;
        }
        if let Some((i, p)) = &self.flash_cache {
            if *i == idx {
                return Some(p.clone());
            }
        }
        // Long-tail products, so the campaign's views dwarf their usual sales.
        let mut rng = Pcg64Mcg::seed_from_u64(
            self.world.cfg.seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let n = self.world.by_rank.len();
        let mut picks: Vec<usize> = Vec::new();
        while picks.len() < fs.products {
            let rank = rng.random_range(n / 2..n);
            let p = self.world.by_rank[rank];
            if !picks.contains(&p) {
                picks.push(p);
            }
        }
        self.flash_cache = Some((idx, picks.clone()));
        Some(picks)
    }

    fn kind_for(&mut self, at: EventTime, rng: &mut impl Rng) -> Kind {
        let bot_share = self.world.cfg.bot_share;
        let flash_share = self.world.cfg.flash_sale.share;
        if rng.random_bool(bot_share) {
            return Kind::Bot {
                pages_left: rng.random_range(30..=150),
            };
        }
        if let Some(products) = self.flash_products(at) {
            if rng.random_bool(flash_share) {
                return Kind::FlashVisitor {
                    products,
                    views_left: rng.random_range(3..=10),
                };
            }
        }
        Kind::Shopper
    }

    fn traffic_factor(&self, at: EventTime) -> f64 {
        if !self.world.cfg.daily_cycle {
            return 1.0;
        }
        let hour = at.as_micros().rem_euclid(86_400 * 1_000_000) as f64 / 3.6e9;
        1.0 + 0.6 * (2.0 * PI * (hour - 20.0) / 24.0).cos()
    }

    fn start_visit(&mut self) {
        let at = self.next_arrival;
        let mut rng = std::mem::replace(&mut self.rng, Pcg64Mcg::new(0));
        let kind = self.kind_for(at, &mut rng);
        // Visits of the warm-up (before `start`) are not counted: their events are dropped.
        let counted = u64::from(at >= self.world.cfg.start);
        let visitor = if matches!(kind, Kind::Bot { .. }) {
            self.stats.bot_sessions += counted;
            self.visitor_for_bot(&mut rng)
        } else {
            if matches!(kind, Kind::FlashVisitor { .. }) {
                self.stats.flash_sessions += counted;
            }
            let n = self.users.len();
            let returning = self.seen > 0
                && (self.seen >= n || rng.random_bool(self.world.cfg.returning_share));
            self.stats.returning_sessions += u64::from(returning) * counted;
            let idx = if returning {
                rng.random_range(0..self.seen)
            } else {
                self.seen += 1;
                self.seen - 1
            };
            let u = &self.users[idx];
            Visitor {
                user_id: u.id,
                device: u.device.clone(),
                country: u.country.clone(),
                user_agent: u.user_agent.clone(),
            }
        };
        let session = Session::new(visitor, kind, at, &mut rng, &self.world);
        self.stats.sessions += counted;
        let gap = -(1.0 - rng.random::<f64>()).ln() * self.mean_gap_secs / self.traffic_factor(at);
        self.next_arrival = at.add_micros((gap * 1e6) as i64);
        self.rng = rng;
        self.seq += 1;
        let slot = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = Some(session);
                i
            }
            None => {
                self.slots.push(Some(session));
                self.slots.len() - 1
            }
        };
        self.visits.push(Reverse(Due {
            at,
            seq: self.seq,
            item: slot,
        }));
    }

    fn set_key(&mut self, id: Uuid) {
        id.hyphenated().encode_lower(&mut self.key);
    }

    /// Serialises a valid event into `buf` and schedules its faults (duplicate, malformed sibling).
    fn emit_valid(&mut self, e: &Event, send_at: EventTime) {
        self.buf.clear();
        e.write_json(&mut self.buf);
        self.set_key(e.user_id);
        self.stats.events += 1;
        if e.event_type == EventType::Purchase {
            self.stats.purchases += 1;
        }
        let f = &self.world.cfg.faults;
        if self.rng.random_bool(f.duplicate_rate) {
            let delay = if self.rng.random_bool(f.late_duplicate_share) {
                self.rng.random_range(60.0..900.0)
            } else {
                -(1.0 - self.rng.random::<f64>()).ln() * 2.0
            };
            self.seq += 1;
            self.delayed.push(Reverse(Due {
                at: send_at.add_micros((delay * 1e6) as i64),
                seq: self.seq,
                item: Delayed::Duplicate {
                    key: e.user_id,
                    payload: self.buf.clone(),
                },
            }));
        }
        if self.rng.random_bool(f.malformed_rate) {
            let (kind, bytes) = corrupt(e, &mut self.rng);
            self.immediate.push_back(Immediate::Raw {
                kind: RecordKind::Malformed(kind),
                key: e.user_id,
                payload: bytes,
                send_at,
            });
        }
    }

    /// The next record to send. The stream never ends; callers decide when to stop.
    pub fn next_record(&mut self) -> Record<'_> {
        loop {
            if let Some(next) = self.immediate.pop_front() {
                return match next {
                    Immediate::Valid(e) => {
                        self.emit_valid(&e, e.timestamp);
                        self.record(RecordKind::Event, e.timestamp)
                    }
                    Immediate::Raw {
                        kind,
                        key,
                        payload,
                        send_at,
                    } => {
                        self.set_key(key);
                        self.buf = payload;
                        self.record(kind, send_at)
                    }
                };
            }
            let t_arrival = self.next_arrival;
            let t_delayed = self
                .delayed
                .peek()
                .map_or(EventTime::MAX, |Reverse(d)| d.at);
            let t_visit = self.visits.peek().map_or(EventTime::MAX, |Reverse(d)| d.at);
            if t_arrival <= t_delayed && t_arrival <= t_visit {
                self.start_visit();
            } else if t_delayed <= t_visit {
                let Some(Reverse(d)) = self.delayed.pop() else {
                    continue;
                };
                return match d.item {
                    Delayed::Late(e) => {
                        self.stats.late += 1;
                        self.emit_valid(&e, d.at);
                        self.record(RecordKind::Late, d.at)
                    }
                    Delayed::Duplicate { key, payload } => {
                        self.stats.duplicates += 1;
                        self.set_key(key);
                        self.buf = payload;
                        self.record(RecordKind::Duplicate, d.at)
                    }
                };
            } else {
                self.advance_visit();
            }
        }
    }

    /// Steps the visit due first; its events go out now, or to the delayed queue when late.
    fn advance_visit(&mut self) {
        let Some(Reverse(mut d)) = self.visits.pop() else {
            return;
        };
        let Some(session) = self.slots[d.item].as_mut() else {
            return;
        };
        let mut out = std::mem::take(&mut self.step_out);
        out.clear();
        session.step(&self.world, &mut self.rng, &mut out);
        if session.finished {
            self.slots[d.item] = None;
            self.free_slots.push(d.item);
        } else {
            d.at = session.next_at;
            self.seq += 1;
            d.seq = self.seq;
            self.visits.push(Reverse(d));
        }
        for e in out.drain(..) {
            if e.timestamp < self.world.cfg.start {
                continue;
            }
            if self.rng.random_bool(self.world.cfg.faults.late_rate) {
                let delay = 1.0 + self.late_delay.sample(&mut self.rng);
                self.seq += 1;
                self.delayed.push(Reverse(Due {
                    at: e.timestamp.add_micros((delay * 1e6) as i64),
                    seq: self.seq,
                    item: Delayed::Late(Box::new(e)),
                }));
            } else {
                self.immediate.push_back(Immediate::Valid(Box::new(e)));
            }
        }
        self.step_out = out;
    }

    fn record(&mut self, kind: RecordKind, send_at: EventTime) -> Record<'_> {
        // Order lines are a millisecond apart and may overtake another visit's next event.
        let send_at = send_at.max(self.last_send);
        self.last_send = send_at;
        self.stats.records += 1;
        if let RecordKind::Malformed(_) = kind {
            self.stats.malformed += 1;
        }
        Record {
            key: &self.key,
            payload: &self.buf,
            kind,
            send_at,
        }
    }
}
