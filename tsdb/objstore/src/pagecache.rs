//! The querier's local page cache of bucket objects: blocks are read with ranged GETs of
//! fixed-size, aligned pages, each kept as a file under the cache directory, so a query fetches
//! only the parts of a block it reads and later queries read them from local disk.
//!
//! Layout: page `n` of object `<tenant>/<ULID>/index` is the file
//! `<cache_dir>/<tenant>/<ULID>/index.pages/<n, 10 digits>` holding the page's bytes followed by
//! their CRC32-Castagnoli (4 bytes, big-endian). Pages are written to a temporary file and
//! renamed, and pages found on disk at startup are checked against their CRC on first use, so a
//! crash never serves a torn page. Adjacent missing pages are fetched with one GET. The total
//! size of the page files is kept under a limit by evicting the least recently used pages.
//!
//! In memory: one small entry per cached page (bounded by the size limit over the page size),
//! nothing per block read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;

use crate::store::{ObjectStore, ObjstoreError};
use rimir_tsdb::encoding::crc32c;
use rimir_tsdb::framed::{FrameCache, FrameCacheMetrics};
use rimir_tsdb::readat::ReadAt;

/// Default page size: large enough that a series entry or chunk rarely spans two pages, small
/// enough that a selective query fetches little.
pub const DEFAULT_PAGE_SIZE: u64 = 64 << 10;
/// Suffix of the directory holding an object's pages.
const PAGES_SUFFIX: &str = ".pages";
/// Prefix of page files being written.
const TMP_PREFIX: &str = ".tmp-";
/// Bytes of the CRC trailer of a page file.
const CRC_LEN: u64 = 4;
/// When prefetching, missing pages at most this many pages apart are fetched with one request
/// (the pages between them too): one request costs more than a few pages of transfer.
const MAX_GAP_PAGES: u64 = 2;
/// Concurrent GETs of one prefetch.
const PREFETCH_CONCURRENCY: usize = 8;
/// Page files kept open between reads (a read of a cached page is then one `pread`).
const MAX_OPEN_FILES: usize = 256;

/// A read through the page cache failed. Every variant names the object key and byte range.
#[derive(Debug, thiserror::Error)]
pub enum PageCacheError {
    /// The read reaches past the end of the object.
    #[error("reading {key:?} bytes {start}..{end}: past the end of the object ({size} bytes)")]
    PastEnd {
        /// Object key.
        key: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// Object size.
        size: u64,
    },
    /// The bucket answered the ranged GET with an error.
    #[error("fetching {key:?} bytes {start}..{end}: {source}")]
    Fetch {
        /// Object key.
        key: String,
        /// First byte of the GET.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The bucket's error.
        #[source]
        source: Box<ObjstoreError>,
    },
    /// The bucket returned fewer bytes than the object's size promised (truncated object).
    #[error(
        "fetching {key:?} bytes {start}..{end}: the bucket returned {got} bytes (object shorter than its listed size?)"
    )]
    ShortRead {
        /// Object key.
        key: String,
        /// First byte of the GET.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Bytes returned.
        got: u64,
    },
    /// A local cache file or directory could not be read or created.
    #[error("{op} page cache {}: {source}", .path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the querier's bucket reads cost, exported on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct BucketReadMetrics {
    /// Ranged GETs sent to the bucket.
    pub range_requests: Counter,
    /// Bytes those GETs returned.
    pub fetched_bytes: Counter,
    /// Page reads served from the local cache.
    pub page_hits: Counter,
    /// Pages that had to be fetched from the bucket.
    pub page_misses: Counter,
    /// Pages evicted to stay under the size limit.
    pub evicted_pages: Counter,
    /// Bytes of page files on disk.
    pub cached_bytes: Gauge,
    /// Whole blocks downloaded (only blocks compressed as one stream per file, which cannot be
    /// range-read).
    pub block_downloads: Counter,
    /// Decoded frames of cold-compressed blocks held in memory.
    pub frames: FrameCacheMetrics,
}

