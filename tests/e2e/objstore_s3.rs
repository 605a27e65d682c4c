//! The `s3` object-store backend against a real S3 API: a moto server on 127.0.0.1 shared by
//! the tests running at the same time, each with its own bucket.
//! Proves the operations, pagination, multipart uploads, error mapping, and that the Mimir block
//! layout helpers behave on S3 as on the filesystem (partial uploads stay invisible).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rimir_e2e::moto::MotoServer;
use rimir_objstore::layout::{self, META_JSON};
use rimir_objstore::{
    BucketConfig, FilesystemStore, ListEntry, ObjectStore, ObjstoreError, S3Config, S3Store,
};

async fn s3_store(moto: &MotoServer, bucket: &str) -> S3Store {
    moto.create_bucket(bucket).await;
    S3Store::new(&moto.s3_config(bucket), &moto.sdk_config()).unwrap()
}

/// Deterministic pseudo-random bytes (so multipart parts differ and misordering would show).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Listing results reduced to what both backends must agree on.
fn shape(entries: &[ListEntry]) -> Vec<(String, Option<u64>)> {
    entries
        .iter()
        .map(|e| match e {
            ListEntry::Object { key, meta } => (key.clone(), Some(meta.size)),
            ListEntry::Prefix(p) => (p.clone(), None),
        })
        .collect()
}

