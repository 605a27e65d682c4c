//! Object storage: one [`ObjectStore`] trait over a bucket of keyed blobs, its `filesystem` and
//! `s3` backends, the `blocks_storage` config that picks one ([`BucketConfig`], [`open_bucket`]),
//! and the Mimir block layout on top of it ([`layout`]).
//!
//! Keys are `/`-separated relative paths (`anonymous/01J…/chunks/000001`). Listing follows S3:
//! a key prefix, optionally cut at the next `/` into common prefixes, results sorted by key.
//! The layout and its invariants (`meta.json` written last) are specified in `docs/format.md`.

pub mod filesystem;
pub mod layout;
pub mod pagecache;
pub mod s3;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;

pub use filesystem::FilesystemStore;
pub use layout::{
    delete_block, download_block, list_blocks, list_tenants, read_meta_json, scan_blocks,
    upload_block,
};
pub use s3::S3Store;

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
            _ if seg.starts_with(filesystem::TMP_MARKER) => {
                return Err(invalid("segment uses the reserved temporary-file prefix"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Which backend `blocks_storage.backend` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A local directory (`blocks_storage.filesystem`); the default, as in single-process mode.
    #[default]
    Filesystem,
    /// An S3 bucket (`blocks_storage.s3`).
    S3,
}

/// `blocks_storage.filesystem`: a directory holding the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Root directory of the bucket (Mimir's default `blocks`).
    #[serde(default = "default_fs_dir")]
    pub dir: PathBuf,
}

fn default_fs_dir() -> PathBuf {
    PathBuf::from("blocks")
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            dir: default_fs_dir(),
        }
    }
}

/// How requests address the bucket (Mimir's `bucket_lookup_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BucketLookupType {
    /// Virtual-hosted style on AWS, path style for a custom endpoint.
    #[default]
    Auto,
    /// `https://bucket.host/key`.
    VirtualHosted,
    /// `https://host/bucket/key` (MinIO, moto, most S3-compatible stores).
    Path,
}

/// `blocks_storage.s3`: an S3 (or S3-compatible) bucket. Credentials are never part of the
/// config: they come from the AWS SDK default chain (environment, web identity token as set by
/// EKS IRSA, profile, instance metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (required).
    #[serde(default)]
    pub bucket_name: String,
    /// Region; empty means the SDK's region chain (`AWS_REGION`, profile, IMDS).
    #[serde(default)]
    pub region: String,
    /// Custom endpoint: `host[:port]` as in Mimir (scheme from `insecure`), or a full URL.
    /// Empty means AWS's regional endpoint.
    #[serde(default)]
    pub endpoint: String,
    /// Use `http://` for an endpoint given without scheme.
    #[serde(default)]
    pub insecure: bool,
    /// Mimir's addressing style switch.
    #[serde(default)]
    pub bucket_lookup_type: BucketLookupType,
    /// Shorthand for `bucket_lookup_type: path`.
    #[serde(default)]
    pub force_path_style: bool,
    /// Multipart part size in bytes for `put_file` (S3's minimum 5 MiB is enforced); files up to
    /// this size go in one `PutObject`. Mimir's `part_size`; default 64 MiB.
    #[serde(default)]
    pub part_size: u64,
    /// Use the dual-stack (IPv4/IPv6) AWS endpoint.
    #[serde(default)]
    pub dualstack_enabled: bool,
    /// Storage class of new objects (`STANDARD` when empty), e.g. `STANDARD_IA`.
    #[serde(default)]
    pub storage_class: String,
    /// Accepted for Mimir compatibility: only `v4` (the default) exists.
    #[serde(default)]
    pub signature_version: String,
    /// Accepted for Mimir compatibility: only `v2` (the default) exists.
    #[serde(default)]
    pub list_objects_version: String,
    /// Accepted for Mimir compatibility and ignored: rimir always uses the AWS SDK's own
    /// credential chain.
    #[serde(default)]
    pub native_aws_auth_enabled: bool,
    /// Accepted for Mimir compatibility and ignored: requests carry CRC32 checksums.
    #[serde(default)]
    pub send_content_md5: bool,
    /// Mimir's static credential keys (`access_key_id`, `secret_access_key`, `session_token`)
    /// found in the config, by name. Their values are discarded while parsing, never stored;
    /// [`S3Config::validate`] rejects them.
    #[serde(flatten, default)]
    pub static_credentials: StaticCredentialKeys,
}

