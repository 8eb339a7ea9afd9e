//! The driver: pulls records from the simulator into a sink, paced or flat out, until a
//! count, a duration or a stop signal; shows a live line on a terminal; summarises.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sim::{SimStats, Simulator};
use crate::sink::{Sink, SinkError};

/// How long to run and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many records (events + duplicates + malformed).
    pub count: Option<u64>,
    /// Stop after this much wall-clock time.
    pub duration: Option<Duration>,
    /// Send each record when its simulated send time comes (real time); otherwise as fast
    /// as the sink takes them, event times still spaced as if at `--eps`.
    pub pace: bool,
    /// Replay speed when pacing: event time runs this many times faster than the wall clock.
    pub speed: f64,
    /// Print a live progress line to stderr.
    pub progress: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current record.
    pub stop: Arc<AtomicBool>,
    /// How long the final flush may take.
    pub flush_timeout: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    /// The simulator's counts.
    pub stats: SimStats,
    /// Key + value bytes handed to the sink.
    pub bytes: u64,
    /// Wall-clock time including the final flush.
    pub elapsed: Duration,
}

impl RunSummary {
    /// Records per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.stats.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} records in {:.2}s ({:.0}/s, {:.1} MB): {} events ({} late), {} duplicates, {} malformed; {} visits ({} bots, {} flash-sale), {} purchase lines",
            s.records,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.bytes as f64 / 1e6,
            s.events,
            s.late,
            s.duplicates,
            s.malformed,
            s.sessions,
            s.bot_sessions,
            s.flash_sessions,
            s.purchases
        )
    }
}

/// Runs the simulator into `sink` until a stop condition; flushes the sink at the end,
/// also after a stop signal, so nothing generated is left unsent.
pub fn run(
    sim: &mut Simulator,
    sink: &mut dyn Sink,
    opts: &RunOptions,
) -> Result<RunSummary, SinkError> {
    let started = Instant::now();
    let sim_start = sim.config().start;
    let mut bytes = 0u64;
    let mut last_report = started;
    let mut last_records = 0u64;
    let limit = opts.count.unwrap_or(u64::MAX);
    let mut n = 0u64;
    while n < limit {
        if opts.stop.load(Ordering::Relaxed) {
            break;
        }
        let r = sim.next_record();
        let due = Duration::from_micros(
            ((r.send_at.as_micros() - sim_start.as_micros()).max(0) as f64 / opts.speed) as u64,
        );
        sink.send(r.key, r.payload)?;
        bytes += (r.key.len() + r.payload.len()) as u64;
        n += 1;
        if opts.pace || n.is_multiple_of(1024) {
            let mut now = started.elapsed();
            if opts.pace && due > now + Duration::from_millis(2) {
                // Sleep in short slices so a stop signal is seen promptly.
                while due > now && !opts.stop.load(Ordering::Relaxed) {
                    std::thread::sleep((due - now).min(Duration::from_millis(100)));
                    now = started.elapsed();
                }
            }
            if opts.duration.is_some_and(|d| now >= d) {
                break;
            }
            if opts.progress && now - (last_report - started) >= Duration::from_millis(500) {
                let t = Instant::now();
                let rate = (n - last_records) as f64 / (t - last_report).as_secs_f64();
                let s = sim.stats();
                eprint!(
                    "\r\x1b[2K{n} records  {rate:>9.0}/s  late {}  dup {}  bad {}  visits {}  purchases {}",
                    s.late, s.duplicates, s.malformed, s.sessions, s.purchases
                );
                let _ = std::io::stderr().flush();
                last_report = t;
                last_records = n;
            }
        }
    }
    if opts.progress {
        eprintln!();
    }
    sink.flush(opts.flush_timeout)?;
    Ok(RunSummary {
        stats: sim.stats(),
        bytes,
        elapsed: started.elapsed(),
    })
}
