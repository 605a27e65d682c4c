//! Object storage: one [`ObjectStore`] trait over a bucket of keyed blobs, its `filesystem` and
//! `s3` backends, the `blocks_storage` config that picks one ([`BucketConfig`], [`open_bucket`]),
//! and the Mimir block layout on top of it ([`layout`]); [`pagecache`] lets the engine read a
//! block's files straight from the bucket.
//!
//! Why a crate of its own: the roles (ingester, querier, compactor) and the end-to-end tests share
//! it, and it keeps tokio and the AWS SDK out of the storage engine (`rimir-tsdb`), which it builds
//! on. What it must not import: the query engine or the server roles.
//!
//! Where to start reading: [`store`] (the [`ObjectStore`] trait), then [`layout`]. Modules, lowest
//! first: `store` → `config`, `filesystem` → `s3`, `layout`, `pagecache` → this file's
//! [`open_bucket`].
//!
//! Keys are `/`-separated relative paths (`anonymous/01J…/chunks/000001`). Listing follows S3:
//! a key prefix, optionally cut at the next `/` into common prefixes, results sorted by key.
//! The layout and its invariants (`meta.json` written last) are specified in `docs/format.md`.

pub mod config;
pub mod filesystem;
pub mod layout;
pub mod pagecache;
pub mod s3;
pub mod store;

use std::sync::Arc;

pub use config::{
    Backend, BucketConfig, BucketConfigKeys, BucketLookupType, FilesystemConfig, S3Config,
    StaticCredentialKeys,
};
pub use filesystem::FilesystemStore;
pub use layout::{
    delete_block, download_block, list_blocks, list_tenants, read_meta_json, scan_blocks,
    upload_block,
};
pub use s3::S3Store;
pub use store::{
    BoxFuture, ListEntry, ObjectMeta, ObjectStore, ObjstoreError, Result, S3Error, TMP_MARKER,
    validate_key,
};

/// Opens the configured bucket. For S3 this loads the AWS SDK configuration (region and
/// credential chains), hence async; no request is sent until the first operation.
pub fn open_bucket(config: &BucketConfig) -> BoxFuture<'_, Result<Arc<dyn ObjectStore>>> {
    Box::pin(async move {
        match config {
            BucketConfig::Filesystem(fs) => {
                Ok(Arc::new(FilesystemStore::new(&fs.dir)?) as Arc<dyn ObjectStore>)
            }
            BucketConfig::S3(s3) => {
                Ok(Arc::new(S3Store::from_env(s3).await?) as Arc<dyn ObjectStore>)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
