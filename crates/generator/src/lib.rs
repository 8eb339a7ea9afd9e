//! The behavioural clickstream simulator behind `clickstream generate`.
//!
//! # Layout
//!
//! - [`config`]: every knob of the simulation, with defaults ([`SimConfig`]).
//! - [`catalog`]: the product catalog, deterministic from its own seed.
//! - [`users`]: the user population (device, country, user agent).
//! - `session`: one visit as a state machine (landing -> browse/search -> product views ->
//!   cart -> purchase or abandon), plus bot and flash-sale visitor variants.
//! - [`faults`]: how malformed records are made from good ones.
//! - [`sim`]: [`Simulator`], which interleaves sessions in event time, shapes traffic and
//!   injects late, duplicated and malformed records. Pure: no clock, no I/O.
//! - [`sink`]: where records go: Kafka, a JSON-lines file, stdout, or nowhere (benchmarks).
//! - [`run`]: the driver loop: pacing to wall-clock time, stop conditions, progress, summary.
//!
//! Same seed and settings give a byte-identical record stream: all randomness comes from
//! seeded PCG generators and nothing reads the clock except the driver's pacing.

pub mod catalog;
pub mod config;
pub mod faults;
pub mod run;
mod session;
pub mod sim;
pub mod sink;
pub mod users;

pub use config::SimConfig;
pub use run::{run, RunOptions, RunSummary};
pub use sim::{Record, RecordKind, Simulator};
pub use sink::{KafkaSink, NullSink, Sink, SinkError, WriterSink};
