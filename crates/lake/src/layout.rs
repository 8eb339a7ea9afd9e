//! Where files live in the lake and what their names mean.
//!
//! ```text
//! <root>/bronze/ingest_date=YYYY-MM-DD/part-p003-00000000000000001000-00000000000000002000.parquet
//! <root>/silver/event_date=YYYY-MM-DD/event_type=purchase/part-p003-...-....parquet
//! <root>/gold/<table>/date=YYYY-MM-DD/part-0.parquet
//! ```
//!
//! A bronze or silver file holds the records of one Kafka partition with offsets in
//! `[start, end)`, both in its name. Files are staged on local disk and published under
//! their final name when complete (a rename in a directory, an upload to an object store:
//! no object is ever renamed or appended to); the bronze file of a range is published last,
//! so it is the commit: a range is in the lake exactly when its bronze file is, and readers
//! skip silver files of ranges without one. On start the writer resumes each partition at
//! the largest committed `end`, and deletes staged files and silver files of ranges that
//! were never committed. Names are deterministic, so a repeated range writes the same names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{Backend, LakeFile, Source};
use crate::LakeError;

/// A file's Kafka partition and offset range (`end` exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// Kafka partition.
    pub partition: i32,
    /// First offset in the file.
    pub start: i64,
    /// One past the last offset covered (records in between may be absent from silver).
    pub end: i64,
}

impl Range {
    /// `part-pPPP-SSSS-EEEE.parquet`.
    pub fn file_name(&self) -> String {
        format!(
            "part-p{:03}-{:020}-{:020}.parquet",
            self.partition, self.start, self.end
        )
    }

    /// Parses a name made by [`Range::file_name`].
    pub fn parse(name: &str) -> Option<Range> {
        let rest = name.strip_prefix("part-p")?.strip_suffix(".parquet")?;
        let mut it = rest.split('-');
        let partition = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        let end = it.next()?.parse().ok()?;
        if it.next().is_some() || end < start {
            return None;
        }
        Some(Range {
            partition,
            start,
            end,
        })
    }
}

/// Where earlier versions noted records lost to retention (one JSON line per gap, at the
/// root of a local lake); still read.
pub const GAPS_FILE: &str = "_retention_gaps.jsonl";
/// Where the writer notes records lost to retention: one small object per gap (an object
/// store cannot append).
pub const GAPS_DIR: &str = "_retention_gaps";

/// FNV-1a 64 of a string (stable names derived from a location).
pub(crate) fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The lake: a local directory or an object store prefix (see [`crate::store`]).
#[derive(Clone)]
pub struct Lake {
    backend: Arc<Backend>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lake").field(&self.location()).finish()
    }
}

