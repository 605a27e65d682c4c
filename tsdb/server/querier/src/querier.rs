//! Where the querier's data comes from: the ingesters (recent data, over gRPC or in-process)
//! and the blocks in object storage (older data, read with ranged requests through a local
//! page cache), merged per series with the replicas' copies deduplicated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;

use rimir_core::grpc::{LabelRequest, MatcherPb, MetadataRequest, QueryRequest};
use rimir_core::pool::IngesterPool;
use rimir_core::remote_write::MetricMetadata;
use rimir_objstore::layout::block_prefix;
use rimir_objstore::pagecache::{BucketObject, PageCache};
use rimir_objstore::{ListEntry, ObjectStore};
use rimir_promql::{MemQueryable, QueryError, Queryable};
use rimir_tsdb::block::{
    Block, BlockMeta, CHUNKS_DIR, Compression, INDEX_FILE, META_FILE, parse_frame_table,
};
use rimir_tsdb::chunks::SegmentReader;
use rimir_tsdb::framed::{FRAMES_FILE, FrameTable, FramedReadAt};
use rimir_tsdb::index::IndexReader;
use rimir_tsdb::labels::{Label, Labels, MatchType, Matcher};
use rimir_tsdb::readat::ReadAt;
use rimir_tsdb::series::{Series, merge_samples};

/// Gives each tenant's data as a [`Queryable`].
pub trait TenantSource: Send + Sync {
    /// The data of `tenant`; tenants without data get an empty source.
    fn queryable(&self, tenant: &str) -> Arc<dyn Queryable>;
}

/// A fixed map from tenant to source, for tests and single-process setups.
#[derive(Default, Clone)]
pub struct TenantMap {
    /// Sources by tenant ID.
    pub tenants: HashMap<String, Arc<dyn Queryable>>,
}

impl TenantSource for TenantMap {
    fn queryable(&self, tenant: &str) -> Arc<dyn Queryable> {
        self.tenants
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| Arc::new(MemQueryable::default()))
    }
}

type BoxFut<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tonic::Status>> + Send>>;

/// A storage error for a selection of `matchers` in `[mint, maxt]`.
fn storage(matchers: &[Matcher], mint: i64, maxt: i64, message: String) -> QueryError {
    QueryError::Storage {
        matchers: matchers
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(","),
        mint,
        maxt,
        message,
    }
}

fn to_pb(matchers: &[Matcher]) -> Vec<MatcherPb> {
    matchers
        .iter()
        .map(|m| MatcherPb {
            kind: match m.kind {
                MatchType::Equal => 0,
                MatchType::NotEqual => 1,
                MatchType::Regex => 2,
                MatchType::NotRegex => 3,
            },
            name: m.name.clone(),
            value: m.value.clone(),
        })
        .collect()
}

/// Merges series lists from several sources: one series per label set, samples deduplicated.
pub fn merge_series(lists: Vec<Vec<Series>>) -> Vec<Series> {
    let mut by: BTreeMap<Labels, Vec<Vec<rimir_tsdb::series::Sample>>> = BTreeMap::new();
    for list in lists {
        for s in list {
            by.entry(s.labels).or_default().push(s.samples);
        }
    }
    by.into_iter()
        .map(|(labels, parts)| {
            let samples = if parts.len() == 1 {
                parts.into_iter().next().unwrap_or_default()
            } else {
                let refs: Vec<&[rimir_tsdb::series::Sample]> =
                    parts.iter().map(|p| p.as_slice()).collect();
                merge_samples(&refs)
            };
            Series { labels, samples }
        })
        .collect()
}

/// The series of a `query_stream` answer.
fn from_pb(resps: Vec<rimir_core::grpc::QueryStreamResponse>) -> Vec<Series> {
    resps
        .into_iter()
        .flat_map(|r| r.series)
        .map(|s| Series {
            labels: Labels::from_sorted(
                s.labels
                    .into_iter()
                    .map(|l| Label {
                        name: l.name,
                        value: l.value,
                    })
                    .collect(),
            ),
            samples: s
                .samples
                .into_iter()
                .map(|p| (p.timestamp, p.value))
                .collect(),
        })
        .collect()
}

/// A tenant's data on the ingesters of a ring. Every instance is asked (each holds a share of
/// the series); up to `replication_factor - quorum` may fail without failing the query, since
/// each series lives on `replication_factor` of them.
pub struct IngestersQueryable {
    pool: Arc<IngesterPool>,
    tenant: String,
    handle: Handle,
}

impl IngestersQueryable {
    /// The ingesters of `pool`, for `tenant`; RPCs run on `handle`.
    pub fn new(pool: Arc<IngesterPool>, tenant: &str, handle: Handle) -> Self {
        Self {
            pool,
            tenant: tenant.to_string(),
            handle,
        }
    }

    /// Calls every ingester at once; `error` turns the failures into the caller's error when
    /// more failed than the replication factor tolerates.
    fn fan_out<T: Send + 'static>(
        &self,
        error: impl FnOnce(String) -> QueryError,
        call: impl Fn(Arc<dyn rimir_core::grpc::IngesterService>) -> BoxFut<T>,
    ) -> Result<Vec<T>, QueryError> {
        let ring = self.pool.ring();
        let rf = ring.replication_factor().max(1);
        let tolerated = rf - (rf / 2 + 1);
        let mut futs = Vec::new();
        let mut failures = Vec::new();
        for inst in ring.instances() {
            match self.pool.client(&inst.addr) {
                Ok(c) => futs.push((inst.id.clone(), call(c))),
                Err(e) => failures.push(format!("{}: {e}", inst.id)),
            }
        }
        let results =
            self.handle.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for (id, f) in futs {
                    set.spawn(async move { (id, f.await) });
                }
                let mut out = Vec::new();
                while let Some(done) = set.join_next().await {
                    out.push(done.unwrap_or_else(|e| {
                        ("?".into(), Err(tonic::Status::internal(e.to_string())))
                    }));
                }
                out
            });
        let mut ok = Vec::new();
        for (id, r) in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => failures.push(format!("{id}: {}", e.message())),
            }
        }
        if failures.len() > tolerated {
            failures.sort();
            return Err(error(format!(
                "querying ingesters: {} of {} failed (at most {tolerated} may with replication factor {rf}): {}",
                failures.len(),
                ring.instances().len(),
                failures.join("; ")
            )));
        }
        Ok(ok)
    }
}