#[tokio::test]
async fn yaml_configured_bucket_puts_gets_ranges_and_deletes() {
    let moto = MotoServer::shared();
    moto.create_bucket("blocks").await;
    let yaml = format!(
        "backend: s3\ns3:\n  bucket_name: blocks\n  region: us-east-1\n  endpoint: 127.0.0.1:{}\n  insecure: true\n  storage_class: STANDARD_IA\n",
        moto.port()
    );
    let BucketConfig::S3(config) = serde_yaml::from_str(&yaml).unwrap() else {
        panic!("backend: s3 did not select S3");
    };
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(&config, &moto.sdk_config()).unwrap());
    assert_eq!(store.location(), "s3://blocks");

    store
        .put("t/a", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(&store.get("t/a").await.unwrap()[..], b"0123456789");
    let raw = moto
        .s3_client()
        .head_object()
        .bucket("blocks")
        .key("t/a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        raw.storage_class(),
        Some(&aws_sdk_s3::types::StorageClass::StandardIa)
    );
    let meta = store.head("t/a").await.unwrap().unwrap();
    assert_eq!(meta.size, 10);
    let age = SystemTime::now()
        .duration_since(meta.last_modified)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(600),
        "last_modified {:?}",
        meta.last_modified
    );

    assert_eq!(&store.get_range("t/a", 2..5).await.unwrap()[..], b"234");
    assert_eq!(&store.get_range("t/a", 7..100).await.unwrap()[..], b"789");
    assert_eq!(&store.get_range("t/a", 4..4).await.unwrap()[..], b"");
    let err = store.get_range("t/a", 10..12).await.unwrap_err();
    assert!(
        matches!(
            err,
            ObjstoreError::InvalidRange {
                start: 10,
                end: 12,
                ..
            }
        ),
        "{err}"
    );

    let err = store.get("t/missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        err.to_string(),
        "GetObject s3://blocks key \"t/missing\": object not found"
    );
    assert!(
        store
            .get_range("t/missing", 0..1)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        store
            .get_range("t/missing", 0..0)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(store.head("t/missing").await.unwrap().is_none());

    store.delete("t/a").await.unwrap();
    store.delete("t/a").await.unwrap();
    assert!(store.get("t/a").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn paginated_listing_matches_the_filesystem_backend() {
    let moto = MotoServer::shared();
    // Pages of 3 entries: every listing below with more than 3 results spans several pages.
    let s3 = s3_store(&moto, "list").await.with_list_page_size(3);
    let dir = tempfile::tempdir().unwrap();
    let fs_store = FilesystemStore::new(dir.path()).unwrap();
    let mut keys = Vec::new();
    for t in ["t1", "t2", "t10"] {
        for b in 0..3 {
            for f in ["index", "chunks/000001", META_JSON] {
                keys.push(format!("{t}/b{b}/{f}"));
            }
        }
        keys.push(format!("{t}/bucket-index.json.gz"));
    }
    keys.push("root-object".into());
    for (i, k) in keys.iter().enumerate() {
        let data = Bytes::from(noise(i % 7, i as u64));
        s3.put(k, data.clone()).await.unwrap();
        fs_store.put(k, data).await.unwrap();
    }
    let all = s3.list("", false).await.unwrap();
    assert_eq!(all.len(), keys.len());
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(all.iter().map(ListEntry::key).collect::<Vec<_>>(), sorted);
    assert_eq!(
        shape(&s3.list("", true).await.unwrap()),
        [
            ("root-object".to_string(), Some((keys.len() - 1) as u64 % 7)),
            ("t1/".to_string(), None),
            ("t10/".to_string(), None),
            ("t2/".to_string(), None),
        ]
    );
    for (prefix, delimiter) in [
        ("", false),
        ("", true),
        ("t1", true),
        ("t1/", true),
        ("t1/", false),
        ("t2/b2/", true),
        ("t2/b2/chunks/", false),
        ("t10/b", true),
        ("nothing/", true),
    ] {
        assert_eq!(
            shape(&s3.list(prefix, delimiter).await.unwrap()),
            shape(&fs_store.list(prefix, delimiter).await.unwrap()),
            "list({prefix:?}, {delimiter})"
        );
    }

    // delete_prefix goes through the paginated listing too.
    assert_eq!(s3.delete_prefix("t1/").await.unwrap(), 10);
    assert_eq!(fs_store.delete_prefix("t1/").await.unwrap(), 10);
    assert_eq!(
        shape(&s3.list("", true).await.unwrap()),
        shape(&fs_store.list("", true).await.unwrap())
    );
    assert!(s3.list("t1/", false).await.unwrap().is_empty());
    assert_eq!(s3.list("t10/", false).await.unwrap().len(), 10);
}

#[tokio::test]
async fn large_file_is_uploaded_in_parts_and_streams_back() {
    let moto = MotoServer::shared();
    moto.create_bucket("multipart").await;
    let config = S3Config {
        part_size: 5 << 20,
        ..moto.s3_config("multipart")
    };
    let store = S3Store::new(&config, &moto.sdk_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("000001");
    let data = noise((11 << 20) + 123, 42);
    fs::write(&big, &data).unwrap();
    store
        .put_file("t/b/chunks/000001", &big)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n(moto before 5.2.2 answers CompleteMultipartUpload with a wrong XML root, \
                 getmoto/moto#10055; tests/run.sh upgrades it)"
            )
        });

    // S3 marks multipart objects with an ETag ending in "-<parts>".
    let head = moto
        .s3_client()
        .head_object()
        .bucket("multipart")
        .key("t/b/chunks/000001")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-3\""),
        "ETag {:?}",
        head.e_tag()
    );
    assert_eq!(
        store.head("t/b/chunks/000001").await.unwrap().unwrap().size,
        data.len() as u64
    );

    let back = dir.path().join("down/000001");
    store.get_to_file("t/b/chunks/000001", &back).await.unwrap();
    assert!(fs::read(&back).unwrap() == data, "downloaded file differs");
    let boundary = 5u64 << 20;
    let slice = store
        .get_range("t/b/chunks/000001", boundary - 10..boundary + 10)
        .await
        .unwrap();
    assert_eq!(
        &slice[..],
        &data[boundary as usize - 10..boundary as usize + 10]
    );

    // At or below the part size: one PutObject.
    let small = dir.path().join("index");
    fs::write(&small, noise(1000, 7)).unwrap();
    store.put_file("t/b/index", &small).await.unwrap();
    let head = moto
        .s3_client()
        .head_object()
        .bucket("multipart")
        .key("t/b/index")
        .send()
        .await
        .unwrap();
    assert!(
        !head.e_tag().unwrap().contains('-'),
        "ETag {:?}",
        head.e_tag()
    );
    assert_eq!(
        store.get("t/b/index").await.unwrap(),
        fs::read(&small).unwrap()
    );
}