impl BucketReadMetrics {
    /// Registers the metrics as `rimir_querier_bucket_*` and `rimir_querier_page_cache_*`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rimir_querier_bucket_range_requests",
            "Ranged GET requests the querier sent to the bucket",
            self.range_requests.clone(),
        );
        r.register(
            "rimir_querier_bucket_fetched_bytes",
            "Bytes the querier's ranged GETs returned",
            self.fetched_bytes.clone(),
        );
        r.register(
            "rimir_querier_bucket_block_downloads",
            "Whole blocks downloaded by the querier (blocks compressed as one stream per file only)",
            self.block_downloads.clone(),
        );
        r.register(
            "rimir_querier_frame_cache_hits",
            "Reads of cold-compressed blocks served from a decoded frame in memory",
            self.frames.hits.clone(),
        );
        r.register(
            "rimir_querier_frame_cache_misses",
            "Frames of cold-compressed blocks the querier decoded",
            self.frames.misses.clone(),
        );
        r.register(
            "rimir_querier_frame_cache_bytes",
            "Decoded frames of cold-compressed blocks held in memory",
            self.frames.bytes.clone(),
        );
        r.register(
            "rimir_querier_page_cache_hits",
            "Page reads served from the querier's local page cache",
            self.page_hits.clone(),
        );
        r.register(
            "rimir_querier_page_cache_misses",
            "Pages the querier fetched from the bucket",
            self.page_misses.clone(),
        );
        r.register(
            "rimir_querier_page_cache_evicted_pages",
            "Pages evicted from the querier's page cache",
            self.evicted_pages.clone(),
        );
        r.register(
            "rimir_querier_page_cache_bytes",
            "Bytes of page files in the querier's page cache",
            self.cached_bytes.clone(),
        );
    }
}

/// One cached page.
#[derive(Debug)]
struct Entry {
    /// Position in the LRU order.
    tick: u64,
    /// Size of the page file.
    bytes: u64,
    /// Whether the file's CRC was checked by this process (pages it wrote are).
    verified: bool,
    /// The page file, while it is among the open ones.
    file: Option<Arc<File>>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<Arc<str>, HashMap<u64, Entry>>,
    /// Tick → page, oldest first.
    lru: BTreeMap<u64, (Arc<str>, u64)>,
    tick: u64,
    bytes: u64,
    /// Pages whose file is open, oldest first (may name pages since removed).
    open_files: VecDeque<(Arc<str>, u64)>,
}

impl State {
    fn remove(&mut self, key: &str, page: u64) -> Option<Entry> {
        let pages = self.objects.get_mut(key)?;
        let e = pages.remove(&page)?;
        if pages.is_empty() {
            self.objects.remove(key);
        }
        self.lru.remove(&e.tick);
        self.bytes -= e.bytes;
        Some(e)
    }

    fn insert(&mut self, key: &str, page: u64, bytes: u64, verified: bool) {
        self.remove(key, page);
        let k: Arc<str> = match self.objects.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.tick += 1;
        self.lru.insert(self.tick, (k.clone(), page));
        self.objects.entry(k).or_default().insert(
            page,
            Entry {
                tick: self.tick,
                bytes,
                verified,
                file: None,
            },
        );
        self.bytes += bytes;
    }

    /// Keeps `file` open for page `page` of `key`, closing the longest open one beyond the cap.
    fn keep_open(&mut self, key: &str, page: u64, file: Arc<File>) {
        let Some((k, pages)) = self.objects.get_key_value(key) else {
            return;
        };
        let k = k.clone();
        if !pages.contains_key(&page) {
            return;
        }
        if let Some(e) = self.objects.get_mut(key).and_then(|p| p.get_mut(&page)) {
            e.file = Some(file);
        }
        self.open_files.push_back((k, page));
        while self.open_files.len() > MAX_OPEN_FILES {
            if let Some((k, p)) = self.open_files.pop_front()
                && let Some(e) = self.objects.get_mut(&k).and_then(|m| m.get_mut(&p))
            {
                e.file = None;
            }
        }
    }
}

/// Fetches byte ranges of one object, several at once where it can; one result per range.
pub type FetchRanges<'a> = dyn Fn(&[Range<u64>]) -> Vec<Result<Bytes, ObjstoreError>> + 'a;

/// Pages of bucket objects on local disk, shared by every tenant and block of a querier.
#[derive(Debug)]
pub struct PageCache {
    root: PathBuf,
    page_size: u64,
    max_bytes: u64,
    state: Mutex<State>,
    metrics: BucketReadMetrics,
    tmp_counter: AtomicU64,
    frames: Arc<FrameCache>,
}

/// Decoded frames of cold-compressed blocks a querier keeps in memory, for all tenants.
pub const FRAME_CACHE_BYTES: usize = 64 << 20;