impl Queryable for IngestersQueryable {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let req = QueryRequest {
            tenant: self.tenant.clone(),
            matchers: to_pb(matchers),
            mint,
            maxt,
        };
        let lists = self.fan_out(
            |e| storage(matchers, mint, maxt, e),
            move |c| {
                let req = req.clone();
                Box::pin(async move {
                    if let Some(local) = c.select_local(&req).await {
                        return local;
                    }
                    Ok(from_pb(c.query_stream(req).await?))
                })
            },
        )?;
        Ok(merge_series(lists))
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        let req = LabelRequest {
            tenant: self.tenant.clone(),
            name: String::new(),
            matchers: to_pb(matchers),
            mint,
            maxt,
        };
        let r = self.fan_out(
            |e| storage(matchers, mint, maxt, e),
            move |c| {
                let req = req.clone();
                Box::pin(async move { c.label_names(req).await })
            },
        )?;
        Ok(union(r.into_iter().map(|x| x.values)))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        let req = LabelRequest {
            tenant: self.tenant.clone(),
            name: name.to_string(),
            matchers: to_pb(matchers),
            mint,
            maxt,
        };
        let r = self.fan_out(
            |e| storage(matchers, mint, maxt, e),
            move |c| {
                let req = req.clone();
                Box::pin(async move { c.label_values(req).await })
            },
        )?;
        Ok(union(r.into_iter().map(|x| x.values)))
    }

    fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>, QueryError> {
        let req = MetadataRequest {
            tenant: self.tenant.clone(),
            metric: metric.unwrap_or_default().to_string(),
        };
        let r = self.fan_out(QueryError::Metadata, move |c| {
            let req = req.clone();
            Box::pin(async move { c.metrics_metadata(req).await })
        })?;
        Ok(r.into_iter().flat_map(|x| x.metadata).collect())
    }
}

