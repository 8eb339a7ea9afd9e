//! The clickstream event contract (schema version 1), shared by every stage.
//!
//! # Layout
//!
//! - [`time`]: [`EventTime`], a UTC instant with microsecond precision and a fast RFC 3339
//!   encoder (the generator writes millions of them a second).
//! - [`event`]: [`Event`] and its parts, and how an event is written as JSON.
//! - [`validate`]: turning untrusted Kafka record bytes into an [`Event`], or into a
//!   [`RejectReason`] that says, machine-readably, what was wrong.
//! - [`catalog`]: [`Product`], the catalog row the simulator invents and dashboards join on.
//!
//! This crate does no I/O. The user-facing description of the wire format is
//! `docs/event-schema.json` (JSON Schema) and `docs/events.md`.

pub mod catalog;
pub mod event;
pub mod time;
pub mod validate;

pub use catalog::Product;
pub use event::{Event, EventKey, EventType, Money};
pub use time::EventTime;
pub use validate::{
    parse_event, printable, ContractLimits, RejectReason, ValidationPolicy, DAY_MICROS,
};

/// The only schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
