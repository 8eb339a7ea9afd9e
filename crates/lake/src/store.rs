//! Where the lake's files live: a local directory, or an object store (S3 and
//! S3-compatible stores, Google Cloud Storage, Azure Blob Storage) through the
//! `object_store` crate, behind one small synchronous API shared by the writer, the gold
//! batch, `verify` and `status`.
//!
//! Files are named by keys relative to the lake's root (`silver/event_date=.../part-...`).
//! Nothing relies on renaming objects: the writer stages each file on local disk and
//! publishes it under its final, deterministic name, in an order that makes one object
//! the commit (see [`crate::layout`]). Locally publishing is a rename; in an object store
//! it is an upload, which becomes visible only once complete, so a writer killed mid-upload
//! leaves no partial object behind.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::file::reader::{ChunkReader, Length};

use crate::LakeError;

/// Files larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// A file of the lake, by its key relative to the lake's root (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LakeFile(String);

impl LakeFile {
    /// The file with this key.
    pub fn new(key: impl Into<String>) -> LakeFile {
        LakeFile(key.into())
    }

    /// Its key relative to the lake's root.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// Its name (the last segment of the key).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The value of a `name=value` segment of its key (a Hive-style partition column).
    pub fn partition_value(&self, name: &str) -> Option<&str> {
        self.0
            .split('/')
            .find_map(|s| s.strip_prefix(name)?.strip_prefix('='))
    }
}

impl std::fmt::Display for LakeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The storage behind a lake.
pub(crate) enum Backend {
    /// A directory on a local file system.
    Local(PathBuf),
    /// An object store.
    Remote(Remote),
}

/// An object store and the prefix of the lake in it.
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// Where files are written before they are uploaded.
    spool: PathBuf,
    /// Object store calls run here: callers are synchronous, and may be running inside
    /// another runtime (an async command, a blocking task), where blocking on its handle
    /// would panic. `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async caller: nothing is in
        // flight between calls, so let its threads go without waiting.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Remote {
    /// Runs `f` to completion on this store's runtime, from any thread.
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let rt = self.runtime.as_ref().expect("runtime present until drop");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        let rest: Vec<String> = path
            .prefix_match(&self.prefix)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(rest.join("/"))
    }
}

/// Environment variables that configure object stores (credentials, endpoints, regions),
/// in the names `object_store` reads (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`,
/// `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
pub(crate) fn store_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|p| k.to_ascii_uppercase().starts_with(p))
        })
        .collect()
}