impl PageCache {
    /// Opens the cache in `root` (created if missing) with pages of `page_size` bytes and at most
    /// `max_bytes` of page files. Pages left by an earlier run are kept (checked on first use),
    /// temporary files of interrupted writes are removed.
    pub fn open(
        root: &Path,
        page_size: u64,
        max_bytes: u64,
        metrics: BucketReadMetrics,
    ) -> Result<Self, PageCacheError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| PageCacheError::Io { op, path, source }
        };
        fs::create_dir_all(root).map_err(io("create", root))?;
        let mut found = Vec::new();
        scan(root, root, &mut found)?;
        found.sort_by_key(|f| f.0);
        let cache = Self {
            root: root.to_path_buf(),
            page_size: page_size.max(1),
            max_bytes,
            state: Mutex::new(State::default()),
            frames: FrameCache::with_metrics(FRAME_CACHE_BYTES, metrics.frames.clone()),
            metrics,
            tmp_counter: AtomicU64::new(0),
        };
        {
            let mut st = cache.lock();
            for (_, key, page, bytes) in found {
                st.insert(&key, page, bytes, false);
            }
        }
        cache.evict();
        Ok(cache)
    }

    /// The metrics this cache counts into.
    pub fn metrics(&self) -> &BucketReadMetrics {
        &self.metrics
    }

    /// The in-memory cache of decoded frames every compressed bucket object read through this
    /// cache shares (the page files hold the compressed bytes).
    pub fn frames(&self) -> &Arc<FrameCache> {
        &self.frames
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Bytes of page files currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file of page `page` of object `key`.
    pub fn page_path(&self, key: &str, page: u64) -> PathBuf {
        self.root
            .join(format!("{key}{PAGES_SUFFIX}"))
            .join(format!("{page:010}"))
    }

    /// Forgets every page of the objects under `prefix` (e.g. `<tenant>/<ULID>/`, a block that
    /// left the bucket) and removes the directory `root/prefix` from disk.
    pub fn remove_prefix(&self, prefix: &str) {
        {
            let mut st = self.lock();
            let keys: Vec<Arc<str>> = st
                .objects
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            for k in keys {
                if let Some(pages) = st.objects.remove(&k) {
                    for e in pages.values() {
                        st.lru.remove(&e.tick);
                        st.bytes -= e.bytes;
                    }
                }
            }
            self.metrics.cached_bytes.set(st.bytes as i64);
        }
        let dir = self.root.join(prefix.trim_end_matches('/'));
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing cached pages");
        }
    }

    /// Fills `buf` with bytes `offset..offset + buf.len()` of object `key` (of `size` bytes):
    /// cached pages from disk, runs of adjacent missing pages with one `fetch` each.
    pub fn read(
        &self,
        key: &str,
        size: u64,
        offset: u64,
        buf: &mut [u8],
        fetch: &FetchRanges<'_>,
    ) -> Result<(), PageCacheError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= size)
            .ok_or_else(|| PageCacheError::PastEnd {
                key: key.to_string(),
                start: offset,
                end: offset.saturating_add(buf.len() as u64),
                size,
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let ps = self.page_size;
        let mut missing = Vec::new();
        for page in offset / ps..=(end - 1) / ps {
            let (lo, hi) = ((page * ps).max(offset), ((page + 1) * ps).min(end));
            let page_len = ((page + 1) * ps).min(size) - page * ps;
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            if self.read_hit(key, page, page_len, lo - page * ps, dst)? {
                self.metrics.page_hits.inc();
            } else {
                missing.push(page);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let groups = runs(&missing, 1);
        let fetched = self.fetch_runs(key, size, &groups, fetch);
        for ((first, last), data) in groups.into_iter().zip(fetched) {
            let data = data?;
            for page in first..=last {
                let p_start = page * ps;
                let (lo, hi) = (p_start.max(offset), ((page + 1) * ps).min(end));
                let at = first * ps;
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(())
    }

    /// Fetches the pages covering `ranges` of object `key` that are not cached yet, several
    /// requests at once, pages close together in one request. Failures are left for the reads
    /// to report.
    pub fn prefetch(&self, key: &str, size: u64, ranges: &[Range<u64>], fetch: &FetchRanges<'_>) {
        let ps = self.page_size;
        let mut pages: Vec<u64> = ranges
            .iter()
            .filter(|r| r.start < r.end && r.start < size)
            .flat_map(|r| r.start / ps..=(r.end.min(size) - 1) / ps)
            .collect();
        pages.sort_unstable();
        pages.dedup();
        {
            let st = self.lock();
            let cached = st.objects.get(key);
            pages.retain(|p| cached.is_none_or(|c| !c.contains_key(p)));
        }
        if pages.is_empty() {
            return;
        }
        let groups = runs(&pages, MAX_GAP_PAGES + 1);
        for r in self.fetch_runs(key, size, &groups, fetch) {
            if let Err(e) = r {
                tracing::debug!(key, error = %e, "prefetch failed; the read will retry");
            }
        }
    }

    /// Fetches each run of pages `(first, last)` with one GET (all runs at once) and caches
    /// every page of it; returns the bytes of each run.
    fn fetch_runs(
        &self,
        key: &str,
        size: u64,
        runs: &[(u64, u64)],
        fetch: &FetchRanges<'_>,
    ) -> Vec<Result<Bytes, PageCacheError>> {
        let ps = self.page_size;
        let ranges: Vec<Range<u64>> = runs
            .iter()
            .map(|&(a, b)| a * ps..((b + 1) * ps).min(size))
            .collect();
        let results = fetch(&ranges);
        self.metrics.range_requests.inc_by(ranges.len() as u64);
        let mut out = Vec::with_capacity(ranges.len());
        for ((range, &(first, last)), r) in ranges.iter().zip(runs).zip(results) {
            let checked = match r {
                Err(source) => Err(PageCacheError::Fetch {
                    key: key.to_string(),
                    start: range.start,
                    end: range.end,
                    source: Box::new(source),
                }),
                Ok(data) => {
                    self.metrics.fetched_bytes.inc_by(data.len() as u64);
                    if data.len() as u64 != range.end - range.start {
                        Err(PageCacheError::ShortRead {
                            key: key.to_string(),
                            start: range.start,
                            end: range.end,
                            got: data.len() as u64,
                        })
                    } else {
                        for page in first..=last {
                            let lo = (page * ps - range.start) as usize;
                            let hi = (((page + 1) * ps).min(size) - range.start) as usize;
                            self.store(key, page, &data[lo..hi]);
                        }
                        self.metrics.page_misses.inc_by(last - first + 1);
                        Ok(data)
                    }
                }
            };
            out.push(checked);
        }
        self.evict();
        out
    }

    /// Copies bytes `in_page..in_page + dst.len()` of a cached page into `dst`; false when the
    /// page is not cached (or its file is gone or damaged, which forgets it).
    fn read_hit(
        &self,
        key: &str,
        page: u64,
        page_len: u64,
        in_page: u64,
        dst: &mut [u8],
    ) -> Result<bool, PageCacheError> {
        let (verified, open) = {
            let mut st = self.lock();
            let tick = st.tick + 1;
            let Some(e) = st.objects.get_mut(key).and_then(|p| p.get_mut(&page)) else {
                return Ok(false);
            };
            let (old, verified, open) = (e.tick, e.verified, e.file.clone());
            e.tick = tick;
            st.tick = tick;
            if let Some(v) = st.lru.remove(&old) {
                st.lru.insert(tick, v);
            }
            (verified, open)
        };
        let path = self.page_path(key, page);
        let io = |op| {
            let path = path.clone();
            move |source| PageCacheError::Io { op, path, source }
        };
        let file = match &open {
            Some(f) => f.clone(),
            None => match File::open(&path) {
                Ok(f) => Arc::new(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Evicted meanwhile, or removed behind our back.
                    self.forget(key, page, false);
                    return Ok(false);
                }
                Err(e) => return Err(io("open")(e)),
            },
        };
        if verified {
            return match file.read_exact_at(dst, in_page) {
                Ok(()) => {
                    if open.is_none() {
                        self.lock().keep_open(key, page, file);
                    }
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.forget(key, page, true);
                    Ok(false)
                }
                Err(e) => Err(io("read")(e)),
            };
        }
        let mut whole = vec![0u8; (page_len + CRC_LEN) as usize];
        let size = file.metadata().map_err(io("stat"))?.len();
        let intact = size == page_len + CRC_LEN && file.read_exact_at(&mut whole, 0).is_ok() && {
            let (data, crc) = whole.split_at(page_len as usize);
            crc32c(data).to_be_bytes() == crc
        };
        if !intact {
            tracing::warn!(path = %path.display(), "damaged cache page discarded");
            self.forget(key, page, true);
            return Ok(false);
        }
        let at = in_page as usize;
        dst.copy_from_slice(&whole[at..at + dst.len()]);
        if let Some(e) = self
            .lock()
            .objects
            .get_mut(key)
            .and_then(|p| p.get_mut(&page))
        {
            e.verified = true;
        }
        Ok(true)
    }

    fn forget(&self, key: &str, page: u64, delete_file: bool) {
        let mut st = self.lock();
        st.remove(key, page);
        self.metrics.cached_bytes.set(st.bytes as i64);
        drop(st);
        if delete_file {
            let _ = fs::remove_file(self.page_path(key, page));
        }
    }

    /// Writes a page file (temporary file, then rename) and records it. A failed write only
    /// leaves the page uncached.
    fn store(&self, key: &str, page: u64, data: &[u8]) {
        let path = self.page_path(key, page);
        let Some(dir) = path.parent() else {
            return;
        };
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{page}-{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::create_dir_all(dir)
            .and_then(|_| File::create(&tmp))
            .and_then(|mut f| {
                f.write_all(data)?;
                f.write_all(&crc32c(data).to_be_bytes())
            })
            .and_then(|_| fs::rename(&tmp, &path));
        match written {
            Ok(()) => {
                let mut st = self.lock();
                st.insert(key, page, data.len() as u64 + CRC_LEN, true);
                self.metrics.cached_bytes.set(st.bytes as i64);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                tracing::warn!(path = %path.display(), error = %e, "caching page failed");
            }
        }
    }

    /// Deletes least recently used pages until the cache is under its limit.
    fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut st = self.lock();
            while st.bytes > self.max_bytes {
                let Some((_, (key, page))) = st.lru.pop_first() else {
                    break;
                };
                if let Some(pages) = st.objects.get_mut(&key) {
                    if let Some(e) = pages.remove(&page) {
                        st.bytes -= e.bytes;
                    }
                    if st.objects.get(&key).is_some_and(|p| p.is_empty()) {
                        st.objects.remove(&key);
                    }
                }
                victims.push(self.page_path(&key, page));
            }
            self.metrics.cached_bytes.set(st.bytes as i64);
        }
        self.metrics.evicted_pages.inc_by(victims.len() as u64);
        for v in victims {
            let _ = fs::remove_file(v);
        }
    }
}

/// Groups sorted page numbers into runs `(first, last)`; pages less than `max_step` apart share
/// a run (1: only adjacent pages).
fn runs(pages: &[u64], max_step: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((_, last)) if p - *last <= max_step => *last = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// Collects `(mtime, key, page, bytes)` of the page files below `dir`; removes temporary files.
fn scan(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(SystemTime, String, u64, u64)>,
) -> Result<(), PageCacheError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| PageCacheError::Io { op, path, source }
    };
    for e in fs::read_dir(dir).map_err(io("list", dir))? {
        let e = e.map_err(io("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !e.file_type().map_err(io("stat", &path))?.is_dir() || name.starts_with('.') {
            continue;
        }
        let Some(obj) = name.strip_suffix(PAGES_SUFFIX) else {
            scan(root, &path, out)?;
            continue;
        };
        let Some(key) = dir
            .strip_prefix(root)
            .ok()
            .map(|p| p.join(obj))
            .and_then(|p| p.to_str().map(str::to_string))
        else {
            continue;
        };
        for f in fs::read_dir(&path).map_err(io("list", &path))? {
            let f = f.map_err(io("list", &path))?;
            let fname = f.file_name().to_string_lossy().into_owned();
            if fname.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(f.path());
                continue;
            }
            let (Ok(page), Ok(meta)) = (fname.parse::<u64>(), f.metadata()) else {
                continue;
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((mtime, key.clone(), page, meta.len()));
        }
    }
    Ok(())
}

/// An object in the bucket read through the page cache: the [`ReadAt`] a bucket-backed block's
/// index and chunk segments are opened on. Requests run on `handle` and block the calling
/// thread, which must not be a runtime worker (the querier reads on blocking threads).
#[derive(Debug, Clone)]
pub struct BucketObject {
    cache: Arc<PageCache>,
    store: Arc<dyn ObjectStore>,
    handle: Handle,
    key: String,
    size: u64,
}

impl BucketObject {
    /// Object `key` of `store`, `size` bytes long (from a listing or meta.json).
    pub fn new(
        cache: Arc<PageCache>,
        store: Arc<dyn ObjectStore>,
        handle: Handle,
        key: String,
        size: u64,
    ) -> Self {
        Self {
            cache,
            store,
            handle,
            key,
            size,
        }
    }

    /// `<bucket>/<key>`: how errors name the object.
    pub fn name(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}",
            self.store.location().trim_end_matches('/'),
            self.key
        ))
    }

    /// Fetches the whole object into the cache with one request (small indexes).
    pub fn prefetch_all(&self) {
        let all = 0..self.size;
        self.prefetch(std::slice::from_ref(&all));
    }

    fn fetch(&self, ranges: &[Range<u64>]) -> Vec<Result<Bytes, ObjstoreError>> {
        if let [r] = ranges {
            return vec![
                self.handle
                    .block_on(self.store.get_range(&self.key, r.clone())),
            ];
        }
        let (store, key) = (self.store.clone(), self.key.clone());
        let ranges = ranges.to_vec();
        self.handle.block_on(async move {
            let mut out: Vec<Option<Result<Bytes, ObjstoreError>>> =
                (0..ranges.len()).map(|_| None).collect();
            let mut set = tokio::task::JoinSet::new();
            let mut next = 0;
            loop {
                while next < ranges.len() && set.len() < PREFETCH_CONCURRENCY {
                    let (store, key, r, i) =
                        (store.clone(), key.clone(), ranges[next].clone(), next);
                    set.spawn(async move { (i, store.get_range(&key, r).await) });
                    next += 1;
                }
                let Some(done) = set.join_next().await else {
                    break;
                };
                if let Ok((i, r)) = done {
                    out[i] = Some(r);
                }
            }
            out.into_iter()
                .enumerate()
                .map(|(i, r)| {
                    r.unwrap_or_else(|| {
                        Err(ObjstoreError::Io {
                            op: "GetObjectRange",
                            bucket: store.location().to_string(),
                            key: format!("{key} bytes {}..{}", ranges[i].start, ranges[i].end),
                            source: io::Error::other("fetch task failed"),
                        })
                    })
                })
                .collect()
        })
    }
}

