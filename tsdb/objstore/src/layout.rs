//! Mimir's bucket layout: `<tenant>/<ULID>/{index,chunks/000001…,meta.json}`. A block exists for
//! readers only once its `meta.json` does, so uploads write it last, deletes remove it first, and
//! listings skip block directories without it (partial uploads).
//!
//! These helpers move bytes and paths only; parsing `meta.json` belongs to `rimir_tsdb::block`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use ulid::Ulid;

use crate::store::{ListEntry, ObjectStore, ObjstoreError, Result, TMP_MARKER, validate_key};

/// The file that makes a block visible; uploaded last, deleted first.
pub const META_JSON: &str = "meta.json";
/// Marker the compactor puts in a block scheduled for deletion.
pub const DELETION_MARK: &str = "deletion-mark.json";
/// Marker excluding a block from compaction.
pub const NO_COMPACT_MARK: &str = "no-compact-mark.json";
/// Marker files living in a block directory that are not part of the block's data.
const MARKERS: [&str; 2] = [DELETION_MARK, NO_COMPACT_MARK];

/// Checks a tenant ID as Mimir does: 1–150 characters of `[A-Za-z0-9!-_.*'()]`, not `.` or `..`.
pub fn validate_tenant(op: &'static str, tenant: &str) -> Result<()> {
    let invalid = |reason| ObjstoreError::Invalid {
        op,
        what: "tenant",
        value: tenant.to_string(),
        reason,
    };
    if tenant.is_empty() || tenant.len() > 150 {
        return Err(invalid("must be 1 to 150 characters"));
    }
    if tenant == "." || tenant == ".." {
        return Err(invalid("`.` and `..` are not tenant IDs"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
    if !tenant.chars().all(ok) {
        return Err(invalid(
            "allowed characters are A-Z a-z 0-9 ! - _ . * ' ( )",
        ));
    }
    Ok(())
}

/// Parses a block directory name: a ULID in canonical form (26 upper-case Crockford characters).
pub fn parse_block_id(op: &'static str, name: &str) -> Result<Ulid> {
    match Ulid::from_string(name) {
        Ok(id) if id.to_string() == name => Ok(id),
        _ => Err(ObjstoreError::Invalid {
            op,
            what: "block",
            value: name.to_string(),
            reason: "not a canonical ULID",
        }),
    }
}

/// `<tenant>/<ulid>/`: the prefix of every object of a block.
pub fn block_prefix(tenant: &str, ulid: &str) -> String {
    format!("{tenant}/{ulid}/")
}

/// `<tenant>/<ulid>/meta.json`.
pub fn meta_key(tenant: &str, ulid: &str) -> String {
    format!("{tenant}/{ulid}/{META_JSON}")
}

/// What [`upload_block`] or [`download_block`] moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTransfer {
    /// The block's ULID.
    pub ulid: String,
    /// Files moved, `meta.json` included.
    pub files: usize,
    /// Bytes moved.
    pub bytes: u64,
}

/// Uploads the local block directory `local_block_dir` (named by its ULID) to
/// `<tenant>/<ULID>/`: every file below it, then `meta.json` last. Interrupted before that last
/// step, the block stays invisible to [`list_blocks`].
pub async fn upload_block(
    store: &dyn ObjectStore,
    tenant: &str,
    local_block_dir: &Path,
) -> Result<BlockTransfer> {
    const OP: &str = "UploadBlock";
    validate_tenant(OP, tenant)?;
    let name = local_block_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let ulid = parse_block_id(OP, name)?.to_string();
    let prefix = block_prefix(tenant, &ulid);
    let local_err = |key: &str, path: &Path| {
        let (bucket, key, path) = (
            store.location().to_string(),
            key.to_string(),
            path.to_path_buf(),
        );
        move |source| ObjstoreError::LocalIo {
            op: OP,
            bucket,
            key,
            path,
            source,
        }
    };

    let dir = local_block_dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || local_files(&dir))
        .await
        .map_err(|e| local_err(&prefix, local_block_dir)(io::Error::other(e)))?
        .map_err(|(path, e)| local_err(&prefix, &path)(e))?;
    let meta_path = local_block_dir.join(META_JSON);
    if !files.iter().any(|(rel, _)| rel == META_JSON) {
        return Err(local_err(&meta_key(tenant, &ulid), &meta_path)(
            io::Error::new(io::ErrorKind::NotFound, "block directory has no meta.json"),
        ));
    }

    let mut transfer = BlockTransfer {
        ulid: ulid.clone(),
        files: 0,
        bytes: 0,
    };
    for (rel, size) in files.iter().filter(|(rel, _)| rel != META_JSON) {
        let key = format!("{prefix}{rel}");
        store.put_file(&key, &local_block_dir.join(rel)).await?;
        transfer.files += 1;
        transfer.bytes += size;
    }
    store.put_file(&meta_key(tenant, &ulid), &meta_path).await?;
    transfer.files += 1;
    transfer.bytes += files
        .iter()
        .find(|(rel, _)| rel == META_JSON)
        .map_or(0, |(_, s)| *s);
    Ok(transfer)
}

/// Every regular file below `dir` as (`/`-separated relative path, size), sorted; temporary
/// files of unfinished writes are skipped.
fn local_files(dir: &Path) -> std::result::Result<Vec<(String, u64)>, (PathBuf, io::Error)> {
    fn walk(
        dir: &Path,
        rel: &str,
        out: &mut Vec<(String, u64)>,
    ) -> std::result::Result<(), (PathBuf, io::Error)> {
        let entries = fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err((path, io::Error::other("file name is not UTF-8")));
            };
            if name.starts_with(TMP_MARKER) {
                continue;
            }
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::metadata(&path).map_err(|e| (path.clone(), e))?;
            if md.is_dir() {
                walk(&path, &child, out)?;
            } else if md.is_file() {
                out.push((child, md.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Downloads block `ulid` of `tenant` into `local_dir` (which becomes the block directory):
/// every object of the block except the deletion and no-compact markers, `meta.json` last, so a
/// local directory holding `meta.json` is complete. A block without `meta.json` in the bucket is
/// [`ObjstoreError::NotFound`].
pub async fn download_block(
    store: &dyn ObjectStore,
    tenant: &str,
    ulid: &str,
    local_dir: &Path,
) -> Result<BlockTransfer> {
    const OP: &str = "DownloadBlock";
    validate_tenant(OP, tenant)?;
    parse_block_id(OP, ulid)?;
    let meta = meta_key(tenant, ulid);
    if store.head(&meta).await?.is_none() {
        return Err(ObjstoreError::NotFound {
            op: OP,
            bucket: store.location().to_string(),
            key: meta,
        });
    }
    let prefix = block_prefix(tenant, ulid);
    let mut transfer = BlockTransfer {
        ulid: ulid.to_string(),
        files: 0,
        bytes: 0,
    };
    let mut meta_size = 0;
    for entry in store.list(&prefix, false).await? {
        let ListEntry::Object { key, meta: om } = entry else {
            continue;
        };
        let rel = &key[prefix.len()..];
        if rel == META_JSON {
            meta_size = om.size;
            continue;
        }
        if MARKERS.contains(&rel) {
            continue;
        }
        validate_key(OP, rel)?;
        store.get_to_file(&key, &local_dir.join(rel)).await?;
        transfer.files += 1;
        transfer.bytes += om.size;
    }
    store.get_to_file(&meta, &local_dir.join(META_JSON)).await?;
    transfer.files += 1;
    transfer.bytes += meta_size;
    Ok(transfer)
}

/// Tenants in the bucket: the top-level prefixes that are valid tenant IDs. Names starting with
/// `__` are Mimir's internal prefixes (e.g. `__mimir_cluster`) and are skipped.
pub async fn list_tenants(store: &dyn ObjectStore) -> Result<Vec<String>> {
    Ok(store
        .list("", true)
        .await?
        .into_iter()
        .filter_map(|e| match e {
            ListEntry::Prefix(p) => Some(p.trim_end_matches('/').to_string()),
            ListEntry::Object { .. } => None,
        })
        .filter(|t| !t.starts_with("__") && validate_tenant("ListTenants", t).is_ok())
        .collect())
}

/// One block directory found in the bucket, complete or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockListing {
    /// The block's ULID.
    pub ulid: String,
    /// Whether `meta.json` exists, i.e. whether the block is visible to readers.
    pub has_meta: bool,
    /// Newest modification time of its objects (how old a partial upload is).
    pub last_modified: SystemTime,
    /// Total bytes of its objects.
    pub bytes: u64,
}

/// Every block directory of `tenant`, sorted by ULID, including partial uploads without
/// `meta.json` (the compactor cleans those). One recursive listing, no per-block requests.
pub async fn scan_blocks(store: &dyn ObjectStore, tenant: &str) -> Result<Vec<BlockListing>> {
    validate_tenant("ScanBlocks", tenant)?;
    let prefix = format!("{tenant}/");
    let mut blocks: BTreeMap<String, BlockListing> = BTreeMap::new();
    for entry in store.list(&prefix, false).await? {
        let ListEntry::Object { key, meta } = entry else {
            continue;
        };
        let Some((dir, rest)) = key[prefix.len()..].split_once('/') else {
            continue;
        };
        if parse_block_id("ScanBlocks", dir).is_err() {
            continue;
        }
        let b = blocks
            .entry(dir.to_string())
            .or_insert_with(|| BlockListing {
                ulid: dir.to_string(),
                has_meta: false,
                last_modified: SystemTime::UNIX_EPOCH,
                bytes: 0,
            });
        b.has_meta |= rest == META_JSON;
        b.last_modified = b.last_modified.max(meta.last_modified);
        b.bytes += meta.size;
    }
    Ok(blocks.into_values().collect())
}

/// ULIDs of the visible blocks of `tenant` (those with `meta.json`), sorted.
pub async fn list_blocks(store: &dyn ObjectStore, tenant: &str) -> Result<Vec<String>> {
    Ok(scan_blocks(store, tenant)
        .await?
        .into_iter()
        .filter(|b| b.has_meta)
        .map(|b| b.ulid)
        .collect())
}

/// The raw `meta.json` of a block; [`ObjstoreError::NotFound`] when the block is not visible.
pub async fn read_meta_json(store: &dyn ObjectStore, tenant: &str, ulid: &str) -> Result<Bytes> {
    validate_tenant("ReadMetaJson", tenant)?;
    parse_block_id("ReadMetaJson", ulid)?;
    store.get(&meta_key(tenant, ulid)).await
}

/// Deletes a block: `meta.json` first (the block disappears for readers at once), then the rest.
/// Returns the number of objects deleted.
pub async fn delete_block(store: &dyn ObjectStore, tenant: &str, ulid: &str) -> Result<u64> {
    validate_tenant("DeleteBlock", tenant)?;
    parse_block_id("DeleteBlock", ulid)?;
    let had_meta = store.head(&meta_key(tenant, ulid)).await?.is_some();
    store.delete(&meta_key(tenant, ulid)).await?;
    let rest = store.delete_prefix(&block_prefix(tenant, ulid)).await?;
    Ok(rest + u64::from(had_meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxFuture, FilesystemStore, ObjectMeta};

    const ULID_A: &str = "01HZX3JQ4V6M7T0000000000AA";
    const ULID_B: &str = "01HZX3JQ4V6M7T0000000000BB";

    /// A local block directory with an index, two chunk segments and a meta.json.
    fn local_block(root: &Path, ulid: &str) -> PathBuf {
        let dir = root.join(ulid);
        fs::create_dir_all(dir.join("chunks")).unwrap();
        fs::write(dir.join("index"), format!("index of {ulid}")).unwrap();
        fs::write(dir.join("chunks/000001"), vec![1u8; 3000]).unwrap();
        fs::write(dir.join("chunks/000002"), vec![2u8; 10]).unwrap();
        fs::write(dir.join(META_JSON), format!("{{\"ulid\":\"{ulid}\"}}")).unwrap();
        dir
    }

    fn setup() -> (tempfile::TempDir, FilesystemStore) {
        let d = tempfile::tempdir().unwrap();
        let s = FilesystemStore::new(d.path().join("bucket")).unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn uploaded_block_round_trips_through_download() {
        let (d, s) = setup();
        let src = local_block(d.path(), ULID_A);
        let up = upload_block(&s, "team-a", &src).await.unwrap();
        assert_eq!((up.files, up.bytes), (4, 3000 + 10 + 35 + 37));
        assert_eq!(list_blocks(&s, "team-a").await.unwrap(), [ULID_A]);
        assert_eq!(list_tenants(&s).await.unwrap(), ["team-a"]);
        assert_eq!(
            read_meta_json(&s, "team-a", ULID_A).await.unwrap(),
            fs::read(src.join(META_JSON)).unwrap()
        );
        let dst = d.path().join("download").join(ULID_A);
        let down = download_block(&s, "team-a", ULID_A, &dst).await.unwrap();
        assert_eq!(down, up);
        for f in ["index", "chunks/000001", "chunks/000002", META_JSON] {
            assert_eq!(
                fs::read(dst.join(f)).unwrap(),
                fs::read(src.join(f)).unwrap(),
                "{f}"
            );
        }
    }

    /// Records the order of uploads to prove meta.json goes last.
    #[derive(Debug)]
    struct Recording {
        inner: FilesystemStore,
        puts: std::sync::Mutex<Vec<String>>,
        fail_on: Option<&'static str>,
    }

    impl ObjectStore for Recording {
        fn location(&self) -> &str {
            self.inner.location()
        }
        fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
            self.puts.lock().unwrap().push(key.to_string());
            self.inner.put(key, data)
        }
        fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
            self.puts.lock().unwrap().push(key.to_string());
            if self.fail_on.is_some_and(|f| key.ends_with(f)) {
                return Box::pin(async move {
                    Err(ObjstoreError::Io {
                        op: "PutFile",
                        bucket: "test".into(),
                        key: key.into(),
                        source: io::Error::other("injected failure"),
                    })
                });
            }
            self.inner.put_file(key, path)
        }
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes>> {
            self.inner.get(key)
        }
        fn get_range<'a>(
            &'a self,
            key: &'a str,
            range: std::ops::Range<u64>,
        ) -> BoxFuture<'a, Result<Bytes>> {
            self.inner.get_range(key, range)
        }
        fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
            self.inner.get_to_file(key, path)
        }
        fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
            self.inner.head(key)
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
            delimiter: bool,
        ) -> BoxFuture<'a, Result<Vec<ListEntry>>> {
            self.inner.list(prefix, delimiter)
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
            self.inner.delete(key)
        }
        fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
            self.inner.delete_prefix(prefix)
        }
    }

    #[tokio::test]
    async fn meta_json_is_uploaded_last() {
        let (d, s) = setup();
        let rec = Recording {
            inner: s,
            puts: Default::default(),
            fail_on: None,
        };
        upload_block(&rec, "t", &local_block(d.path(), ULID_A))
            .await
            .unwrap();
        let puts = rec.puts.lock().unwrap().clone();
        assert_eq!(puts.len(), 4);
        assert_eq!(puts.last().unwrap(), &meta_key("t", ULID_A));
    }

    #[tokio::test]
    async fn upload_interrupted_before_meta_json_leaves_no_visible_block() {
        let (d, s) = setup();
        upload_block(&s, "t", &local_block(d.path(), ULID_A))
            .await
            .unwrap();
        let rec = Recording {
            inner: s,
            puts: Default::default(),
            fail_on: Some(META_JSON),
        };
        let err = upload_block(&rec, "t", &local_block(d.path(), ULID_B))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        // The data files of B are there, but B is not a block.
        assert!(
            rec.head(&format!("t/{ULID_B}/index"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(list_blocks(&rec, "t").await.unwrap(), [ULID_A]);
        let scan = scan_blocks(&rec, "t").await.unwrap();
        assert_eq!(scan.len(), 2);
        assert!(scan[0].has_meta && !scan[1].has_meta);
        assert!(
            read_meta_json(&rec, "t", ULID_B)
                .await
                .unwrap_err()
                .is_not_found()
        );
        let err = download_block(&rec, "t", ULID_B, &d.path().join("dl"))
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            !d.path().join("dl").exists(),
            "partial block was downloaded"
        );
    }

    #[tokio::test]
    async fn listing_ignores_non_block_entries_and_internal_prefixes() {
        let (d, s) = setup();
        upload_block(&s, "t", &local_block(d.path(), ULID_A))
            .await
            .unwrap();
        s.put("t/bucket-index.json.gz", Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.put("t/markers/x-deletion-mark.json", Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.put("t/not-a-ulid/meta.json", Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.put("__mimir_cluster/seed.json", Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.put("stray-root-file", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(list_tenants(&s).await.unwrap(), ["t"]);
        assert_eq!(list_blocks(&s, "t").await.unwrap(), [ULID_A]);
    }

    #[tokio::test]
    async fn download_skips_markers_and_delete_block_removes_everything() {
        let (d, s) = setup();
        upload_block(&s, "t", &local_block(d.path(), ULID_A))
            .await
            .unwrap();
        s.put(
            &format!("t/{ULID_A}/{DELETION_MARK}"),
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
        let dst = d.path().join("dl");
        download_block(&s, "t", ULID_A, &dst).await.unwrap();
        assert!(!dst.join(DELETION_MARK).exists());
        assert_eq!(delete_block(&s, "t", ULID_A).await.unwrap(), 5);
        assert!(list_blocks(&s, "t").await.unwrap().is_empty());
        assert!(s.list("t/", false).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn bad_tenant_and_block_names_are_rejected() {
        let (d, s) = setup();
        let src = local_block(d.path(), ULID_A);
        for tenant in ["", "..", "a/b", "tenant with space"] {
            let err = upload_block(&s, tenant, &src).await.unwrap_err();
            assert!(
                matches!(err, ObjstoreError::Invalid { what: "tenant", .. }),
                "{err}"
            );
        }
        let not_ulid = d.path().join("blockdir");
        fs::create_dir_all(&not_ulid).unwrap();
        let err = upload_block(&s, "t", &not_ulid).await.unwrap_err();
        assert!(
            matches!(err, ObjstoreError::Invalid { what: "block", .. }),
            "{err}"
        );
        // Lower-case ULIDs parse but are not the canonical directory name.
        let err = read_meta_json(&s, "t", &ULID_A.to_lowercase())
            .await
            .unwrap_err();
        assert!(matches!(err, ObjstoreError::Invalid { .. }), "{err}");
    }

    #[tokio::test]
    async fn local_block_without_meta_json_is_not_uploaded() {
        let (d, s) = setup();
        let src = local_block(d.path(), ULID_A);
        fs::remove_file(src.join(META_JSON)).unwrap();
        let err = upload_block(&s, "t", &src).await.unwrap_err();
        assert!(err.to_string().contains("meta.json"), "{err}");
        assert!(
            s.list("", false).await.unwrap().is_empty(),
            "data uploaded without meta.json"
        );
    }
}
