//! The `filesystem` backend: a bucket is a directory and a key a relative path below it.
//! Every write goes to a temporary file in the target's directory, is synced, then renamed, so a
//! reader never sees a partial object; directories emptied by deletes are removed, so listings
//! match what S3 would show.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::store::{
    BoxFuture, ListEntry, ObjectMeta, ObjectStore, ObjstoreError, Result, TMP_MARKER,
    tmp_path_beside, validate_key,
};

/// A bucket in a local directory.
#[derive(Debug, Clone)]
pub struct FilesystemStore {
    root: PathBuf,
    location: String,
}

impl FilesystemStore {
    /// Opens (creating if needed) the bucket rooted at `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let location = root.display().to_string();
        fs::create_dir_all(&root).map_err(|source| ObjstoreError::Io {
            op: "Open",
            bucket: location.clone(),
            key: String::new(),
            source,
        })?;
        Ok(FilesystemStore { root, location })
    }

    /// The bucket's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, op: &'static str, key: &str) -> impl FnOnce(io::Error) -> ObjstoreError {
        let bucket = self.location.clone();
        let key = key.to_string();
        move |source| {
            if source.kind() == io::ErrorKind::NotFound {
                ObjstoreError::NotFound { op, bucket, key }
            } else {
                ObjstoreError::Io {
                    op,
                    bucket,
                    key,
                    source,
                }
            }
        }
    }

    fn local(
        &self,
        op: &'static str,
        key: &str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> ObjstoreError {
        let bucket = self.location.clone();
        let key = key.to_string();
        let path = path.to_path_buf();
        move |source| ObjstoreError::LocalIo {
            op,
            bucket,
            key,
            path,
            source,
        }
    }

    /// Runs blocking file work off the async runtime.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        op: &'static str,
        key: &'a str,
        f: impl FnOnce(FilesystemStore, String) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'a, Result<T>> {
        let this = self.clone();
        let owned_key = key.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(this, owned_key))
                .await
                .map_err(|e| ObjstoreError::Io {
                    op,
                    bucket: self.location.clone(),
                    key: key.to_string(),
                    source: io::Error::other(format!("blocking task failed: {e}")),
                })?
        })
    }

    fn path_of(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        validate_key(op, key)?;
        Ok(self.root.join(key))
    }

    /// Writes an object atomically: `fill` writes the content into a temporary file beside the
    /// target, which is synced and renamed over it.
    fn write_atomic(
        &self,
        op: &'static str,
        key: &str,
        fill: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<()> {
        let target = self.path_of(op, key)?;
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        let tmp = tmp_path_beside(&target);
        let result = (|| {
            let mut f = create_in_dir(&dir, &tmp).map_err(self.io(op, key))?;
            fill(&mut f)?;
            f.sync_all().map_err(self.io(op, key))?;
            drop(f);
            fs::rename(&tmp, &target).map_err(self.io(op, key))?;
            // Make the rename durable; failure here loses nothing readers could see.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn list_sync(&self, prefix: &str, delimiter: bool) -> Result<Vec<ListEntry>> {
        let (dir_part, name_prefix) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        if !dir_part.is_empty() {
            validate_key("List", &dir_part[..dir_part.len() - 1])?;
        }
        let dir = self.root.join(dir_part);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(out),
            Err(e) => return Err(self.io("List", prefix)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(self.io("List", prefix))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with(TMP_MARKER) || !name.starts_with(name_prefix) {
                continue;
            }
            let key = format!("{dir_part}{name}");
            let ft = entry.file_type().map_err(self.io("List", &key))?;
            if ft.is_dir() {
                if delimiter {
                    if has_object(&entry.path()) {
                        out.push(ListEntry::Prefix(format!("{key}/")));
                    }
                } else {
                    self.walk(&entry.path(), &key, &mut out)?;
                }
            } else if ft.is_file() {
                out.push(self.object_entry(&entry.path(), key)?);
            }
        }
        out.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(out)
    }

    fn walk(&self, dir: &Path, key: &str, out: &mut Vec<ListEntry>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // Removed concurrently: it has no objects any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("List", key)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(self.io("List", key))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with(TMP_MARKER) {
                continue;
            }
            let child = format!("{key}/{name}");
            let ft = entry.file_type().map_err(self.io("List", &child))?;
            if ft.is_dir() {
                self.walk(&entry.path(), &child, out)?;
            } else if ft.is_file() {
                out.push(self.object_entry(&entry.path(), child)?);
            }
        }
        Ok(())
    }

    fn object_entry(&self, path: &Path, key: String) -> Result<ListEntry> {
        let md = fs::metadata(path).map_err(self.io("List", &key))?;
        Ok(ListEntry::Object {
            meta: meta_of(&md),
            key,
        })
    }

    fn delete_sync(&self, key: &str) -> Result<()> {
        let path = self.path_of("DeleteObject", key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("DeleteObject", key)(e)),
        }
        // Remove directories the delete emptied, up to the root (fails harmlessly when not empty).
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

/// Creates `file` in `dir`, creating `dir` first. A concurrent delete removes directories it
/// emptied, possibly between the two steps, so a vanished directory is recreated and retried.
fn create_in_dir(dir: &Path, file: &Path) -> io::Result<File> {
    let mut attempts = 0;
    loop {
        fs::create_dir_all(dir)?;
        match File::create(file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

fn meta_of(md: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        size: md.len(),
        last_modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
    }
}

/// True when `dir` holds at least one (non-temporary) file at any depth.
fn has_object(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        if e.file_name().to_string_lossy().starts_with(TMP_MARKER) {
            return false;
        }
        match e.file_type() {
            Ok(ft) if ft.is_dir() => has_object(&e.path()),
            Ok(ft) => ft.is_file(),
            Err(_) => false,
        }
    })
}

impl ObjectStore for FilesystemStore {
    fn location(&self) -> &str {
        &self.location
    }

    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<()>> {
        self.blocking("PutObject", key, move |this, key| {
            this.write_atomic("PutObject", &key, |f| {
                f.write_all(&data).map_err(this.io("PutObject", &key))
            })
        })
    }

    fn put_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
        let src = path.to_path_buf();
        self.blocking("PutFile", key, move |this, key| {
            let mut input = File::open(&src).map_err(this.local("PutFile", &key, &src))?;
            this.write_atomic("PutFile", &key, |f| {
                copy(&mut input, f).map_err(|e| match e {
                    CopyError::Read(e) => this.local("PutFile", &key, &src)(e),
                    CopyError::Write(e) => this.io("PutFile", &key)(e),
                })
            })
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        self.blocking("GetObject", key, |this, key| {
            let path = this.path_of("GetObject", &key)?;
            fs::read(&path)
                .map(Bytes::from)
                .map_err(this.io("GetObject", &key))
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        self.blocking("GetObjectRange", key, move |this, key| {
            let op = "GetObjectRange";
            let path = this.path_of(op, &key)?;
            let f = File::open(&path).map_err(this.io(op, &key))?;
            let size = f.metadata().map_err(this.io(op, &key))?.len();
            if range.start > range.end || (range.start >= size && range.start < range.end) {
                return Err(ObjstoreError::InvalidRange {
                    op,
                    bucket: this.location.clone(),
                    key,
                    start: range.start,
                    end: range.end,
                    size: Some(size),
                });
            }
            let end = range.end.min(size);
            let len = usize::try_from(end.saturating_sub(range.start)).map_err(|_| {
                this.io(op, &key)(io::Error::other("range larger than address space"))
            })?;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, range.start)
                .map_err(this.io(op, &key))?;
            Ok(Bytes::from(buf))
        })
    }

    fn get_to_file<'a>(&'a self, key: &'a str, path: &'a Path) -> BoxFuture<'a, Result<()>> {
        let dst = path.to_path_buf();
        self.blocking("GetToFile", key, move |this, key| {
            let op = "GetToFile";
            let src = this.path_of(op, &key)?;
            let mut input = File::open(&src).map_err(this.io(op, &key))?;
            write_local_atomic(&dst, |out| {
                copy(&mut input, out).map_err(|e| match e {
                    CopyError::Read(e) => this.io(op, &key)(e),
                    CopyError::Write(e) => this.local(op, &key, &dst)(e),
                })
            })
            .map_err(|e| e.into_objstore(|e| this.local(op, &key, &dst)(e)))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        self.blocking("HeadObject", key, |this, key| {
            let path = this.path_of("HeadObject", &key)?;
            match fs::metadata(&path) {
                Ok(md) if md.is_file() => Ok(Some(meta_of(&md))),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(this.io("HeadObject", &key)(e)),
            }
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: bool,
    ) -> BoxFuture<'a, Result<Vec<ListEntry>>> {
        self.blocking("List", prefix, move |this, prefix| {
            this.list_sync(&prefix, delimiter)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        self.blocking("DeleteObject", key, |this, key| this.delete_sync(&key))
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64>> {
        self.blocking("DeletePrefix", prefix, |this, prefix| {
            let mut n = 0;
            for entry in this.list_sync(&prefix, false)? {
                if let ListEntry::Object { key, .. } = entry {
                    this.delete_sync(&key)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn remove_abandoned_writes<'a>(
        &'a self,
        prefix: &'a str,
        older_than: std::time::Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        self.blocking("RemoveAbandonedWrites", prefix, move |this, prefix| {
            let dir = match prefix.rfind('/') {
                Some(i) => this.path_of("RemoveAbandonedWrites", &prefix[..i])?,
                None => this.root.clone(),
            };
            let mut removed = 0;
            let mut stack = vec![dir];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(md) = entry.metadata() else { continue };
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let key = path
                        .strip_prefix(&this.root)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if md.is_dir() {
                        stack.push(path);
                    } else if name.starts_with(TMP_MARKER)
                        && key.starts_with(&prefix)
                        && md
                            .modified()
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|age| age >= older_than)
                    {
                        match fs::remove_file(&path) {
                            Ok(()) => removed += 1,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(this.local("RemoveAbandonedWrites", &key, &path)(e));
                            }
                        }
                    }
                }
            }
            Ok(removed)
        })
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `input` to `out`, telling read failures from write failures.
fn copy(input: &mut File, out: &mut File) -> std::result::Result<(), CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Failure of [`write_local_atomic`]: either the caller's fill step or local file handling.
pub(crate) enum LocalWriteError {
    Fill(ObjstoreError),
    Io(io::Error),
}

impl LocalWriteError {
    pub(crate) fn into_objstore(
        self,
        io: impl FnOnce(io::Error) -> ObjstoreError,
    ) -> ObjstoreError {
        match self {
            LocalWriteError::Fill(e) => e,
            LocalWriteError::Io(e) => io(e),
        }
    }
}

/// Writes the local file `dst` through a temporary file beside it, synced and renamed.
pub(crate) fn write_local_atomic(
    dst: &Path,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> std::result::Result<(), LocalWriteError> {
    if let Some(dir) = dst.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(LocalWriteError::Io)?;
    }
    let tmp = tmp_path_beside(dst);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(LocalWriteError::Io)?;
        fill(&mut f).map_err(LocalWriteError::Fill)?;
        f.sync_all().map_err(LocalWriteError::Io)?;
        fs::rename(&tmp, dst).map_err(LocalWriteError::Io)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FilesystemStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStore::new(dir.path().join("bucket")).unwrap();
        (dir, s)
    }

    fn keys(entries: &[ListEntry]) -> Vec<&str> {
        entries.iter().map(ListEntry::key).collect()
    }

    #[tokio::test]
    async fn put_then_get_returns_the_bytes_and_head_the_size() {
        let (_d, s) = store();
        s.put("t/a/b", Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        assert_eq!(
            s.get("t/a/b").await.unwrap(),
            Bytes::from_static(b"hello world")
        );
        let meta = s.head("t/a/b").await.unwrap().unwrap();
        assert_eq!(meta.size, 11);
        assert!(s.head("t/a/missing").await.unwrap().is_none());
        // Overwrite replaces.
        s.put("t/a/b", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(s.get("t/a/b").await.unwrap(), Bytes::from_static(b"x"));
    }

    #[tokio::test]
    async fn get_of_missing_key_is_not_found_naming_key() {
        let (_d, s) = store();
        let err = s.get("t/nope").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("t/nope"), "{err}");
        assert!(err.to_string().contains("GetObject"), "{err}");
        let err = s.get_range("t/nope", 0..3).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[tokio::test]
    async fn get_range_reads_the_slice_and_cuts_at_the_end() {
        let (_d, s) = store();
        s.put("k", Bytes::from_static(b"0123456789")).await.unwrap();
        assert_eq!(&s.get_range("k", 2..5).await.unwrap()[..], b"234");
        assert_eq!(&s.get_range("k", 7..100).await.unwrap()[..], b"789");
        assert_eq!(&s.get_range("k", 4..4).await.unwrap()[..], b"");
        let err = s.get_range("k", 10..12).await.unwrap_err();
        assert!(
            matches!(err, ObjstoreError::InvalidRange { size: Some(10), .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn list_is_sorted_and_folds_common_prefixes_with_delimiter() {
        let (_d, s) = store();
        for k in [
            "t2/b/x",
            "t1/z",
            "t1/a/1",
            "t1/a/2",
            "t1/b/chunks/000001",
            "t10/q",
        ] {
            s.put(k, Bytes::from_static(b"v")).await.unwrap();
        }
        let all = s.list("", false).await.unwrap();
        assert_eq!(
            keys(&all),
            [
                "t1/a/1",
                "t1/a/2",
                "t1/b/chunks/000001",
                "t1/z",
                "t10/q",
                "t2/b/x"
            ]
        );
        let top = s.list("", true).await.unwrap();
        assert_eq!(keys(&top), ["t1/", "t10/", "t2/"]);
        assert!(top.iter().all(|e| matches!(e, ListEntry::Prefix(_))));
        let t1 = s.list("t1/", true).await.unwrap();
        assert_eq!(keys(&t1), ["t1/a/", "t1/b/", "t1/z"]);
        assert!(matches!(&t1[2], ListEntry::Object { meta, .. } if meta.size == 1));
        // A partial last segment is a string prefix, as on S3.
        assert_eq!(keys(&s.list("t1", true).await.unwrap()), ["t1/", "t10/"]);
        assert_eq!(
            keys(&s.list("t1/a/", false).await.unwrap()),
            ["t1/a/1", "t1/a/2"]
        );
        assert!(s.list("nothing/", true).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_is_idempotent_and_removes_emptied_prefixes() {
        let (_d, s) = store();
        s.put("t/a/1", Bytes::from_static(b"v")).await.unwrap();
        s.put("t/b", Bytes::from_static(b"v")).await.unwrap();
        s.delete("t/a/1").await.unwrap();
        s.delete("t/a/1").await.unwrap();
        assert_eq!(keys(&s.list("t/", true).await.unwrap()), ["t/b"]);
        assert!(
            !s.root().join("t/a").exists(),
            "emptied directory left behind"
        );
    }

    #[tokio::test]
    async fn abandoned_temporary_files_are_removed_once_old_enough() {
        let (d, s) = store();
        s.put("t/b1/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // What a writer killed mid-put leaves: a temporary file beside its target.
        let _keep = d;
        let left = s
            .root()
            .join("t/b1")
            .join(format!("{TMP_MARKER}index-0123"));
        std::fs::write(&left, b"half").unwrap();
        let other = s.root().join("u").join(format!("{TMP_MARKER}x-1"));
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        std::fs::write(&other, b"half").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(s.remove_abandoned_writes("t/", hour).await.unwrap(), 0);
        assert!(left.exists(), "too young to be abandoned");
        let now = std::time::Duration::ZERO;
        assert_eq!(s.remove_abandoned_writes("t/", now).await.unwrap(), 1);
        assert!(!left.exists() && other.exists(), "only under the prefix");
        assert_eq!(
            keys(&s.list("", false).await.unwrap()),
            ["t/b1/meta.json"],
            "objects untouched"
        );
        assert_eq!(s.remove_abandoned_writes("", now).await.unwrap(), 1);
        assert!(!other.exists());
    }

    #[tokio::test]
    async fn delete_prefix_removes_only_matching_keys() {
        let (_d, s) = store();
        for k in [
            "t/b1/meta.json",
            "t/b1/chunks/000001",
            "t/b10/meta.json",
            "u/b1/x",
        ] {
            s.put(k, Bytes::from_static(b"v")).await.unwrap();
        }
        assert_eq!(s.delete_prefix("t/b1/").await.unwrap(), 2);
        assert_eq!(
            keys(&s.list("", false).await.unwrap()),
            ["t/b10/meta.json", "u/b1/x"]
        );
    }

    #[tokio::test]
    async fn temporary_files_of_unfinished_writes_are_invisible() {
        let (_d, s) = store();
        s.put("t/blk/index", Bytes::from_static(b"done"))
            .await
            .unwrap();
        // What a writer killed between create and rename leaves behind.
        fs::write(
            s.root()
                .join("t/blk")
                .join(format!("{TMP_MARKER}meta.json-1")),
            b"part",
        )
        .unwrap();
        fs::create_dir_all(s.root().join("t/only-tmp")).unwrap();
        fs::write(
            s.root().join("t/only-tmp").join(format!("{TMP_MARKER}x-2")),
            b"part",
        )
        .unwrap();
        assert_eq!(keys(&s.list("t/", false).await.unwrap()), ["t/blk/index"]);
        assert_eq!(keys(&s.list("t/", true).await.unwrap()), ["t/blk/"]);
        assert!(s.head("t/blk/meta.json").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn put_file_and_get_to_file_round_trip_and_leave_no_temp_files() {
        let (d, s) = store();
        let src = d.path().join("src.bin");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &data).unwrap();
        s.put_file("t/big", &src).await.unwrap();
        let dst = d.path().join("out/nested/big");
        s.get_to_file("t/big", &dst).await.unwrap();
        assert_eq!(fs::read(&dst).unwrap(), data);
        let leftovers: Vec<_> = fs::read_dir(dst.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_MARKER))
            .collect();
        assert!(leftovers.is_empty());
        let err = s
            .put_file("t/x", &d.path().join("absent"))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjstoreError::LocalIo { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(s.head("t/x").await.unwrap().is_none());
        let err = s
            .get_to_file("t/none", &d.path().join("n"))
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!d.path().join("n").exists());
    }

    #[tokio::test]
    async fn concurrent_readers_never_see_a_partial_object() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let a = Bytes::from(vec![b'a'; 2 << 20]);
        let b = Bytes::from(vec![b'b'; 2 << 20]);
        s.put("k", a.clone()).await.unwrap();
        let writer = {
            let s = s.clone();
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    s.put("k", if i % 2 == 0 { b.clone() } else { a.clone() })
                        .await
                        .unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let got = s.get("k").await.unwrap();
            assert!(
                got == a || got == b,
                "saw a partial object of {} bytes",
                got.len()
            );
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn invalid_keys_are_rejected_before_touching_disk() {
        let (d, s) = store();
        let err = s
            .put("../escape", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjstoreError::Invalid { .. }), "{err}");
        assert!(!d.path().join("escape").exists());
    }
}