#[tokio::test]
async fn service_errors_keep_the_aws_code_and_name_operation_bucket_and_key() {
    let moto = MotoServer::shared();
    // The bucket is never created.
    let store = S3Store::new(&moto.s3_config("no-such-bucket"), &moto.sdk_config()).unwrap();
    let err = store
        .put("t/x", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.aws_code(), Some("NoSuchBucket"), "{err}");
    let text = err.to_string();
    for part in [
        "PutObject",
        "s3://no-such-bucket",
        "\"t/x\"",
        "NoSuchBucket",
        "HTTP 404",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    assert!(!text.contains("testing"), "credentials leaked into {text}");

    // A missing bucket is not a missing object.
    let err = store.get("t/x").await.unwrap_err();
    assert!(!err.is_not_found(), "{err}");
    assert_eq!(err.aws_code(), Some("NoSuchBucket"), "{err}");
    // HEAD's 404 carries no body: a missing bucket looks like a missing key.
    assert!(store.head("t/x").await.unwrap().is_none());
    let err = store.list("t/", true).await.unwrap_err();
    assert_eq!(err.aws_code(), Some("NoSuchBucket"), "{err}");
    assert!(err.to_string().contains("ListObjectsV2"), "{err}");
    let err = store
        .put_file("t/x", Path::new("/nonexistent/file"))
        .await
        .unwrap_err();
    assert!(matches!(err, ObjstoreError::LocalIo { .. }), "{err}");
}

const BLOCK_A: &str = "01HZX3JQ4V6M7T0000000000AA";
const BLOCK_B: &str = "01HZX3JQ4V6M7T0000000000BB";

fn local_block(root: &Path, ulid: &str) -> PathBuf {
    let dir = root.join(ulid);
    fs::create_dir_all(dir.join("chunks")).unwrap();
    fs::write(dir.join("index"), noise(5000, 1)).unwrap();
    fs::write(dir.join("chunks/000001"), noise(20_000, 2)).unwrap();
    fs::write(
        dir.join(META_JSON),
        format!("{{\"ulid\":\"{ulid}\",\"version\":1}}"),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn block_without_meta_json_is_invisible_on_s3() {
    let moto = MotoServer::shared();
    let store = s3_store(&moto, "layout").await;
    let dir = tempfile::tempdir().unwrap();
    let a = local_block(dir.path(), BLOCK_A);
    let up = layout::upload_block(&store, "tenant-1", &a).await.unwrap();
    assert_eq!(up.files, 3);

    // An upload killed before its last step: the data objects of B, no meta.json.
    let b = local_block(dir.path(), BLOCK_B);
    for f in ["index", "chunks/000001"] {
        store
            .put_file(&format!("tenant-1/{BLOCK_B}/{f}"), &b.join(f))
            .await
            .unwrap();
    }
    assert_eq!(layout::list_tenants(&store).await.unwrap(), ["tenant-1"]);
    assert_eq!(
        layout::list_blocks(&store, "tenant-1").await.unwrap(),
        [BLOCK_A]
    );
    let scan = layout::scan_blocks(&store, "tenant-1").await.unwrap();
    assert_eq!(
        scan.iter()
            .map(|s| (s.ulid.as_str(), s.has_meta))
            .collect::<Vec<_>>(),
        [(BLOCK_A, true), (BLOCK_B, false)]
    );
    let err = layout::download_block(&store, "tenant-1", BLOCK_B, &dir.path().join("dl-b"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains(&format!("{BLOCK_B}/meta.json")),
        "{err}"
    );

    let dl = dir.path().join("dl").join(BLOCK_A);
    layout::download_block(&store, "tenant-1", BLOCK_A, &dl)
        .await
        .unwrap();
    for f in ["index", "chunks/000001", META_JSON] {
        assert!(
            fs::read(dl.join(f)).unwrap() == fs::read(a.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        layout::read_meta_json(&store, "tenant-1", BLOCK_A)
            .await
            .unwrap(),
        fs::read(a.join(META_JSON)).unwrap()
    );

    assert_eq!(
        layout::delete_block(&store, "tenant-1", BLOCK_A)
            .await
            .unwrap(),
        3
    );
    assert!(
        layout::list_blocks(&store, "tenant-1")
            .await
            .unwrap()
            .is_empty()
    );
}