impl ReadAt for BucketObject {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.cache
            .read(&self.key, self.size, offset, buf, &|r| self.fetch(r))
            .map_err(|e| match e {
                PageCacheError::PastEnd { .. } | PageCacheError::ShortRead { .. } => {
                    io::Error::new(io::ErrorKind::UnexpectedEof, e)
                }
                e => io::Error::other(e),
            })
    }

    fn prefetch(&self, ranges: &[Range<u64>]) {
        self.cache
            .prefetch(&self.key, self.size, ranges, &|r| self.fetch(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: u64 = 1024;

    /// An object of `n` bytes whose every byte differs from its neighbours'.
    fn object(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Serves ranges of `data` and records each one asked for.
    struct Fake {
        data: Vec<u8>,
        asked: Mutex<Vec<Range<u64>>>,
    }

    impl Fake {
        fn new(data: Vec<u8>) -> Self {
            Self {
                data,
                asked: Mutex::new(Vec::new()),
            }
        }

        fn fetch(&self, ranges: &[Range<u64>]) -> Vec<Result<Bytes, ObjstoreError>> {
            self.asked.lock().unwrap().extend(ranges.iter().cloned());
            ranges
                .iter()
                .map(|r| {
                    let end = (r.end as usize).min(self.data.len());
                    let start = (r.start as usize).min(end);
                    Ok(Bytes::copy_from_slice(&self.data[start..end]))
                })
                .collect()
        }

        fn take(&self) -> Vec<Range<u64>> {
            std::mem::take(&mut *self.asked.lock().unwrap())
        }
    }

    fn cache(dir: &Path, max: u64) -> PageCache {
        PageCache::open(dir, PS, max, BucketReadMetrics::default()).unwrap()
    }

    fn read(c: &PageCache, f: &Fake, key: &str, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        c.read(key, f.data.len() as u64, at, &mut buf, &|r| f.fetch(r))
            .unwrap();
        buf
    }

    #[test]
    fn first_read_misses_and_fetches_the_page_then_hits() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(10_000));
        assert_eq!(read(&c, &f, "t/b/index", 10, 100), f.data[10..110]);
        assert_eq!(f.take(), vec![0..PS]);
        assert_eq!(c.metrics().page_misses.get(), 1);
        assert_eq!(c.metrics().page_hits.get(), 0);
        assert_eq!(c.metrics().fetched_bytes.get(), PS);
        assert_eq!(read(&c, &f, "t/b/index", 500, 400), f.data[500..900]);
        assert!(f.take().is_empty(), "second read of the page is local");
        assert_eq!(c.metrics().page_hits.get(), 1);
        assert_eq!(c.metrics().range_requests.get(), 1);
        assert!(c.page_path("t/b/index", 0).is_file());
        assert_eq!(c.cached_bytes(), PS + CRC_LEN);
        // The last page is short: only the object's bytes are fetched.
        assert_eq!(read(&c, &f, "t/b/index", 9_990, 10), f.data[9_990..]);
        assert_eq!(f.take(), vec![9 * PS..10_000]);
    }

    #[test]
    fn adjacent_missing_pages_are_fetched_with_one_request() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(10_000));
        let k = "t/b/chunks/000001";
        assert_eq!(read(&c, &f, k, 500, 3_000), f.data[500..3_500]);
        assert_eq!(f.take(), vec![0..4 * PS], "pages 0-3 in one GET");
        assert_eq!(read(&c, &f, k, 6 * PS, 10), f.data[6144..6154]);
        f.take();
        // Pages 0-3 and 6 cached: 4-5 and 7-9 are two runs.
        assert_eq!(read(&c, &f, k, 0, 10_000), f.data);
        assert_eq!(f.take(), vec![4 * PS..6 * PS, 7 * PS..10_000]);
        assert_eq!(c.metrics().page_misses.get(), 10);
    }

    #[test]
    fn reads_crossing_page_boundaries_return_the_object_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(20_000));
        let mut x: u64 = 12345;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (x >> 33) % 20_000;
            let len = ((x >> 13) % 3_000).min(20_000 - at) as usize;
            let got = read(&c, &f, "k", at, len);
            assert_eq!(got, f.data[at as usize..at as usize + len], "{at}+{len}");
        }
        assert!(c.metrics().page_hits.get() > 0);
        assert_eq!(c.metrics().page_misses.get(), 20_000u64.div_ceil(PS));
    }

    #[test]
    fn more_cached_pages_than_open_files_are_all_served_correctly() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let pages = MAX_OPEN_FILES as u64 + 44;
        let f = Fake::new(object((pages * PS) as usize));
        for round in 0..3 {
            for p in (0..pages).rev() {
                let at = p * PS + 100;
                assert_eq!(
                    read(&c, &f, "k", at, 50),
                    f.data[at as usize..at as usize + 50]
                );
            }
            assert_eq!(f.take().len(), if round == 0 { pages as usize } else { 0 });
        }
        assert_eq!(c.metrics().page_hits.get(), 2 * pages);
        assert!(c.lock().open_files.len() <= MAX_OPEN_FILES);
    }

    #[test]
    fn read_past_the_end_names_key_and_range() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(10_000));
        let mut buf = vec![0u8; 20];
        let e = c
            .read("t/b/index", 10_000, 9_990, &mut buf, &|r| f.fetch(r))
            .unwrap_err();
        assert!(
            matches!(e, PageCacheError::PastEnd { size: 10_000, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("t/b/index") && msg.contains("9990..10010"),
            "{msg}"
        );
        assert!(
            f.take().is_empty(),
            "nothing fetched for an impossible read"
        );
    }

    #[test]
    fn truncated_object_and_bucket_errors_name_key_and_range() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        // The listing said 10 000 bytes, the object has 5 000.
        let f = Fake::new(object(5_000));
        let mut buf = vec![0u8; 100];
        let e = c
            .read("t/b/index", 10_000, 4_500, &mut buf, &|r| f.fetch(r))
            .unwrap_err();
        assert!(
            matches!(e, PageCacheError::ShortRead { got: 904, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("\"t/b/index\" bytes 4096..5120"),
            "{e}"
        );
        let failing = |r: &[Range<u64>]| {
            r.iter()
                .map(|r| {
                    Err(ObjstoreError::InvalidRange {
                        op: "GetObjectRange",
                        bucket: "s3://b".into(),
                        key: "t/b/index".into(),
                        start: r.start,
                        end: r.end,
                        size: None,
                    })
                })
                .collect()
        };
        let e = c
            .read("t/b/index", 10_000, 0, &mut buf, &failing)
            .unwrap_err();
        assert!(matches!(e, PageCacheError::Fetch { .. }), "{e}");
        assert!(e.to_string().contains("\"t/b/index\" bytes 0..1024"), "{e}");
        assert_eq!(c.cached_bytes(), 0, "failed fetches cache nothing");
    }

    #[test]
    fn pages_survive_a_restart_and_damaged_or_partial_files_are_not_served() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Fake::new(object(4 * PS as usize));
        {
            let c = cache(tmp.path(), 1 << 30);
            read(&c, &f, "t/b/index", 0, 4 * PS as usize);
            f.take();
        }
        // A crash mid-write leaves a temporary file; a damaged page has a wrong CRC; a short
        // one lost its tail.
        let p0 = PageCache::page_path(&cache(tmp.path(), 1 << 30), "t/b/index", 0);
        let dir = p0.parent().unwrap().to_path_buf();
        fs::write(dir.join(format!("{TMP_PREFIX}2-1-1")), b"partial").unwrap();
        let mut b = fs::read(&p0).unwrap();
        b[7] ^= 1;
        fs::write(&p0, &b).unwrap();
        let p1 = dir.join(format!("{:010}", 1));
        let b = fs::read(&p1).unwrap();
        fs::write(&p1, &b[..100]).unwrap();

        let c = cache(tmp.path(), 1 << 30);
        assert!(
            !dir.join(format!("{TMP_PREFIX}2-1-1")).exists(),
            "temp file removed"
        );
        assert_eq!(c.cached_bytes(), 3 * (PS + CRC_LEN) + 100);
        assert_eq!(read(&c, &f, "t/b/index", 0, 4 * PS as usize), f.data);
        assert_eq!(
            f.take(),
            vec![0..2 * PS],
            "the damaged and the short page are fetched again, the intact ones are not"
        );
        assert_eq!(c.metrics().page_hits.get(), 2);
        // Once checked, pages are served without fetching.
        assert_eq!(read(&c, &f, "t/b/index", 0, 4 * PS as usize), f.data);
        assert!(f.take().is_empty());
    }

    #[test]
    fn eviction_keeps_the_cache_under_its_limit_dropping_least_recently_used_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let limit = 3 * (PS + CRC_LEN);
        let c = cache(tmp.path(), limit);
        let f = Fake::new(object(10 * PS as usize));
        let page = |p: u64| read(&c, &f, "k", p * PS, 10);
        page(0);
        page(1);
        page(2);
        page(0); // 1 is now the least recently used
        page(3);
        f.take();
        assert!(c.cached_bytes() <= limit);
        assert_eq!(c.metrics().evicted_pages.get(), 1);
        assert!(!c.page_path("k", 1).exists(), "evicted page file deleted");
        for p in [0, 2, 3] {
            page(p);
        }
        assert!(f.take().is_empty(), "pages 0, 2, 3 stayed cached");
        page(1);
        assert_eq!(f.take(), vec![PS..2 * PS]);
        for p in 0..10 {
            page(p);
        }
        assert!(c.cached_bytes() <= limit, "{}", c.cached_bytes());
        let files = fs::read_dir(c.page_path("k", 0).parent().unwrap())
            .unwrap()
            .count() as u64;
        assert_eq!(files, 3);
        assert_eq!(c.metrics().cached_bytes.get() as u64, c.cached_bytes());
        // A cache reopened over more pages than its limit trims them at once.
        drop(c);
        let small = cache(tmp.path(), PS + CRC_LEN);
        assert_eq!(small.cached_bytes(), PS + CRC_LEN);
    }

    #[test]
    fn prefetch_fetches_nearby_missing_pages_together_and_skips_cached_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(40 * PS as usize));
        read(&c, &f, "k", 5 * PS, 1);
        f.take();
        // Pages 0, 2 (gap of one page), 5 (cached), 6, 30.
        let ranges = [
            0..10,
            2 * PS..2 * PS + 10,
            5 * PS..6 * PS + 1,
            30 * PS + 3..30 * PS + 4,
        ];
        c.prefetch("k", f.data.len() as u64, &ranges, &|r| f.fetch(r));
        let mut asked = f.take();
        asked.sort_by_key(|r| r.start);
        assert_eq!(asked, vec![0..3 * PS, 6 * PS..7 * PS, 30 * PS..31 * PS]);
        for r in ranges {
            let len = (r.end - r.start) as usize;
            assert_eq!(
                read(&c, &f, "k", r.start, len),
                f.data[r.start as usize..r.end as usize]
            );
        }
        assert!(f.take().is_empty(), "prefetched pages are read locally");
    }

    #[test]
    fn removing_a_block_prefix_forgets_and_deletes_its_pages() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path(), 1 << 30);
        let f = Fake::new(object(3 * PS as usize));
        read(&c, &f, "t/A/index", 0, 3 * PS as usize);
        read(&c, &f, "t/B/index", 0, 10);
        f.take();
        c.remove_prefix("t/A/");
        assert!(!tmp.path().join("t/A").exists());
        assert_eq!(c.cached_bytes(), PS + CRC_LEN);
        read(&c, &f, "t/B/index", 0, 10);
        assert!(f.take().is_empty());
        read(&c, &f, "t/A/index", 0, 10);
        assert_eq!(f.take(), vec![0..PS]);
    }
}