impl Lake {
    /// The lake in the local directory `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Lake {
        Lake {
            backend: Arc::new(Backend::Local(root.into())),
        }
    }

    /// The lake at `location`: a directory, `file:///dir`, or an object store URL
    /// (`s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`), configured by
    /// the usual `AWS_*`, `GOOGLE_*` and `AZURE_*` environment variables.
    pub fn open(location: &str) -> Result<Lake, LakeError> {
        Lake::open_with(location, crate::store::store_options())
    }

    /// [`Lake::open`] with explicit object store options (`aws_endpoint`,
    /// `aws_access_key_id`, ...) instead of the environment's.
    pub fn open_with(
        location: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Lake, LakeError> {
        Ok(Lake {
            backend: Arc::new(Backend::open(location, options)?),
        })
    }

    /// Where the lake is (a directory or a URL), for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The local directory, when the lake is one.
    pub fn local_root(&self) -> Option<&Path> {
        self.backend.local_root()
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Key of the bronze directory of one ingest date.
    pub fn bronze_dir(&self, date: &str) -> String {
        format!("bronze/ingest_date={date}")
    }

    /// Key of the silver directory of one event date and type.
    pub fn silver_dir(&self, date: &str, event_type: &str) -> String {
        format!("silver/event_date={date}/event_type={event_type}")
    }

    /// Key of the gold file of one table and date.
    pub fn gold_file(&self, table: &str, date: &str) -> LakeFile {
        LakeFile::new(format!("gold/{table}/date={date}/part-0.parquet"))
    }

    /// Whether the lake has `file`.
    pub fn exists(&self, file: &LakeFile) -> Result<bool, LakeError> {
        self.backend.exists(file.key())
    }

    /// Opens `file` for the Parquet reader.
    pub fn open_file(&self, file: &LakeFile) -> Result<Source, LakeError> {
        self.backend.open_file(file)
    }

    /// Publishes the finished local file `staged` as `file` (whole or not at all; large
    /// files are uploaded in parts) and removes the local copy.
    pub fn publish(&self, staged: &Path, file: &LakeFile) -> Result<(), LakeError> {
        self.backend.publish(staged, file.key())
    }

    /// Writes `body` as `file`, replacing it whole (gold files).
    pub fn put(&self, file: &LakeFile, body: Vec<u8>) -> Result<(), LakeError> {
        self.backend.put(file.key(), body.into())
    }

    /// Every file under `prefix` (a layer, a directory), whatever its name.
    pub fn keys(&self, prefix: &str) -> Result<Vec<LakeFile>, LakeError> {
        self.backend.list(prefix)
    }

    fn ranges(&self, prefix: &str) -> Result<Vec<(LakeFile, Range)>, LakeError> {
        let mut out: Vec<(LakeFile, Range)> = self
            .backend
            .list(prefix)?
            .into_iter()
            .filter_map(|f| Range::parse(f.name()).map(|r| (f, r)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Every file under `layer` (`bronze` / `silver`) as (file, range), sorted; silver
    /// includes files of ranges still being published (see [`Lake::committed_silver`]).
    pub fn files(&self, layer: &str) -> Result<Vec<(LakeFile, Range)>, LakeError> {
        self.ranges(layer)
    }

    /// Committed silver files of one event date (all types), sorted by partition and
    /// offset: files of a range whose bronze file (the commit) is not there yet, because
    /// the writer is publishing it or crashed doing so, are left out.
    pub fn silver_files_of(&self, date: &str) -> Result<Vec<(LakeFile, Range)>, LakeError> {
        let committed: std::collections::HashSet<Range> =
            self.files("bronze")?.into_iter().map(|(_, r)| r).collect();
        Ok(self
            .ranges(&format!("silver/event_date={date}"))?
            .into_iter()
            .filter(|(_, r)| committed.contains(r))
            .collect())
    }

    /// Event dates that have silver data, sorted.
    pub fn silver_dates(&self) -> Result<Vec<String>, LakeError> {
        let mut out: Vec<String> = self
            .backend
            .dirs("silver")?
            .into_iter()
            .filter_map(|n| n.strip_prefix("event_date=").map(String::from))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Records that retention deleted offsets `[from, to)` of `partition` before the lake
    /// read them, as one object under `_retention_gaps/` (read by `status`).
    pub fn record_gap(&self, partition: i32, from: i64, to: i64) -> Result<(), LakeError> {
        let body = format!(
            "{{\"partition\":{partition},\"from\":{from},\"to\":{to},\"records\":{},\"detected_at\":\"{}\"}}\n",
            to - from,
            clickstream_model::EventTime::now()
        );
        let key = format!("{GAPS_DIR}/p{partition:03}-{from:020}-{to:020}.json");
        self.backend.put(&key, body.into_bytes().into())
    }

    /// Records lost to retention so far, per partition (from [`Lake::record_gap`], and the
    /// single file of earlier versions).
    pub fn retention_gaps(&self) -> Result<HashMap<i32, i64>, LakeError> {
        let mut text = String::new();
        let mut files = self.backend.list(GAPS_DIR)?;
        if self.backend.exists(GAPS_FILE)? {
            files.push(LakeFile::new(GAPS_FILE));
        }
        for f in files {
            let body = self.backend.read_all(&f)?;
            text.push_str(&String::from_utf8_lossy(&body));
            text.push('\n');
        }
        let mut out = HashMap::new();
        for line in text.lines() {
            let field = |name: &str| -> Option<i64> {
                let rest = line.split(&format!("\"{name}\":")).nth(1)?;
                rest.split([',', '}']).next()?.parse().ok()
            };
            if let (Some(p), Some(n)) = (field("partition"), field("records")) {
                *out.entry(p as i32).or_insert(0) += n;
            }
        }
        Ok(out)
    }

    /// Committed end offset per partition: the largest `end` of its bronze files.
    pub fn committed_offsets(&self) -> Result<HashMap<i32, i64>, LakeError> {
        let mut out: HashMap<i32, i64> = HashMap::new();
        for (_, r) in self.files("bronze")? {
            let e = out.entry(r.partition).or_insert(0);
            *e = (*e).max(r.end);
        }
        Ok(out)
    }

    /// Removes what a crash can leave behind: staged files, and silver files of ranges
    /// whose bronze file (the commit) was never published. Returns how many files were
    /// removed.
    pub fn recover(&self) -> Result<usize, LakeError> {
        let mut removed = self.backend.clear_staging()?;
        let committed = self.committed_offsets()?;
        for (file, r) in self.files("silver")? {
            if r.start >= committed.get(&r.partition).copied().unwrap_or(0) {
                self.backend.delete(file.key())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_offset() {
        let r = Range {
            partition: 3,
            start: 1000,
            end: 20_000,
        };
        assert_eq!(Range::parse(&r.file_name()), Some(r));
        let a = Range {
            partition: 1,
            start: 999,
            end: 1000,
        }
        .file_name();
        let b = Range {
            partition: 1,
            start: 1000,
            end: 1001,
        }
        .file_name();
        assert!(a < b, "lexical order is offset order");
        for bad in [
            "part-p1-2.parquet",
            "part-p1-5-3.parquet",
            "x.parquet",
            "part-p1-1-2-3.parquet",
        ] {
            assert_eq!(Range::parse(bad), None, "{bad}");
        }
    }
}
