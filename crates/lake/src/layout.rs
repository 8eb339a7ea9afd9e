//! Where files live in the lake and what their names mean.
//!
//! ```text
//! <root>/bronze/ingest_date=YYYY-MM-DD/part-p003-00000000000000001000-00000000000000002000.parquet
//! <root>/silver/event_date=YYYY-MM-DD/event_type=purchase/part-p003-...-....parquet
//! <root>/gold/<table>/date=YYYY-MM-DD/part-0.parquet
//! ```
//!
//! A bronze or silver file holds the records of one Kafka partition with offsets in
//! `[start, end)`, both in its name. Files are written as `*.tmp` and renamed when complete;
//! the bronze file of a range is renamed last, so it is the commit: a range is in the lake
//! exactly when its bronze file is. On start the writer resumes each partition at the
//! largest committed `end`, and deletes temporary files and silver files of ranges that were
//! never committed. Names are deterministic, so a repeated range rewrites the same names.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// Where the writer notes records lost to retention.
pub const GAPS_FILE: &str = "_retention_gaps.jsonl";

/// The lake's root directory.
#[derive(Debug, Clone)]
pub struct Lake {
    root: PathBuf,
}

impl Lake {
    /// The lake under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Lake {
        Lake { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bronze directory of one ingest date.
    pub fn bronze_dir(&self, date: &str) -> PathBuf {
        self.root.join("bronze").join(format!("ingest_date={date}"))
    }

    /// Silver directory of one event date and type.
    pub fn silver_dir(&self, date: &str, event_type: &str) -> PathBuf {
        self.root
            .join("silver")
            .join(format!("event_date={date}"))
            .join(format!("event_type={event_type}"))
    }

    /// Gold directory of one table and date.
    pub fn gold_dir(&self, table: &str, date: &str) -> PathBuf {
        self.root
            .join("gold")
            .join(table)
            .join(format!("date={date}"))
    }

    /// Every file under `layer` (`bronze` / `silver`) as (path, range), sorted.
    pub fn files(&self, layer: &str) -> io::Result<Vec<(PathBuf, Range)>> {
        let mut out = Vec::new();
        walk(&self.root.join(layer), &mut |p| {
            if let Some(r) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Range::parse)
            {
                out.push((p.to_path_buf(), r));
            }
        })?;
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Silver files of one event date (all types), sorted by partition and offset.
    pub fn silver_files_of(&self, date: &str) -> io::Result<Vec<(PathBuf, Range)>> {
        let mut out = Vec::new();
        walk(
            &self.root.join("silver").join(format!("event_date={date}")),
            &mut |p| {
                if let Some(r) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Range::parse)
                {
                    out.push((p.to_path_buf(), r));
                }
            },
        )?;
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Event dates that have silver data, sorted.
    pub fn silver_dates(&self) -> io::Result<Vec<String>> {
        let dir = self.root.join("silver");
        let mut out = Vec::new();
        if !dir.exists() {
            return Ok(out);
        }
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            if let Some(d) = name.to_str().and_then(|n| n.strip_prefix("event_date=")) {
                out.push(d.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Records that retention deleted offsets `[from, to)` of `partition` before the lake
    /// read them: one JSON line in `_retention_gaps.jsonl` at the root (read by `status`).
    pub fn record_gap(&self, partition: i32, from: i64, to: i64) -> io::Result<()> {
        use std::io::Write;
        fs::create_dir_all(&self.root)?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(GAPS_FILE))?;
        writeln!(
            f,
            "{{\"partition\":{partition},\"from\":{from},\"to\":{to},\"records\":{},\"detected_at\":\"{}\"}}",
            to - from,
            clickstream_model::EventTime::now()
        )
    }

    /// Records lost to retention so far, per partition (from [`Lake::record_gap`]).
    pub fn retention_gaps(&self) -> io::Result<HashMap<i32, i64>> {
        let text = match fs::read_to_string(self.root.join(GAPS_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(e),
        };
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
    pub fn committed_offsets(&self) -> io::Result<HashMap<i32, i64>> {
        let mut out: HashMap<i32, i64> = HashMap::new();
        for (_, r) in self.files("bronze")? {
            let e = out.entry(r.partition).or_insert(0);
            *e = (*e).max(r.end);
        }
        Ok(out)
    }

    /// Removes what a crash can leave behind: temporary files, and silver files of ranges
    /// whose bronze file (the commit) was never renamed into place. Returns how many
    /// files were removed.
    pub fn recover(&self) -> io::Result<usize> {
        let committed = self.committed_offsets()?;
        let mut doomed = Vec::new();
        for layer in ["bronze", "silver"] {
            walk(&self.root.join(layer), &mut |p| {
                if p.extension().is_some_and(|e| e == "tmp") {
                    doomed.push(p.to_path_buf());
                }
            })?;
        }
        for (path, r) in self.files("silver")? {
            if r.start >= committed.get(&r.partition).copied().unwrap_or(0) {
                doomed.push(path);
            }
        }
        for p in &doomed {
            fs::remove_file(p)?;
        }
        Ok(doomed.len())
    }
}

/// Calls `f` for every regular file below `dir` (missing `dir` = nothing).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            walk(&e.path(), f)?;
        } else if ty.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

/// Makes a rename durable: fsync of the directory that holds the new name.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
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
