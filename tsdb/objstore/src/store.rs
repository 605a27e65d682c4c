//! The object-store interface every backend implements: [`ObjectStore`], its errors, listing
//! entries, and the key rules. The lowest module of the crate: it imports nothing from it.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;

/// Names of in-flight temporary files start with this; listings skip them and keys may not use it.
pub const TMP_MARKER: &str = ".rimir-tmp-";

/// A temporary file name beside `target`, with the reserved prefix, for write-then-rename.
pub(crate) fn tmp_path_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{TMP_MARKER}{name}-{:016x}", rand::random::<u64>()))
}

/// Everything that can go wrong talking to a bucket. Each variant names the operation, the bucket
/// (`s3://name` or the filesystem root) and the key or local path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum ObjstoreError {
    /// The object (or, for block helpers, the block's `meta.json`) does not exist.
    #[error("{op} {bucket} key {key:?}: object not found")]
    NotFound {
        /// Operation, e.g. `GetObject`.
        op: &'static str,
        /// Bucket location.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// A ranged read starting at or beyond the end of the object.
    #[error("{op} {bucket} key {key:?}: range {start}..{end} not satisfiable{}", size_suffix(*.size))]
    InvalidRange {
        /// Operation.
        op: &'static str,
        /// Bucket location.
        bucket: String,
        /// Object key.
        key: String,
        /// First byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
        /// Object size, when known.
        size: Option<u64>,
    },
    /// An error answered by the S3 service (or the SDK failing to reach it), with the AWS error
    /// code (`NoSuchBucket`, `AccessDenied`, …) and message kept.
    #[error(transparent)]
    S3(Box<S3Error>),
    /// An I/O error of the filesystem backend on an object in the bucket.
    #[error("{op} {bucket} key {key:?}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Bucket location (root directory).
        bucket: String,
        /// Object key or prefix.
        key: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error on a local file that is uploaded from or downloaded to.
    #[error("{op} {bucket} key {key:?}: local file {}: {source}", path.display())]
    LocalIo {
        /// Operation.
        op: &'static str,
        /// Bucket location.
        bucket: String,
        /// Object key.
        key: String,
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key, tenant or block name that cannot be used (empty, `..`, absolute, not a ULID, …).
    #[error("{op}: invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Operation.
        op: &'static str,
        /// What was invalid: `key`, `tenant`, `block`.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The bucket configuration cannot be used (names the config key).
    #[error("blocks_storage config: {0}")]
    Config(String),
}

/// Details of [`ObjstoreError::S3`] (boxed: it is the largest variant).
#[derive(Debug, thiserror::Error)]
#[error("{op} {bucket} key {key:?}: S3 error {code}{}: {message}", status_suffix(*.status))]
pub struct S3Error {
    /// Operation, e.g. `PutObject`.
    pub op: &'static str,
    /// Bucket location (`s3://name`).
    pub bucket: String,
    /// Object key or prefix.
    pub key: String,
    /// AWS error code; `DispatchFailure`/`Timeout`/… when no response arrived.
    pub code: String,
    /// AWS error message, or the SDK's description.
    pub message: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The SDK error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn size_suffix(size: Option<u64>) -> String {
    size.map(|s| format!(" (object size {s})"))
        .unwrap_or_default()
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl ObjstoreError {
    /// True when the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ObjstoreError::NotFound { .. })
    }

    /// True for failures worth retrying later (after the SDK's own retries gave up): throttling,
    /// S3 server errors, timeouts and connection failures. Missing objects, bad keys, bad config,
    /// access denied or a missing bucket are terminal.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjstoreError::S3(e) => {
                matches!(
                    e.code.as_str(),
                    "SlowDown"
                        | "Throttling"
                        | "RequestTimeout"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "DispatchFailure"
                        | "Timeout"
                        | "ResponseError"
                        | "ResponseBody"
                ) || e.status.is_some_and(|s| s >= 500 || s == 429)
            }
            ObjstoreError::Io { source, .. } | ObjstoreError::LocalIo { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// The AWS error code of an S3 service error (`AccessDenied`, `NoSuchBucket`, …).
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            ObjstoreError::S3(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Size and modification time of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (S3 `LastModified`, file mtime).
    pub last_modified: SystemTime,
}

/// One result of [`ObjectStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    /// An object with its full key.
    Object {
        /// Full key.
        key: String,
        /// Size and modification time.
        meta: ObjectMeta,
    },
    /// A common prefix (only with `delimiter`): the listed prefix plus one more path segment,
    /// ending in `/`, e.g. `anonymous/01J…/`.
    Prefix(String),
}

impl ListEntry {
    /// The entry's key (objects) or prefix ending in `/` (common prefixes).
    pub fn key(&self) -> &str {
        match self {
            ListEntry::Object { key, .. } => key,
            ListEntry::Prefix(p) => p,
        }
    }
}

/// A boxed, sendable future: the return type of every [`ObjectStore`] method, so the trait can be
/// used as `Arc<dyn ObjectStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of object-store operations.
pub type Result<T, E = ObjstoreError> = std::result::Result<T, E>;

/// A bucket of objects addressed by `/`-separated keys. Writes are atomic: a reader sees either
/// the whole new object or none (or the old one). Deleting a missing key succeeds.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Where this store points, for messages: `s3://bucket` or the filesystem root.
    fn location(&self) -> &str;

    /// Writes `data` under `key`, replacing any existing object.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>>;

    /// Uploads the local file `path` under `key`, streaming from disk (multipart on S3 for files
    /// larger than the part size).
    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>>;

    /// Reads the whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes>>;

    /// Reads bytes `range` of the object. A range reaching past the end is cut at the end (as S3
    /// does); a range starting at or past the end is [`ObjstoreError::InvalidRange`]; an empty
    /// range returns no bytes.
    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>>;

    /// Streams the object into the local file `path` (written to a temporary file beside it and
    /// renamed, so `path` is either complete or absent).
    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>>;

    /// Size and modification time of the object, `None` when it does not exist.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>>>;

    /// Lists keys starting with `prefix`, sorted. With `delimiter`, keys having a `/` after the
    /// prefix are folded into one [`ListEntry::Prefix`] per next path segment.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: bool,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>>>;

    /// Deletes the object; succeeds when it does not exist.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Deletes every object whose key starts with `prefix`; returns how many were deleted.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// Removes what writes interrupted more than `older_than` ago left under `prefix` (readers
    /// never see it, but it takes space); returns how many leftovers went. The filesystem
    /// backend removes its temporary files. The default does nothing: on S3 an interrupted
    /// multipart upload is aborted by the bucket's lifecycle rule (the operator sets one), since
    /// the role's policy does not allow listing multipart uploads.
    fn remove_abandoned_writes<'a>(
        &'a self,
        prefix: &'a str,
        older_than: std::time::Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        let _ = (prefix, older_than);
        Box::pin(async { Ok(0) })
    }
}

/// Checks that `key` is a usable object key: non-empty, relative, `/`-separated segments that are
/// neither empty nor `.`/`..`. Both backends accept exactly these keys.
pub fn validate_key(op: &'static str, key: &str) -> Result<()> {
    let invalid = |reason| ObjstoreError::Invalid {
        op,
        what: "key",
        value: key.to_string(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.len() > 1024 {
        return Err(invalid("longer than 1024 bytes"));
    }
    for seg in key.split('/') {
        match seg {
            "" => {
                return Err(invalid(
                    "empty path segment (leading, trailing or double `/`)",
                ));
            }
            "." | ".." => return Err(invalid("`.` or `..` segment")),
            _ if seg.contains('\0') || seg.contains('\\') => {
                return Err(invalid("contains NUL or `\\`"));
            }
            _ if seg.starts_with(TMP_MARKER) => {
                return Err(invalid("segment uses the reserved temporary-file prefix"));
            }
            _ => {}
        }
    }
    Ok(())
}