/// Which of Mimir's static credential keys a config contained (values are never kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StaticCredentialKeys {
    /// `access_key_id` was given.
    #[serde(default, rename = "access_key_id", deserialize_with = "key_present")]
    pub access_key_id: bool,
    /// `secret_access_key` was given.
    #[serde(
        default,
        rename = "secret_access_key",
        deserialize_with = "key_present"
    )]
    pub secret_access_key: bool,
    /// `session_token` was given.
    #[serde(default, rename = "session_token", deserialize_with = "key_present")]
    pub session_token: bool,
}

/// Consumes a value without keeping it: credentials must not linger in memory or in `Debug`.
fn key_present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

impl S3Config {
    /// The endpoint URL to give the SDK, if any: Mimir-style `host:port` gets a scheme.
    pub fn endpoint_url(&self) -> Option<String> {
        let e = self.endpoint.trim();
        if e.is_empty() {
            None
        } else if e.contains("://") {
            Some(e.to_string())
        } else if self.insecure {
            Some(format!("http://{e}"))
        } else {
            Some(format!("https://{e}"))
        }
    }

    /// Rejects what rimir cannot honour, naming the key: a missing bucket name, static
    /// credentials, signature or listing versions other than v4/v2, an unknown storage class.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ObjstoreError::Config(m));
        if self.bucket_name.trim().is_empty() {
            return bad("blocks_storage.s3.bucket_name is required with backend: s3".into());
        }
        let creds = &self.static_credentials;
        for (given, key) in [
            (creds.access_key_id, "access_key_id"),
            (creds.secret_access_key, "secret_access_key"),
            (creds.session_token, "session_token"),
        ] {
            if given {
                return bad(format!(
                    "blocks_storage.s3.{key}: static credentials are not supported; credentials \
                     come from the AWS default chain (IRSA web identity, environment, profile)"
                ));
            }
        }
        if !matches!(self.signature_version.as_str(), "" | "v4") {
            return bad(format!(
                "blocks_storage.s3.signature_version: {:?} is not supported (only v4)",
                self.signature_version
            ));
        }
        if !matches!(self.list_objects_version.as_str(), "" | "v2") {
            return bad(format!(
                "blocks_storage.s3.list_objects_version: {:?} is not supported (only v2)",
                self.list_objects_version
            ));
        }
        let known = aws_sdk_s3::types::StorageClass::values();
        if !self.storage_class.is_empty() && !known.contains(&self.storage_class.as_str()) {
            return bad(format!(
                "blocks_storage.s3.storage_class: unknown storage class {:?} (one of {})",
                self.storage_class,
                known.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether requests use path-style addressing.
    pub fn path_style(&self) -> bool {
        match self.bucket_lookup_type {
            _ if self.force_path_style => true,
            BucketLookupType::Path => true,
            BucketLookupType::VirtualHosted => false,
            BucketLookupType::Auto => !self.endpoint.trim().is_empty(),
        }
    }
}

/// The bucket to open: the part of `blocks_storage` that selects and configures the backend.
///
/// Deserializes from a mapping with Mimir's keys `backend`, `filesystem` and `s3` (both sections
/// may be present; `backend` picks one). A larger config that also holds `blocks_storage.tsdb`
/// keeps its own fields and calls [`BucketConfig::select`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BucketConfigKeys")]
pub enum BucketConfig {
    /// `backend: filesystem`.
    Filesystem(FilesystemConfig),
    /// `backend: s3`.
    S3(S3Config),
}

/// The raw `blocks_storage` bucket keys, before the backend is chosen.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfigKeys {
    /// `backend`.
    #[serde(default)]
    pub backend: Backend,
    /// `filesystem`.
    #[serde(default)]
    pub filesystem: FilesystemConfig,
    /// `s3`.
    #[serde(default)]
    pub s3: S3Config,
}

impl TryFrom<BucketConfigKeys> for BucketConfig {
    type Error = ObjstoreError;
    fn try_from(k: BucketConfigKeys) -> Result<Self> {
        BucketConfig::select(k.backend, k.filesystem, k.s3)
    }
}

impl BucketConfig {
    /// Picks the section `backend` names and checks it: an S3 backend needs `bucket_name`, a
    /// filesystem one a non-empty `dir`.
    pub fn select(backend: Backend, filesystem: FilesystemConfig, s3: S3Config) -> Result<Self> {
        match backend {
            Backend::Filesystem => {
                if filesystem.dir.as_os_str().is_empty() {
                    return Err(ObjstoreError::Config(
                        "blocks_storage.filesystem.dir must not be empty".into(),
                    ));
                }
                Ok(BucketConfig::Filesystem(filesystem))
            }
            Backend::S3 => {
                s3.validate()?;
                Ok(BucketConfig::S3(s3))
            }
        }
    }
}

/// Opens the configured bucket. For S3 this loads the AWS SDK configuration (region and
/// credential chains), hence async; no request is sent until the first operation.
pub async fn open_bucket(config: &BucketConfig) -> Result<Arc<dyn ObjectStore>> {
    match config {
        BucketConfig::Filesystem(fs) => Ok(Arc::new(FilesystemStore::new(&fs.dir)?)),
        BucketConfig::S3(s3) => Ok(Arc::new(S3Store::from_env(s3).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> std::result::Result<BucketConfig, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn mimir_s3_keys_select_s3_backend() {
        let cfg = parse(
            "backend: s3\n\
             s3:\n  bucket_name: metrics\n  region: eu-west-1\n  endpoint: minio:9000\n  insecure: true\n\
             filesystem:\n  dir: /unused\n",
        )
        .unwrap();
        let BucketConfig::S3(s3) = cfg else {
            panic!("expected s3, got {cfg:?}")
        };
        assert_eq!(s3.bucket_name, "metrics");
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(s3.endpoint_url().as_deref(), Some("http://minio:9000"));
        assert!(
            s3.path_style(),
            "custom endpoint with auto lookup uses path style"
        );
    }

    #[test]
    fn aws_endpoint_defaults_to_virtual_hosted_and_https() {
        let s3 = S3Config {
            bucket_name: "b".into(),
            ..S3Config::default()
        };
        assert_eq!(s3.endpoint_url(), None);
        assert!(!s3.path_style());
        let s3 = S3Config {
            endpoint: "s3.example.com".into(),
            bucket_lookup_type: BucketLookupType::VirtualHosted,
            ..s3
        };
        assert_eq!(s3.endpoint_url().as_deref(), Some("https://s3.example.com"));
        assert!(!s3.path_style());
        assert!(
            S3Config {
                force_path_style: true,
                ..s3
            }
            .path_style()
        );
    }

    #[test]
    fn static_credentials_are_rejected_without_keeping_the_value() {
        let yaml = "backend: s3\ns3:\n  bucket_name: b\n  secret_access_key: hunter2-secret\n";
        let err = parse(yaml).unwrap_err().to_string();
        assert!(err.contains("secret_access_key"), "{err}");
        assert!(err.contains("AWS default chain"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let keys: BucketConfigKeys = serde_yaml::from_str(yaml).unwrap();
        assert!(keys.s3.static_credentials.secret_access_key);
        assert!(!format!("{keys:?}").contains("hunter2"));
    }

    #[test]
    fn mimir_compatibility_keys_are_accepted_or_rejected_by_value() {
        let ok = "backend: s3\ns3:\n  bucket_name: b\n  signature_version: v4\n  \
                  list_objects_version: v2\n  native_aws_auth_enabled: true\n  \
                  send_content_md5: true\n  storage_class: STANDARD_IA\n  dualstack_enabled: true\n  \
                  part_size: 16777216\n";
        let BucketConfig::S3(s3) = parse(ok).unwrap() else {
            panic!("not s3")
        };
        assert_eq!(s3.storage_class, "STANDARD_IA");
        assert_eq!(s3.part_size, 16 << 20);
        assert!(s3.dualstack_enabled);
        for (key, value) in [
            ("signature_version", "v2"),
            ("list_objects_version", "v1"),
            ("storage_class", "FAST"),
        ] {
            let yaml = format!("backend: s3\ns3:\n  bucket_name: b\n  {key}: {value}\n");
            let err = parse(&yaml).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn filesystem_is_the_default_backend() {
        let cfg = parse("filesystem:\n  dir: /data/blocks\n").unwrap();
        assert_eq!(
            cfg,
            BucketConfig::Filesystem(FilesystemConfig {
                dir: "/data/blocks".into()
            })
        );
    }

    #[test]
    fn s3_without_bucket_name_is_rejected_naming_the_key() {
        let err = parse("backend: s3\ns3:\n  region: us-east-1\n").unwrap_err();
        assert!(err.to_string().contains("bucket_name"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        let err =
            parse("backend: s3\ns3:\n  bucket_name: b\n  secret_access_key: x\n").unwrap_err();
        assert!(err.to_string().contains("secret_access_key"), "{err}");
        let err = parse("backend: gcs\n").unwrap_err();
        assert!(err.to_string().contains("gcs"), "{err}");
    }

    #[test]
    fn keys_with_traversal_or_empty_segments_are_invalid() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "a/./b",
            "trailing/",
            "a/.rimir-tmp-x",
        ] {
            assert!(validate_key("test", bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "anonymous/01J0000000000000000000000/chunks/000001",
            "a.b/c-d",
        ] {
            validate_key("test", good).unwrap();
        }
    }

    fn s3_error(code: &str, status: Option<u16>) -> ObjstoreError {
        ObjstoreError::S3(Box::new(S3Error {
            op: "PutObject",
            bucket: "s3://b".into(),
            key: "k".into(),
            code: code.into(),
            message: "m".into(),
            status,
            source: "sdk".into(),
        }))
    }

    #[test]
    fn throttling_and_server_errors_are_retryable_access_errors_are_not() {
        assert!(s3_error("SlowDown", Some(503)).is_retryable());
        assert!(s3_error("InternalError", Some(500)).is_retryable());
        assert!(s3_error("DispatchFailure", None).is_retryable());
        assert!(s3_error("Whatever", Some(502)).is_retryable());
        assert!(!s3_error("AccessDenied", Some(403)).is_retryable());
        assert!(!s3_error("NoSuchBucket", Some(404)).is_retryable());
        let e = s3_error("AccessDenied", Some(403));
        assert_eq!(e.aws_code(), Some("AccessDenied"));
        assert_eq!(
            e.to_string(),
            "PutObject s3://b key \"k\": S3 error AccessDenied (HTTP 403): m"
        );
    }

    #[tokio::test]
    async fn open_bucket_gives_a_working_filesystem_store() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: BucketConfig = serde_yaml::from_str(&format!(
            "backend: filesystem\nfilesystem:\n  dir: {}\n",
            dir.path().join("bucket").display()
        ))
        .unwrap();
        let store = open_bucket(&cfg).await.unwrap();
        store.put("t/k", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(&store.get("t/k").await.unwrap()[..], b"v");
        assert!(dir.path().join("bucket/t/k").is_file());
    }

    #[test]
    fn errors_name_operation_bucket_and_key() {
        let e = ObjstoreError::NotFound {
            op: "GetObject",
            bucket: "s3://metrics".into(),
            key: "t/meta.json".into(),
        };
        assert_eq!(
            e.to_string(),
            "GetObject s3://metrics key \"t/meta.json\": object not found"
        );
        assert!(e.is_not_found());
    }
}
