//! `blocks_storage`: the configuration that picks and sets up a bucket backend, with Mimir's
//! key names.

use std::path::PathBuf;

use serde::Deserialize;

use crate::store::{ObjstoreError, Result};

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