fn union(lists: impl Iterator<Item = Vec<String>>) -> Vec<String> {
    lists
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// How long a tenant's block list is reused before the bucket is listed again.
const BLOCK_LIST_TTL: Duration = Duration::from_secs(30);
/// Indexes up to this size are fetched whole with one request when a block is opened, instead
/// of a few requests for header, TOC, symbols and postings offset table.
const SMALL_INDEX: u64 = 1 << 20;
/// Blocks opened at once when a query touches several for the first time.
const OPEN_CONCURRENCY: usize = 8;

/// Open blocks no query used for this long are closed when the bucket is listed next, so the
/// querier's memory follows the blocks queries touch, not every block it ever opened. Reopening
/// reads the index's header, TOC, symbols and postings offset table again, from the page cache.
const BLOCK_IDLE_CLOSE: Duration = Duration::from_secs(15 * 60);

struct CachedBlock {
    meta: BlockMeta,
    open: Option<Arc<Block>>,
    last_used: Instant,
}

/// A tenant's blocks in object storage. Each block's meta.json is fetched once, when the block
/// is first listed; a block is opened the first time a query's range overlaps it. Plain blocks
/// are read in place with ranged GETs through the querier's [`PageCache`] (the index's TOC,
/// symbols and postings offset table at open, series, postings and chunks as queries ask for
/// them). Cold-compressed blocks (gzip/snappy files, see `docs/format.md`) cannot be range-read:
/// they are downloaded whole into the cache directory and decompressed. Blocks that left the
/// bucket are dropped, their cached pages and files deleted.
pub struct BucketQueryable {
    store: Arc<dyn ObjectStore>,
    tenant: String,
    cache: Arc<PageCache>,
    handle: Handle,
    state: Mutex<(Option<Instant>, BTreeMap<String, CachedBlock>)>,
    /// [`BLOCK_IDLE_CLOSE`], shorter in tests.
    idle_close: Duration,
    /// One lock per cold-compressed block, so two queries never download it at once.
    downloads: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl BucketQueryable {
    /// The blocks of `tenant` in `store`, cached in `cache` (under `<cache root>/<tenant>/`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        tenant: &str,
        cache: Arc<PageCache>,
        handle: Handle,
    ) -> Self {
        Self {
            store,
            tenant: tenant.to_string(),
            cache,
            handle,
            state: Mutex::new((None, BTreeMap::new())),
            idle_close: BLOCK_IDLE_CLOSE,
            downloads: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's directory in the cache.
    fn tenant_dir(&self) -> PathBuf {
        self.cache.root().join(&self.tenant)
    }

    /// The open blocks overlapping `[mint, maxt]`, opening those not open yet.
    fn blocks(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Arc<Block>>, QueryError> {
        let exec = |what: &str, e: &dyn std::fmt::Display| {
            storage(
                matchers,
                mint,
                maxt,
                format!("tenant {}: {what}: {e}", self.tenant),
            )
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.is_none_or(|t| t.elapsed() > BLOCK_LIST_TTL) {
            let ids = self
                .handle
                .block_on(rimir_objstore::list_blocks(
                    self.store.as_ref(),
                    &self.tenant,
                ))
                .map_err(|e| exec("listing blocks", &e))?;
            let live: BTreeSet<String> = ids.iter().cloned().collect();
            st.1.retain(|k, _| live.contains(k));
            self.drop_cached_blocks_except(&live);
            self.downloads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| live.contains(k));
            for cb in st.1.values_mut() {
                if cb.last_used.elapsed() > self.idle_close {
                    cb.open = None;
                }
            }
            let new: Vec<String> = ids
                .into_iter()
                .filter(|id| !st.1.contains_key(id))
                .collect();
            for (id, raw) in self.read_metas(new) {
                let raw = raw.map_err(|e| exec("reading meta.json", &e))?;
                let meta: BlockMeta = serde_json::from_slice(&raw)
                    .map_err(|e| exec(&format!("parsing meta.json of block {id}"), &e))?;
                st.1.insert(
                    id,
                    CachedBlock {
                        meta,
                        open: None,
                        last_used: Instant::now(),
                    },
                );
            }
            st.0 = Some(Instant::now());
        }
        let overlaps = |m: &BlockMeta| m.max_time > mint && m.min_time <= maxt;
        // Blocks first touched by this query are opened concurrently: each costs a few
        // round trips to the bucket.
        let to_open: Vec<(String, BlockMeta)> =
            st.1.iter()
                .filter(|(_, cb)| cb.open.is_none() && overlaps(&cb.meta))
                .map(|(id, cb)| (id.clone(), cb.meta.clone()))
                .collect();
        // Opened without the lock: queries over blocks already open go on meanwhile.
        drop(st);
        let opened: Vec<(String, Result<Block, String>)> = std::thread::scope(|sc| {
            to_open
                .chunks(OPEN_CONCURRENCY)
                .flat_map(|batch| {
                    let running: Vec<_> = batch
                        .iter()
                        .map(|(id, meta)| (id, sc.spawn(|| self.open_block(id, meta))))
                        .collect();
                    running
                        .into_iter()
                        .map(|(id, h)| {
                            let r = h
                                .join()
                                .unwrap_or_else(|_| Err("opening thread panicked".to_string()));
                            (id.clone(), r)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (id, r) in opened {
            let b = r.map_err(|e| exec(&format!("opening block {id}"), &e))?;
            // Another query may have opened it meanwhile, or a listing dropped it.
            if let Some(cb) = st.1.get_mut(&id)
                && cb.open.is_none()
            {
                cb.open = Some(Arc::new(b));
            }
        }
        let mut out = Vec::new();
        for cb in st.1.values_mut() {
            if overlaps(&cb.meta)
                && let Some(b) = &cb.open
            {
                cb.last_used = Instant::now();
                out.push(b.clone());
            }
        }
        Ok(out)
    }

    /// Reads the meta.json of the blocks `ids`, several at once; a block whose read task
    /// failed is left out (and read at the next listing).
    fn read_metas(&self, ids: Vec<String>) -> Vec<(String, rimir_objstore::Result<bytes::Bytes>)> {
        const CONCURRENCY: usize = 16;
        let (store, tenant) = (self.store.clone(), self.tenant.clone());
        self.handle.block_on(async move {
            let mut out = Vec::with_capacity(ids.len());
            let mut ids = ids.into_iter();
            let mut set = tokio::task::JoinSet::new();
            loop {
                while set.len() < CONCURRENCY {
                    let Some(id) = ids.next() else { break };
                    let (store, tenant) = (store.clone(), tenant.clone());
                    set.spawn(async move {
                        let r = rimir_objstore::read_meta_json(store.as_ref(), &tenant, &id).await;
                        (id, r)
                    });
                }
                match set.join_next().await {
                    Some(Ok(done)) => out.push(done),
                    Some(Err(e)) => tracing::warn!(tenant, error = %e, "reading meta.json failed"),
                    None => break,
                }
            }
            out
        })
    }

    /// Opens a block in place on the bucket: plain, or compressed in frames (read through its
    /// frame table). Only a block compressed as one stream per file (rimir before frames) is
    /// downloaded whole.
    fn open_block(&self, id: &str, meta: &BlockMeta) -> Result<Block, String> {
        let framed = meta.rimir.as_ref().is_some_and(|r| r.frame_bytes.is_some());
        if rimir_tsdb::block::block_compression(meta) == Compression::None {
            self.open_ranged(id, meta, None)
        } else if framed {
            let key = format!("{}{FRAMES_FILE}", block_prefix(&self.tenant, id));
            let body = self
                .handle
                .block_on(self.store.get(&key))
                .map_err(|e| e.to_string())?;
            let location = self.store.location().trim_end_matches('/');
            let table = parse_frame_table(&body, Path::new(&format!("{location}/{key}")))
                .map_err(|e| e.to_string())?;
            self.open_ranged(id, meta, Some(&table))
        } else {
            self.open_downloaded(id)
        }
    }

    /// Deletes the cached pages and files of every block directory of the tenant not in `live`
    /// (blocks deleted from the bucket, also while this process was not running).
    fn drop_cached_blocks_except(&self, live: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.tenant_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ulid::Ulid::from_string(&name).is_ok() && !live.contains(&name) {
                self.cache
                    .remove_prefix(&format!("{}/{name}/", self.tenant));
            }
        }
    }

    /// Opens a block on its bucket objects, read through the page cache; `frames` is the frame
    /// table of a compressed block, whose objects are then read as plain bytes through it.
    fn open_ranged(
        &self,
        id: &str,
        meta: &BlockMeta,
        frames: Option<&FrameTable>,
    ) -> Result<Block, String> {
        let prefix = block_prefix(&self.tenant, id);
        remove_legacy_download(&self.tenant_dir().join(id));
        let sizes = match sizes_from_meta(meta) {
            Some(s) => s,
            None => self.sizes_from_listing(&prefix)?,
        };
        let object = |rel: &str, size: u64| {
            BucketObject::new(
                self.cache.clone(),
                self.store.clone(),
                self.handle.clone(),
                format!("{prefix}{rel}"),
                size,
            )
        };
        // The object as plain bytes: itself, or decoded through its frames.
        let source = |rel: &str, o: BucketObject| -> Result<Box<dyn ReadAt>, String> {
            let Some(t) = frames else {
                return Ok(Box::new(o));
            };
            let name = o.name();
            let f = t
                .files
                .get(rel)
                .ok_or_else(|| format!("{FRAMES_FILE} of block {id} lists no frames for {rel}"))?;
            FramedReadAt::new(
                &name,
                Box::new(o),
                t.compression,
                t.frame_bytes,
                f,
                self.cache.frames().clone(),
            )
            .map(|r| Box::new(r) as Box<dyn ReadAt>)
            .map_err(|e| e.to_string())
        };
        let index_size = *sizes
            .get(INDEX_FILE)
            .ok_or_else(|| format!("no object {prefix}{INDEX_FILE} in the bucket"))?;
        let index = object(INDEX_FILE, index_size);
        if index_size <= SMALL_INDEX {
            index.prefetch_all();
        }
        let index = IndexReader::open_source(&index.name(), source(INDEX_FILE, index)?)
            .map_err(|e| e.to_string())?;
        let segments: Vec<(PathBuf, Box<dyn ReadAt>)> = sizes
            .iter()
            .filter(|(rel, _)| is_segment(rel))
            .map(|(rel, &size)| {
                let o = object(rel, size);
                Ok((o.name(), source(rel, o)?))
            })
            .collect::<Result<_, String>>()?;
        let location = self.store.location().trim_end_matches('/');
        let chunks = SegmentReader::from_sources(
            Path::new(&format!("{location}/{prefix}{CHUNKS_DIR}")),
            segments,
        );
        Ok(Block::from_readers(
            PathBuf::from(format!("{location}/{prefix}")),
            meta.clone(),
            index,
            chunks,
        ))
    }

    /// Sizes of a block's `index` and `chunks/…` objects by listing its prefix.
    fn sizes_from_listing(&self, prefix: &str) -> Result<BTreeMap<String, u64>, String> {
        let entries = self
            .handle
            .block_on(self.store.list(prefix, false))
            .map_err(|e| e.to_string())?;
        Ok(entries
            .into_iter()
            .filter_map(|e| match e {
                ListEntry::Object { key, meta } => {
                    let rel = key.strip_prefix(prefix)?.to_string();
                    (rel == INDEX_FILE || is_segment(&rel)).then_some((rel, meta.size))
                }
                ListEntry::Prefix(_) => None,
            })
            .collect())
    }

    /// Downloads a block compressed as one stream per file whole (the only way to read it) and
    /// opens it, decompressed into a scratch directory.
    fn open_downloaded(&self, id: &str) -> Result<Block, String> {
        let lock = self
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let _downloading = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.tenant_dir().join(id);
        if !dir.join(META_FILE).is_file() {
            let _ = std::fs::remove_dir_all(&dir);
            self.handle
                .block_on(rimir_objstore::download_block(
                    self.store.as_ref(),
                    &self.tenant,
                    id,
                    &dir,
                ))
                .map_err(|e| format!("downloading: {e}"))?;
            self.cache.metrics().block_downloads.inc();
        }
        Block::open_with_scratch(&dir, &self.tenant_dir().join(".scratch"))
            .map_err(|e| e.to_string())
    }
}

/// `chunks/NNNNNN`: a chunk segment object, relative to its block.
fn is_segment(rel: &str) -> bool {
    rel.strip_prefix(CHUNKS_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Sizes of `index` and the segments from meta.json's `thanos.files`, when it lists them all
/// (rimir and Mimir write it; plain Prometheus blocks do not): saves a listing per block.
fn sizes_from_meta(meta: &BlockMeta) -> Option<BTreeMap<String, u64>> {
    let t = meta.thanos.as_ref()?;
    let sizes: BTreeMap<String, u64> = t
        .files
        .iter()
        .filter(|f| f.rel_path == INDEX_FILE || is_segment(&f.rel_path))
        .map(|f| Some((f.rel_path.clone(), f.size_bytes?)))
        .collect::<Option<_>>()?;
    let segments = sizes.keys().filter(|k| is_segment(k)).count();
    (sizes.contains_key(INDEX_FILE) && segments == t.segment_files.len() && segments > 0)
        .then_some(sizes)
}

/// Removes a whole-block download an older rimir left for a block now read in place (its
/// `meta.json`, `index` and segment files; the page directories stay).
fn remove_legacy_download(dir: &Path) {
    if !dir.join(META_FILE).is_file() {
        return;
    }
    let _ = std::fs::remove_file(dir.join(INDEX_FILE));
    if let Ok(entries) = std::fs::read_dir(dir.join(CHUNKS_DIR)) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_file(dir.join(META_FILE));
}

impl BucketQueryable {
    /// Label sets of the matching series with a chunk in `[mint, maxt]` in any block, sorted and
    /// unique; reads the indexes only.
    fn label_sets(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<BTreeSet<Labels>, QueryError> {
        let mut sets = BTreeSet::new();
        for b in self.blocks(matchers, mint, maxt)? {
            sets.extend(
                b.series_labels(matchers, mint, maxt)
                    .map_err(|e| storage(matchers, mint, maxt, e.to_string()))?,
            );
        }
        Ok(sets)
    }
}

impl Queryable for BucketQueryable {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let mut lists = Vec::new();
        for b in self.blocks(matchers, mint, maxt)? {
            lists.push(
                b.select(matchers, mint, maxt)
                    .map_err(|e| storage(matchers, mint, maxt, e.to_string()))?,
            );
        }
        Ok(merge_series(lists))
    }

    /// From the block indexes, without reading chunks.
    fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        Ok(self.label_sets(matchers, mint, maxt)?.into_iter().collect())
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut names = BTreeSet::new();
        if matchers.is_empty() {
            // Straight from each block's index, no chunk read.
            for b in self.blocks(matchers, mint, maxt)? {
                names.extend(
                    b.label_names()
                        .map_err(|e| storage(matchers, mint, maxt, e.to_string()))?,
                );
            }
            return Ok(names.into_iter().collect());
        }
        let sets = self.label_sets(matchers, mint, maxt)?;
        Ok(rimir_promql::queryable::label_names_of(sets.iter()))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut values = BTreeSet::new();
        if matchers.is_empty() {
            for b in self.blocks(matchers, mint, maxt)? {
                values.extend(
                    b.label_values(name)
                        .map_err(|e| storage(matchers, mint, maxt, e.to_string()))?,
                );
            }
            return Ok(values.into_iter().collect());
        }
        let sets = self.label_sets(matchers, mint, maxt)?;
        Ok(rimir_promql::queryable::label_values_of(name, sets.iter()))
    }
}

/// Several sources merged: the union of their series, replicas' samples deduplicated.
/// Ingesters are only asked when the query reaches into their window.
pub struct MergedQueryable {
    ingesters: Option<Arc<dyn Queryable>>,
    blocks: Option<Arc<dyn Queryable>>,
    query_ingesters_within: Duration,
}

impl MergedQueryable {
    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// Runs `f` on every source the query reaches.
    fn gather<T>(
        &self,
        maxt: i64,
        f: impl Fn(&dyn Queryable) -> Result<T, QueryError>,
    ) -> Result<Vec<T>, QueryError> {
        self.sources(maxt)
            .into_iter()
            .map(|s| f(s.as_ref()))
            .collect()
    }

    fn sources(&self, maxt: i64) -> Vec<&Arc<dyn Queryable>> {
        let within = self.query_ingesters_within.as_millis() as i64;
        let mut v = Vec::new();
        if let Some(i) = &self.ingesters
            && (within == 0 || maxt >= Self::now_ms() - within)
        {
            v.push(i);
        }
        v.extend(self.blocks.iter());
        v
    }
}

impl Queryable for MergedQueryable {
    fn series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        let sets: BTreeSet<Labels> = self
            .gather(maxt, |s| s.series(matchers, mint, maxt))?
            .into_iter()
            .flatten()
            .collect();
        Ok(sets.into_iter().collect())
    }

    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, QueryError> {
        Ok(merge_series(
            self.gather(maxt, |s| s.select(matchers, mint, maxt))?,
        ))
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        Ok(union(
            self.gather(maxt, |s| s.label_names(matchers, mint, maxt))?
                .into_iter(),
        ))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<String>, QueryError> {
        Ok(union(
            self.gather(maxt, |s| s.label_values(name, matchers, mint, maxt))?
                .into_iter(),
        ))
    }

    fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>, QueryError> {
        // Only ingesters hold metadata, whatever the time.
        match &self.ingesters {
            Some(i) => i.metadata(metric),
            None => Ok(Vec::new()),
        }
    }
}

/// The querier's tenants: each one's ingesters and bucket blocks, merged.
pub struct QuerierTenants {
    pool: Option<Arc<IngesterPool>>,
    store: Option<Arc<dyn ObjectStore>>,
    cache: Arc<PageCache>,
    query_ingesters_within: Duration,
    handle: Handle,
    tenants: Mutex<HashMap<String, Arc<dyn Queryable>>>,
}

impl QuerierTenants {
    /// Sources from the ingesters of `pool` and the blocks of `store` (either may be absent),
    /// the blocks read through `cache`.
    pub fn new(
        pool: Option<Arc<IngesterPool>>,
        store: Option<Arc<dyn ObjectStore>>,
        cache: Arc<PageCache>,
        query_ingesters_within: Duration,
        handle: Handle,
    ) -> Self {
        Self {
            pool,
            store,
            cache,
            query_ingesters_within,
            handle,
            tenants: Mutex::new(HashMap::new()),
        }
    }
}

impl TenantSource for QuerierTenants {
    fn queryable(&self, tenant: &str) -> Arc<dyn Queryable> {
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(tenant.to_string())
            .or_insert_with(|| {
                let ingesters = self.pool.clone().map(|p| {
                    Arc::new(IngestersQueryable::new(p, tenant, self.handle.clone()))
                        as Arc<dyn Queryable>
                });
                let blocks = self.store.clone().map(|s| {
                    Arc::new(BucketQueryable::new(
                        s,
                        tenant,
                        self.cache.clone(),
                        self.handle.clone(),
                    )) as Arc<dyn Queryable>
                });
                Arc::new(MergedQueryable {
                    ingesters,
                    blocks,
                    query_ingesters_within: self.query_ingesters_within,
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rimir_objstore::FilesystemStore;
    use rimir_objstore::pagecache::{BucketReadMetrics, DEFAULT_PAGE_SIZE};
    use rimir_tsdb::block::{BlockOptions, compress_block, write_block};

    struct Setup {
        _tmp: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
        local: Block,
        store: Arc<dyn ObjectStore>,
        cache: Arc<PageCache>,
        block_bytes: u64,
    }

    /// Writes `series` into a block, uploads it as tenant `t1` to a filesystem bucket and opens
    /// the local copy; the page cache has pages of `page_size` bytes.
    fn setup(series: Vec<(Labels, Vec<rimir_tsdb::series::Sample>)>, page_size: u64) -> Setup {
        setup_compressed(series, page_size, Compression::None)
    }

    /// [`setup`], the uploaded copy compressed with `cold` as the compactor does.
    fn setup_compressed(
        series: Vec<(Labels, Vec<rimir_tsdb::series::Sample>)>,
        page_size: u64,
        cold: Compression,
    ) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let meta =
            write_block(&tmp.path().join("local"), series, &BlockOptions::default()).unwrap();
        let dir = tmp.path().join("local").join(&meta.ulid);
        let store: Arc<dyn ObjectStore> =
            Arc::new(FilesystemStore::new(tmp.path().join("bucket")).unwrap());
        compress_block(&dir, cold).unwrap();
        let t = rt
            .block_on(rimir_objstore::upload_block(store.as_ref(), "t1", &dir))
            .unwrap();
        let cache = Arc::new(
            PageCache::open(
                &tmp.path().join("cache"),
                page_size,
                1 << 30,
                BucketReadMetrics::default(),
            )
            .unwrap(),
        );
        Setup {
            local: Block::open(&dir).unwrap(),
            _tmp: tmp,
            rt,
            store,
            cache,
            block_bytes: t.bytes,
        }
    }

    impl Setup {
        fn queryable(&self) -> BucketQueryable {
            BucketQueryable::new(
                self.store.clone(),
                "t1",
                self.cache.clone(),
                self.rt.handle().clone(),
            )
        }
    }

    fn labels(i: usize) -> Labels {
        Labels::from_pairs([
            ("__name__", format!("metric_{}", i % 7)),
            ("instance", format!("host-{i:05}")),
            ("job", format!("job-{}", i % 13)),
            ("zone", ["a", "b", "c"][i % 3].to_string()),
        ])
    }

    fn m(kind: MatchType, name: &str, value: &str) -> Matcher {
        Matcher::new(kind, name, value).unwrap()
    }

    #[test]
    fn bucket_block_answers_like_the_local_block_for_many_matchers() {
        let series = (0..600)
            .map(|i| {
                let samples = (0..(50 + i % 300) as i64)
                    .map(|j| (j * 15_000, (i as f64) * 0.5 + j as f64))
                    .collect();
                (labels(i), samples)
            })
            .collect();
        // Small pages: reads cross many page boundaries.
        let s = setup(series, 512);
        let q = s.queryable();
        let blocks = q.blocks(&[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(blocks.len(), 1);
        let remote = &blocks[0];
        assert!(
            remote.dir().to_string_lossy().contains("t1/"),
            "{:?}",
            remote.dir()
        );
        let matcher_sets = vec![
            vec![m(MatchType::Equal, "__name__", "metric_3")],
            vec![m(MatchType::Equal, "instance", "host-00042")],
            vec![m(MatchType::Regex, "job", "job-(1|5|12)")],
            vec![
                m(MatchType::Equal, "__name__", "metric_1"),
                m(MatchType::NotEqual, "zone", "b"),
            ],
            vec![
                m(MatchType::Regex, "instance", "host-000.*"),
                m(MatchType::NotRegex, "job", "job-[0-4]"),
            ],
            vec![m(MatchType::Regex, "zone", ".+")],
            vec![m(MatchType::Equal, "missing", "")],
            vec![m(MatchType::Equal, "__name__", "nope")],
            vec![
                m(MatchType::Regex, "__name__", "metric_.*"),
                m(MatchType::Equal, "zone", "c"),
            ],
        ];
        let ranges = [
            (i64::MIN, i64::MAX),
            (100_000, 900_000),
            (3_000_000, 3_100_000),
        ];
        let mut compared = 0;
        for ms in &matcher_sets {
            assert_eq!(
                remote.index().postings_for_matchers(ms).unwrap(),
                s.local.index().postings_for_matchers(ms).unwrap(),
                "{ms:?}"
            );
            for &(mint, maxt) in &ranges {
                let want = s.local.select(ms, mint, maxt).unwrap();
                assert_eq!(remote.select(ms, mint, maxt).unwrap(), want, "{ms:?}");
                compared += want.len();
            }
        }
        assert!(compared > 1000, "the matchers select series: {compared}");
        assert_eq!(
            remote.label_names().unwrap(),
            s.local.label_names().unwrap()
        );
        for name in ["__name__", "instance", "job", "zone", "missing", ""] {
            assert_eq!(
                remote.label_values(name).unwrap(),
                s.local.label_values(name).unwrap(),
                "{name}"
            );
        }
        assert_eq!(
            remote.index().symbols().unwrap(),
            s.local.index().symbols().unwrap()
        );
        // Through the Queryable as well.
        let ms = [m(MatchType::Regex, "job", "job-[27]")];
        assert_eq!(
            q.select(&ms, 0, i64::MAX).unwrap(),
            s.local.select(&ms, 0, i64::MAX).unwrap()
        );
        assert_eq!(
            q.label_values("instance", &ms, 0, i64::MAX).unwrap().len(),
            s.local.select(&ms, 0, i64::MAX).unwrap().len()
        );
        assert_eq!(s.cache.metrics().block_downloads.get(), 0);
    }

    #[test]
    fn series_and_label_queries_with_matchers_read_no_chunks() {
        let series = (0..300)
            .map(|i| {
                let samples = (0..200i64).map(|j| (j * 15_000, j as f64)).collect();
                (labels(i), samples)
            })
            .collect();
        let s = setup(series, 1024);
        let q = s.queryable();
        let ms = [m(MatchType::Regex, "job", "job-[13]")];
        let want: Vec<Labels> = s
            .local
            .select(&ms, 0, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|s| s.labels)
            .collect();
        assert_eq!(q.series(&ms, 0, i64::MAX).unwrap(), want);
        assert_eq!(
            q.label_values("instance", &ms, 0, i64::MAX).unwrap().len(),
            want.len()
        );
        assert_eq!(
            q.label_names(&ms, 0, i64::MAX).unwrap(),
            ["__name__", "instance", "job", "zone"]
        );
        assert!(q.series(&ms, 10_000_000, 20_000_000).unwrap().is_empty());
        let chunk_pages = std::fs::read_dir(
            s.cache
                .root()
                .join("t1")
                .join(&s.local.meta().ulid)
                .join(CHUNKS_DIR),
        )
        .map(|d| d.count())
        .unwrap_or(0);
        assert_eq!(chunk_pages, 0, "no chunk segment page was fetched");
        // select does read them.
        assert_eq!(q.select(&ms, 0, i64::MAX).unwrap().len(), want.len());
        assert!(
            s.cache
                .page_path(&format!("t1/{}/chunks/000001", s.local.meta().ulid), 0)
                .is_file()
        );
    }

    #[test]
    fn selective_query_on_a_large_block_fetches_a_small_part_of_it() {
        selective_query_fetches_a_small_part(Compression::None);
    }

    #[test]
    fn selective_query_on_a_large_compressed_block_fetches_a_small_part_of_it() {
        selective_query_fetches_a_small_part(Compression::Gzip);
    }

    /// A one-series query on a 20 000-series block fetches a small part of it: plain, a tenth of
    /// the block; compressed, the index (below the 1 MiB read whole at open) and a fifth of the
    /// chunks at most (the 1.8 MB of compressed chunks hold about 30 frames: the series' frame,
    /// rounded to 64 KiB pages). A broad query batches its requests; both answer like the local
    /// block.
    fn selective_query_fetches_a_small_part(cold: Compression) {
        let n = 20_000;
        let series = (0..n)
            .map(|i| {
                let samples = (0..240i64)
                    .map(|j| (j * 15_000, ((i * 31 + j as usize * 7) % 1000) as f64))
                    .collect();
                (labels(i), samples)
            })
            .collect();
        let s = setup_compressed(series, DEFAULT_PAGE_SIZE, cold);
        let q = s.queryable();
        let met = s.cache.metrics();
        let one = [m(MatchType::Equal, "instance", "host-12345")];
        let got = q.select(&one, 0, i64::MAX).unwrap();
        assert_eq!(got, s.local.select(&one, 0, i64::MAX).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples.len(), 240);
        let (fetched, requests) = (met.fetched_bytes.get(), met.range_requests.get());
        eprintln!(
            "{cold:?}: one series of {n}: fetched {fetched} of {} block bytes in {requests} requests",
            s.block_bytes
        );
        let sizes = sizes_from_meta(s.local.meta()).unwrap();
        let index = sizes[INDEX_FILE];
        let chunks: u64 = sizes
            .iter()
            .filter(|(k, _)| is_segment(k))
            .map(|e| e.1)
            .sum();
        let bound = match cold {
            Compression::None => s.block_bytes / 10,
            _ => {
                assert!(index <= SMALL_INDEX, "compressed index of {index} bytes");
                index + chunks / 5
            }
        };
        assert!(
            fetched < bound,
            "fetched {fetched} bytes of a {}-byte block ({index} index, {chunks} chunks)",
            s.block_bytes
        );
        assert_eq!(met.block_downloads.get(), 0);
        // The same query again is served from the cache.
        q.select(&one, 0, i64::MAX).unwrap();
        assert_eq!(met.fetched_bytes.get(), fetched);
        assert_eq!(met.range_requests.get(), requests);

        // A broad query fetches its series and chunks in batches, not one request each.
        let broad = [m(MatchType::Equal, "__name__", "metric_3")];
        let got = q.select(&broad, 0, i64::MAX).unwrap();
        assert_eq!(got, s.local.select(&broad, 0, i64::MAX).unwrap());
        let more = met.range_requests.get() - requests;
        eprintln!(
            "{cold:?}: {} series of {n}: {more} more requests, {} more bytes",
            got.len(),
            met.fetched_bytes.get() - fetched
        );
        assert!(
            more * 20 < got.len() as u64,
            "{more} requests for {} series",
            got.len()
        );
    }

    #[test]
    fn block_compressed_as_one_stream_is_downloaded_whole_and_reads_the_same() {
        let tmp_series: Vec<_> = (0..50)
            .map(|i| (labels(i), vec![(1_000, i as f64), (2_000, 1.0)]))
            .collect();
        let s = setup(tmp_series, 4096);
        // Recompress the bucket copy as rimir did before frames.
        let dir = s.local.dir().to_path_buf();
        let copy = s._tmp.path().join("gz");
        let local_copy = copy.join(dir.file_name().unwrap());
        std::fs::create_dir_all(local_copy.join(CHUNKS_DIR)).unwrap();
        for rel in [META_FILE, INDEX_FILE, "chunks/000001"] {
            std::fs::copy(dir.join(rel), local_copy.join(rel)).unwrap();
        }
        rimir_tsdb::block::gzip_as_one_stream_per_file(&local_copy);
        s.rt.block_on(rimir_objstore::upload_block(
            s.store.as_ref(),
            "t1",
            &local_copy,
        ))
        .unwrap();
        let q = s.queryable();
        let ms = [m(MatchType::Equal, "zone", "a")];
        assert_eq!(
            q.select(&ms, 0, i64::MAX).unwrap(),
            s.local.select(&ms, 0, i64::MAX).unwrap()
        );
        assert_eq!(s.cache.metrics().block_downloads.get(), 1);
        assert_eq!(s.cache.metrics().range_requests.get(), 0);
        // Gone from the bucket: its files leave the cache.
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        s.rt.block_on(rimir_objstore::delete_block(s.store.as_ref(), "t1", &id))
            .unwrap();
        q.state.lock().unwrap().0 = None;
        assert!(q.select(&ms, 0, i64::MAX).unwrap().is_empty());
        assert!(!s.cache.root().join("t1").join(&id).exists());
    }

    #[test]
    fn concurrent_first_queries_agree_on_a_framed_block_read_in_place() {
        concurrent_first_queries_agree(false);
    }

    #[test]
    fn concurrent_first_queries_agree_and_download_a_one_stream_block_once() {
        concurrent_first_queries_agree(true);
    }

    /// Six queries at once over a plain block and a second, gzip-compressed block (in frames, or
    /// as one stream per file) answer the same; only the one-stream block is downloaded, once.
    fn concurrent_first_queries_agree(one_stream: bool) {
        let series: Vec<_> = (0..200)
            .map(|i| (labels(i), (0..100).map(|j| (j * 1000, j as f64)).collect()))
            .collect();
        let s = setup(series.clone(), 4096);
        // A second, gzip-compressed block with the same series a bit later.
        let later: Vec<_> = series
            .into_iter()
            .map(|(l, v): (Labels, Vec<rimir_tsdb::series::Sample>)| {
                (l, v.into_iter().map(|(t, x)| (t + 100_000, x)).collect())
            })
            .collect();
        let gz = s._tmp.path().join("gz");
        let meta = write_block(&gz, later, &BlockOptions::default()).unwrap();
        if one_stream {
            rimir_tsdb::block::gzip_as_one_stream_per_file(&gz.join(&meta.ulid));
        } else {
            compress_block(&gz.join(&meta.ulid), Compression::Gzip).unwrap();
        }
        s.rt.block_on(rimir_objstore::upload_block(
            s.store.as_ref(),
            "t1",
            &gz.join(&meta.ulid),
        ))
        .unwrap();
        let q = s.queryable();
        let ms = [m(MatchType::Regex, "job", "job-[0-5]")];
        let results: Vec<Vec<Series>> = std::thread::scope(|sc| {
            let running: Vec<_> = (0..6)
                .map(|_| sc.spawn(|| q.select(&ms, 0, i64::MAX).unwrap()))
                .collect();
            running.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let local = s.local.select(&ms, 0, i64::MAX).unwrap();
        for r in &results {
            assert_eq!(r.len(), local.len());
            for (got, want) in r.iter().zip(&local) {
                assert_eq!(got.labels, want.labels);
                assert_eq!(got.samples.len(), 200, "both blocks' samples");
                assert_eq!(&got.samples[..100], &want.samples[..]);
            }
        }
        let met = s.cache.metrics();
        assert_eq!(met.block_downloads.get(), u64::from(one_stream));
        if !one_stream {
            assert!(met.frames.misses.get() > 0, "frames were decoded");
        }
    }

    #[test]
    fn block_without_file_sizes_in_meta_is_sized_by_listing() {
        let series = (0..50)
            .map(|i| (labels(i), (0..30).map(|j| (j * 1000, j as f64)).collect()))
            .collect();
        let s = setup(series, 4096);
        let mut meta = s.local.meta().clone();
        assert!(sizes_from_meta(&meta).is_some_and(|m| m.len() == 2));
        // As promtool writes it: no thanos section.
        meta.thanos = None;
        assert!(sizes_from_meta(&meta).is_none());
        let key = format!("t1/{}/meta.json", meta.ulid);
        s.rt.block_on(s.store.put(&key, serde_json::to_vec(&meta).unwrap().into()))
            .unwrap();
        let ms = [m(MatchType::Equal, "zone", "c")];
        assert_eq!(
            s.queryable().select(&ms, 0, i64::MAX).unwrap(),
            s.local.select(&ms, 0, i64::MAX).unwrap()
        );
    }

    #[test]
    fn pages_of_a_block_deleted_from_the_bucket_are_removed() {
        let series = (0..100).map(|i| (labels(i), vec![(1_000, 1.0)])).collect();
        let s = setup(series, 4096);
        let q = s.queryable();
        let ms = [m(MatchType::Equal, "zone", "b")];
        assert!(!q.select(&ms, 0, i64::MAX).unwrap().is_empty());
        let id = s.local.meta().ulid.clone();
        let pages = s.cache.root().join("t1").join(&id);
        assert!(pages.join("index.pages").is_dir());
        assert!(s.cache.cached_bytes() > 0);
        s.rt.block_on(rimir_objstore::delete_block(s.store.as_ref(), "t1", &id))
            .unwrap();
        q.state.lock().unwrap().0 = None;
        assert!(q.select(&ms, 0, i64::MAX).unwrap().is_empty());
        assert!(!pages.exists());
        assert_eq!(s.cache.cached_bytes(), 0);
    }

    #[test]
    fn idle_blocks_are_closed_at_the_next_listing_and_reopened_from_the_cache() {
        let series = (0..100).map(|i| (labels(i), vec![(1_000, 1.0)])).collect();
        let s = setup(series, 4096);
        let mut q = s.queryable();
        let ms = [m(MatchType::Equal, "zone", "b")];
        let first = q.blocks(&ms, 0, i64::MAX).unwrap();
        let want = s.local.select(&ms, 0, i64::MAX).unwrap();
        assert_eq!(first[0].select(&ms, 0, i64::MAX).unwrap(), want);
        let fetched = s.cache.metrics().fetched_bytes.get();
        // Listed again before the idle time: the same open block.
        q.state.lock().unwrap().0 = None;
        assert!(Arc::ptr_eq(
            &first[0],
            &q.blocks(&ms, 0, i64::MAX).unwrap()[0]
        ));
        q.idle_close = Duration::ZERO;
        q.state.lock().unwrap().0 = None;
        std::thread::sleep(Duration::from_millis(5));
        let again = q.blocks(&ms, 0, i64::MAX).unwrap();
        assert!(!Arc::ptr_eq(&first[0], &again[0]), "closed and reopened");
        assert_eq!(again[0].select(&ms, 0, i64::MAX).unwrap(), want);
        assert_eq!(
            s.cache.metrics().fetched_bytes.get(),
            fetched,
            "reopening reads the cached pages"
        );
        // Blocks outside the query's range are not opened at all.
        q.state
            .lock()
            .unwrap()
            .1
            .values_mut()
            .for_each(|cb| cb.open = None);
        assert!(q.blocks(&ms, 10_000_000, 20_000_000).unwrap().is_empty());
        assert!(
            q.state
                .lock()
                .unwrap()
                .1
                .values()
                .all(|cb| cb.open.is_none())
        );
    }

    #[test]
    fn query_opens_only_the_blocks_of_its_range_and_merges_them() {
        let block = |from: i64| -> Vec<_> {
            (0..30)
                .map(|i| {
                    let samples = (0..60).map(|j| (from + j * 60_000, j as f64)).collect();
                    (labels(i), samples)
                })
                .collect()
        };
        let h = 3_600_000;
        let s = setup(block(0), 4096);
        for from in [h, 2 * h, 3 * h] {
            let meta = write_block(
                &s._tmp.path().join("more"),
                block(from),
                &BlockOptions::default(),
            )
            .unwrap();
            let dir = s._tmp.path().join("more").join(&meta.ulid);
            s.rt.block_on(rimir_objstore::upload_block(s.store.as_ref(), "t1", &dir))
                .unwrap();
        }
        let q = s.queryable();
        let ms = [m(MatchType::Equal, "instance", "host-00007")];
        let got = q.select(&ms, h, 3 * h - 1).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples.len(), 120, "two hours of minutely samples");
        assert_eq!(got[0].samples[0].0, h);
        let st = q.state.lock().unwrap();
        assert_eq!(st.1.len(), 4);
        let open: Vec<(i64, bool)> =
            st.1.values()
                .map(|cb| (cb.meta.min_time, cb.open.is_some()))
                .collect();
        assert_eq!(
            open.iter().filter(|(_, o)| *o).count(),
            2,
            "only the two blocks in range are open: {open:?}"
        );
        assert!(
            open.iter().all(|&(t, o)| o == (t == h || t == 2 * h)),
            "{open:?}"
        );
    }

    #[test]
    fn truncated_segment_in_the_bucket_is_an_error_naming_the_object() {
        let series = (0..100)
            .map(|i| (labels(i), (0..200).map(|j| (j * 1000, j as f64)).collect()))
            .collect();
        let s = setup(series, 4096);
        let key = format!("t1/{}/chunks/000001", s.local.meta().ulid);
        let full = s.rt.block_on(s.store.get(&key)).unwrap();
        s.rt.block_on(s.store.put(&key, full.slice(..full.len() / 2)))
            .unwrap();
        let e = s
            .queryable()
            .select(&[m(MatchType::Regex, "zone", ".+")], 0, i64::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&key), "{e}");
        assert!(e.contains("bytes "), "{e}");
    }
}
