//! Request bodies into events: gzip, a JSON array or NDJSON, then per event the same
//! validation the processor applies, enrichment, and validation again.
//!
//! Every event the collector produces passes `parse_event` with the processor's bounds
//! after enrichment, so the processor never dead-letters what the collector accepted
//! (short of a clock moving on between them).

use std::io::Read;

use clickstream_model::{parse_event, printable, ContractLimits, RejectReason};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::enrich::{Enricher, RequestFacts};

/// Why a whole request was refused before looking at its events.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the body limit (compressed, or once decompressed).
    #[error("request body over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// `Content-Encoding: gzip` but not gzip.
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    /// Neither a JSON array nor NDJSON of objects.
    #[error("body is neither a JSON array nor newline-delimited JSON: {0}")]
    NotJson(String),
    /// More events than one request may carry.
    #[error("{count} events in one request; at most {limit} are accepted")]
    TooManyEvents {
        /// Events found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// No events at all.
    #[error("the request carries no events")]
    Empty,
    /// A content type the collector does not read.
    #[error("unsupported content encoding `{0}` (send identity or gzip)")]
    Encoding(String),
}

impl BodyError {
    /// Machine-readable code for the response body.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "body_too_large",
            BodyError::BadGzip(_) => "bad_gzip",
            BodyError::NotJson(_) => "not_json",
            BodyError::TooManyEvents { .. } => "too_many_events",
            BodyError::Empty => "no_events",
            BodyError::Encoding(_) => "unsupported_encoding",
        }
    }
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (a small bomb must
/// not expand into memory).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

/// The events of a body: the elements of a JSON array, or the non-blank lines of NDJSON
/// (a single object is one line). An element or line that is not a valid event is still
/// returned: it is rejected on its own, by index.
pub fn split(body: &[u8], max_events: usize) -> Result<Vec<&[u8]>, BodyError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(BodyError::Empty)?;
    let events: Vec<&[u8]> = if body[start] == b'[' {
        let items: Vec<&RawValue> = serde_json::from_slice(body)
            .map_err(|e| BodyError::NotJson(printable(&e.to_string(), 200)))?;
        items.into_iter().map(|r| r.get().as_bytes()).collect()
    } else if body[start] == b'{' {
        body.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .collect()
    } else {
        return Err(BodyError::NotJson(
            "expected `[` (JSON array) or `{` (NDJSON)".into(),
        ));
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    if events.len() > max_events {
        return Err(BodyError::TooManyEvents {
            count: events.len(),
            limit: max_events,
        });
    }
    Ok(events)
}

/// One refused event of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// Position in the request (0-based).
    pub index: usize,
    /// The DLQ reason code (`missing_field`, ...).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// An event ready for Kafka.
pub struct Accepted {
    /// Record key: the user id as text.
    pub key: String,
    /// The enriched event's JSON.
    pub value: Vec<u8>,
}

/// The outcome of a request's events.
#[derive(Default)]
pub struct Sorted<'a> {
    /// Events to produce.
    pub accepted: Vec<Accepted>,
    /// Refused events with their original bytes.
    pub rejected: Vec<(Rejected, &'a [u8])>,
    /// Largest clock correction applied, µs (for the skew histogram).
    pub corrections: Vec<i64>,
}

/// Validates, enriches and re-validates each event.
pub fn sort<'a>(
    events: &[&'a [u8]],
    limits: &ContractLimits,
    enricher: &Enricher,
    facts: &RequestFacts,
) -> Sorted<'a> {
    let now = facts.received_at;
    let strict = limits.policy(now);
    // Before correction a device clock may be ahead by more than the contract allows:
    // the first pass only bounds it by the event-age limit in both directions.
    let mut lenient = strict;
    lenient.max_future_micros = limits.max_age_micros;
    let mut out = Sorted::default();
    for (index, raw) in events.iter().enumerate() {
        let result = parse_event(raw, &lenient).and_then(|mut e| {
            let skew = enricher.enrich(&mut e, facts);
            let value = e.to_json();
            // The processor's own check, on what it will read.
            parse_event(&value, &strict)?;
            Ok((e.user_id, value, skew))
        });
        match result {
            Ok((user, value, skew)) => {
                if skew != 0 {
                    out.corrections.push(skew);
                }
                out.accepted.push(Accepted {
                    key: user.hyphenated().to_string(),
                    value,
                });
            }
            Err(r) => out.rejected.push((rejection(index, &r), raw)),
        }
    }
    out
}

fn rejection(index: usize, r: &RejectReason) -> Rejected {
    Rejected {
        index,
        reason: r.code(),
        detail: printable(&r.to_string(), 300),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_ndjson_and_single_objects_split_by_event() {
        let a = split(br#" [{"a":1}, {"b":[1,2]}, 3, "x"] "#, 10).unwrap();
        assert_eq!(
            a,
            vec![&br#"{"a":1}"#[..], br#"{"b":[1,2]}"#, b"3", br#""x""#]
        );
        let n = split(b"{\"a\":1}\r\n\n  \n{\"b\":2\n{broken\n", 10).unwrap();
        assert_eq!(n, vec![&b"{\"a\":1}"[..], b"{\"b\":2", b"{broken"]);
        assert_eq!(split(br#"{"a":1}"#, 10).unwrap().len(), 1);
        for (body, code) in [
            (&b""[..], "no_events"),
            (b"  \n ", "no_events"),
            (b"[]", "no_events"),
            (b"[{\"a\":1}", "not_json"),
            (b"hello", "not_json"),
            (b"[1,2,3]", "too_many_events"),
        ] {
            assert_eq!(split(body, 2).unwrap_err().code(), code, "{body:?}");
        }
    }

    #[test]
    fn gzip_is_bounded_after_inflating() {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![b' '; 1 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() < 4096);
        assert_eq!(
            gunzip(&bomb, 64 * 1024).unwrap_err().code(),
            "body_too_large"
        );
        assert_eq!(gunzip(&bomb, 2 << 20).unwrap().len(), 1 << 20);
        assert_eq!(gunzip(b"not gzip", 1024).unwrap_err().code(), "bad_gzip");
    }
}