impl Backend {
    /// `location`: a directory, `file:///dir`, or an object store URL (`s3://bucket/prefix`,
    /// `gs://...`, `az://container/prefix`, `abfss://...`).
    pub(crate) fn open(
        location: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Backend, LakeError> {
        let Some((scheme, _)) = location.split_once("://") else {
            return Ok(Backend::Local(PathBuf::from(location)));
        };
        let url = url::Url::parse(location)
            .map_err(|e| LakeError::Config(format!("lake URL `{location}`: {e}")))?;
        if scheme == "file" {
            let dir = url.to_file_path().map_err(|()| {
                LakeError::Config(format!("lake URL `{location}` is not a local path"))
            })?;
            return Ok(Backend::Local(dir));
        }
        let (store, prefix) = object_store::parse_url_opts(&url, options)
            .map_err(|e| LakeError::Config(format!("lake URL `{location}`: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lake-store")
            .enable_all()
            .build()
            .map_err(|e| LakeError::Config(format!("object store runtime: {e}")))?;
        let spool = std::env::temp_dir().join(format!(
            "clickstream-lake-spool-{:016x}",
            crate::layout::fnv(location)
        ));
        Ok(Backend::Remote(Remote {
            store: Arc::from(store),
            prefix,
            url: location.trim_end_matches('/').to_string(),
            spool,
            runtime: Some(runtime),
        }))
    }

    /// Where the lake is, for messages.
    pub(crate) fn location(&self) -> String {
        match self {
            Backend::Local(d) => d.display().to_string(),
            Backend::Remote(r) => r.url.clone(),
        }
    }

    /// Every file whose key starts with `prefix/`, recursively.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<LakeFile>, LakeError> {
        match self {
            Backend::Local(root) => {
                let mut out = Vec::new();
                walk(root, &root.join(prefix), &mut out).map_err(|e| LakeError::io(root, e))?;
                Ok(out)
            }
            Backend::Remote(r) => {
                let path = r.path(prefix);
                let metas: Vec<object_store::ObjectMeta> =
                    r.block_on(r.store.list(Some(&path)).try_collect())?;
                Ok(metas
                    .iter()
                    .filter_map(|m| r.key_of(&m.location))
                    .map(LakeFile)
                    .collect())
            }
        }
    }

    /// The names of the "directories" directly under `prefix/`.
    pub(crate) fn dirs(&self, prefix: &str) -> Result<Vec<String>, LakeError> {
        match self {
            Backend::Local(root) => {
                let dir = root.join(prefix);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(LakeError::io(&dir, e)),
                };
                let mut out = Vec::new();
                for e in entries {
                    let e = e.map_err(|e| LakeError::io(&dir, e))?;
                    if e.file_type().map_err(|e| LakeError::io(&dir, e))?.is_dir() {
                        out.extend(e.file_name().to_str().map(String::from));
                    }
                }
                Ok(out)
            }
            Backend::Remote(r) => {
                let path = r.path(prefix);
                let listed = r.block_on(r.store.list_with_delimiter(Some(&path)))?;
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(String::from))
                    .collect())
            }
        }
    }

    /// Opens a file for reading (object store files are fetched whole).
    pub(crate) fn open_file(&self, file: &LakeFile) -> Result<Source, LakeError> {
        match self {
            Backend::Local(root) => {
                let p = root.join(file.key());
                File::open(&p)
                    .map(Source::File)
                    .map_err(|e| LakeError::io(&p, e))
            }
            Backend::Remote(r) => {
                let path = r.path(file.key());
                let bytes = r.block_on(async { r.store.get(&path).await?.bytes().await })?;
                Ok(Source::Bytes(bytes))
            }
        }
    }

    /// A small file's contents.
    pub(crate) fn read_all(&self, file: &LakeFile) -> Result<Bytes, LakeError> {
        match self.open_file(file)? {
            Source::Bytes(b) => Ok(b),
            Source::File(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v)
                    .map_err(|e| LakeError::io(Path::new(file.key()), e))?;
                Ok(v.into())
            }
        }
    }

    /// Whether `key` exists.
    pub(crate) fn exists(&self, key: &str) -> Result<bool, LakeError> {
        match self {
            Backend::Local(root) => Ok(root.join(key).is_file()),
            Backend::Remote(r) => match r.block_on(r.store.head(&r.path(key))) {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Deletes `key` (absent: nothing to do).
    pub(crate) fn delete(&self, key: &str) -> Result<(), LakeError> {
        match self {
            Backend::Local(root) => match std::fs::remove_file(root.join(key)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(LakeError::io(&root.join(key), e))
                }
                _ => Ok(()),
            },
            Backend::Remote(r) => match r.block_on(r.store.delete(&r.path(key))) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Writes a small file whole, replacing any previous one atomically.
    pub(crate) fn put(&self, key: &str, body: Bytes) -> Result<(), LakeError> {
        match self {
            Backend::Local(root) => {
                let dest = root.join(key);
                let staged = self.staging(key)?;
                std::fs::write(&staged, &body).map_err(|e| LakeError::io(&staged, e))?;
                File::open(&staged)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| LakeError::io(&staged, e))?;
                std::fs::rename(&staged, &dest).map_err(|e| LakeError::io(&dest, e))?;
                sync_parent(&dest)
            }
            Backend::Remote(r) => {
                r.block_on(r.store.put(&r.path(key), PutPayload::from(body)))?;
                Ok(())
            }
        }
    }

    /// A local path to write `key`'s contents to before [`Backend::publish`] (its directory
    /// exists): beside the final name locally, in the spool directory otherwise.
    pub(crate) fn staging(&self, key: &str) -> Result<PathBuf, LakeError> {
        let p = match self {
            Backend::Local(root) => root.join(format!("{key}.tmp")),
            Backend::Remote(r) => r.spool.join(format!("{key}.tmp")),
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LakeError::io(dir, e))?;
        }
        Ok(p)
    }

    /// Makes the finished (and synced) file `staged` visible as `key`: a durable rename
    /// locally, an upload (in parts when large) to an object store, after which the staged
    /// copy is removed. Either way the file appears whole or not at all.
    pub(crate) fn publish(&self, staged: &Path, key: &str) -> Result<(), LakeError> {
        match self {
            Backend::Local(root) => {
                let dest = root.join(key);
                std::fs::rename(staged, &dest).map_err(|e| LakeError::io(&dest, e))?;
                sync_parent(&dest)
            }
            Backend::Remote(r) => {
                tracing::debug!(key, "uploading");
                let len = std::fs::metadata(staged)
                    .map_err(|e| LakeError::io(staged, e))?
                    .len();
                let path = r.path(key);
                if len as usize <= PART_BYTES {
                    let body = std::fs::read(staged).map_err(|e| LakeError::io(staged, e))?;
                    r.block_on(r.store.put(&path, PutPayload::from(body)))?;
                } else {
                    let mut file = File::open(staged).map_err(|e| LakeError::io(staged, e))?;
                    r.block_on(async {
                        let upload = r.store.put_multipart(&path).await?;
                        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = match file.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e) => {
                                    let _ = w.abort().await;
                                    return Err(object_store::Error::Generic {
                                        store: "spool",
                                        source: Box::new(e),
                                    });
                                }
                            };
                            // At most a couple of parts in flight.
                            w.wait_for_capacity(2).await?;
                            w.write(&buf[..n]);
                        }
                        w.finish().await
                    })?;
                }
                std::fs::remove_file(staged).map_err(|e| LakeError::io(staged, e))?;
                Ok(())
            }
        }
    }

    /// Removes files staged by a writer that did not finish them (a crash): the `.tmp`
    /// files beside the lake's files, or the spool directory. Returns how many.
    pub(crate) fn clear_staging(&self) -> Result<usize, LakeError> {
        let (root, dirs): (&Path, Vec<PathBuf>) = match self {
            Backend::Local(root) => (root, vec![root.join("bronze"), root.join("silver")]),
            Backend::Remote(r) => (&r.spool, vec![r.spool.clone()]),
        };
        let mut doomed = Vec::new();
        for dir in dirs {
            let mut files = Vec::new();
            walk(root, &dir, &mut files).map_err(|e| LakeError::io(&dir, e))?;
            doomed.extend(
                files
                    .into_iter()
                    .filter(|f| f.key().ends_with(".tmp"))
                    .map(|f| root.join(f.key())),
            );
        }
        for p in &doomed {
            std::fs::remove_file(p).map_err(|e| LakeError::io(p, e))?;
        }
        Ok(doomed.len())
    }

    /// The local directory, when the lake is one.
    pub(crate) fn local_root(&self) -> Option<&Path> {
        match self {
            Backend::Local(root) => Some(root),
            Backend::Remote(_) => None,
        }
    }
}

/// Every regular file below `dir` (missing `dir` = nothing), as keys relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<LakeFile>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let ty = e.file_type()?;
        let p = e.path();
        if ty.is_dir() {
            walk(root, &p, out)?;
        } else if ty.is_file() {
            if let Ok(rel) = p.strip_prefix(root) {
                let key: Vec<&str> = rel.iter().filter_map(|s| s.to_str()).collect();
                out.push(LakeFile(key.join("/")));
            }
        }
    }
    Ok(())
}

/// Makes a rename durable: fsync of the directory that holds the new name.
fn sync_parent(p: &Path) -> Result<(), LakeError> {
    let dir = p.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LakeError::io(dir, e))
}

/// An open lake file, for the Parquet reader: a local file, or an object's bytes.
pub enum Source {
    /// A local file.
    File(File),
    /// A fetched object.
    Bytes(Bytes),
}

impl Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::File(f) => f.len(),
            Source::Bytes(b) => b.len() as u64,
        }
    }
}

impl ChunkReader for Source {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Source::File(f) => Box::new(f.get_read(start)?),
            Source::Bytes(b) => Box::new(b.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Source::File(f) => f.get_bytes(start, length),
            Source::Bytes(b) => b.get_bytes(start, length),
        }
    }
}
