//! The compactor role: per tenant, merges the replicas' overlapping blocks, compacts adjacent
//! ranges along `block_ranges` (2h → 12h → 24h), applies retention, deletes marked blocks after
//! the deletion delay, removes stale partial uploads and writes the bucket index — all within
//! the free space of its data directory, skipping (and reporting) jobs that do not fit.
//!
//! Built on `rimir-core` (configuration), `rimir-tsdb` (block merging) and `rimir-objstore`;
//! it must not import another role crate.
//!
//! Where to start reading: [`Compactor::from_config`], then [`Compactor::run_once`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rimir_core::BoxFuture;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use rimir_objstore::{ListEntry, ObjectStore, ObjstoreError};
use rimir_tsdb::block::{Block, BlockError, BlockMeta, Compression, compress_block, dir_bytes};
use rimir_tsdb::compact::compact_blocks;

/// Marker file name that schedules a block for deletion.
pub const DELETION_MARK: &str = "deletion-mark.json";
/// Marker file name that excludes a block from compaction.
pub const NO_COMPACT_MARK: &str = "no-compact-mark.json";
/// Per-tenant bucket index object.
pub const BUCKET_INDEX: &str = "bucket-index.json.gz";

/// A compaction run failed.
#[derive(Debug, Error)]
pub enum CompactorError {
    /// Talking to the bucket failed.
    #[error("compactor, tenant {tenant}: {source}")]
    Bucket {
        /// The tenant being processed.
        tenant: String,
        /// The bucket error.
        source: Box<ObjstoreError>,
    },
    /// Reading or writing a block in the data directory failed.
    #[error("compactor, tenant {tenant}, blocks {blocks:?}: {source}")]
    Block {
        /// The tenant.
        tenant: String,
        /// The blocks of the job.
        blocks: Vec<String>,
        /// The block error.
        source: Box<BlockError>,
    },
    /// A block's meta.json or a marker in the bucket is not valid JSON.
    #[error("compactor, tenant {tenant}: parse {key}: {source}")]
    Json {
        /// The tenant.
        tenant: String,
        /// The object key.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A filesystem operation on the data directory failed.
    #[error("compactor data dir {path}: {op}: {source}")]
    DataDir {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the compactor does and within which limits.
#[derive(Debug, Clone)]
pub struct CompactorSettings {
    /// Working directory (the compactor's volume); emptied on start and after each job.
    pub data_dir: PathBuf,
    /// Compaction ranges in ms, ascending; the first is the ingesters' block range.
    pub block_ranges: Vec<i64>,
    /// How long a block marked for deletion stays readable before it is removed.
    pub deletion_delay: Duration,
    /// Blocks whose data ended longer ago than this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// Per-tenant retention overrides (`Duration::ZERO` disables retention for the tenant).
    pub tenant_retention: BTreeMap<String, Duration>,
    /// Partial uploads (no meta.json) untouched for this long are removed.
    pub partial_block_deletion_delay: Duration,
    /// Compression of the blocks it writes.
    pub cold: Compression,
    /// Cap on the bytes the data directory may hold, on top of the volume's free space.
    pub max_data_dir_bytes: Option<u64>,
}

impl Default for CompactorSettings {
    fn default() -> Self {
        const H: i64 = 3_600_000;
        Self {
            data_dir: PathBuf::from("./data-compactor"),
            block_ranges: vec![2 * H, 12 * H, 24 * H],
            deletion_delay: Duration::from_secs(12 * 3600),
            retention: None,
            tenant_retention: BTreeMap::new(),
            partial_block_deletion_delay: Duration::from_secs(24 * 3600),
            cold: Compression::Gzip,
            max_data_dir_bytes: None,
        }
    }
}

impl CompactorSettings {
    /// The settings of `cfg`'s `compactor` section, `limits.compactor_blocks_retention_period`
    /// (with per-tenant overrides) and `compression.cold`.
    pub fn from_config(
        cfg: &rimir_core::config::Config,
    ) -> Result<Self, rimir_core::config::ConfigError> {
        let c = &cfg.compactor;
        let limits = cfg.tenant_limits()?;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Ok(Self {
            data_dir: c.data_dir.clone(),
            block_ranges: c
                .block_ranges
                .iter()
                .map(|d| d.0.as_millis() as i64)
                .collect(),
            deletion_delay: c.deletion_delay.0,
            retention: nonzero(limits.default.compactor_blocks_retention_period.0),
            tenant_retention: limits
                .per_tenant
                .iter()
                .map(|(t, l)| (t.clone(), l.compactor_blocks_retention_period.0))
                .collect(),
            partial_block_deletion_delay: c.partial_block_deletion_delay.0,
            cold: match cfg.compression.cold {
                rimir_core::config::Compression::None => Compression::None,
                rimir_core::config::Compression::Gzip => Compression::Gzip,
                rimir_core::config::Compression::Snappy => Compression::Snappy,
            },
            max_data_dir_bytes: (c.max_data_dir_bytes > 0).then_some(c.max_data_dir_bytes),
        })
    }
}

/// `deletion-mark.json`, as Thanos and Mimir write it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletionMark {
    /// Block ULID.
    pub id: String,
    /// Unix seconds when the block was marked.
    pub deletion_time: i64,
    /// Marker format version (1).
    pub version: u32,
}

/// A job that was not run because the data directory cannot hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedJob {
    /// Tenant of the job.
    pub tenant: String,
    /// Source blocks.
    pub blocks: Vec<String>,
    /// Estimated bytes the job needs in the data directory.
    pub needed_bytes: u64,
    /// Bytes available to it.
    pub available_bytes: u64,
}

impl std::fmt::Display for SkippedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {}: compaction of blocks {} skipped: needs {} bytes in the data dir, {} available; \
             give the compactor a larger volume (spec.compactor.persistentVolume.size)",
            self.tenant,
            self.blocks.join(","),
            self.needed_bytes,
            self.available_bytes
        )
    }
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Tenants processed.
    pub tenants: usize,
    /// Compaction jobs completed.
    pub jobs: usize,
    /// Blocks written by those jobs.
    pub blocks_written: Vec<String>,
    /// Jobs skipped for lack of disk.
    pub skipped: Vec<SkippedJob>,
    /// Blocks newly marked for deletion (compacted sources, superseded, expired).
    pub marked: usize,
    /// Blocks removed after their deletion delay.
    pub deleted: usize,
    /// Partial uploads removed.
    pub partials_deleted: usize,
    /// Leftovers of interrupted writes removed (filesystem buckets' temporary files).
    pub abandoned_writes_removed: u64,
    /// Plain bytes of the blocks written, before cold compression.
    pub bytes_plain: u64,
    /// Bytes of the blocks written, as stored.
    pub bytes_stored: u64,
    /// Highest number of bytes the data directory held during the run.
    pub data_dir_peak_bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// The compactor's metrics (`rimir_compactor_*`).
#[derive(Debug, Clone)]
pub struct CompactorMetrics {
    runs: Counter,
    run_failures: Counter,
    blocks_compacted: Counter,
    bytes_compacted: Counter,
    bytes_saved: Counter,
    duration: Histogram,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    disk_skips: Family<TenantLabel, Counter>,
}

impl Default for CompactorMetrics {
    fn default() -> Self {
        Self {
            runs: Counter::default(),
            run_failures: Counter::default(),
            blocks_compacted: Counter::default(),
            bytes_compacted: Counter::default(),
            bytes_saved: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            last_success: Gauge::default(),
            disk_skips: Family::default(),
        }
    }
}

impl CompactorMetrics {
    /// Registers every metric under `rimir_compactor_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rimir_compactor");
        r.register("runs", "Compaction runs started", self.runs.clone());
        r.register(
            "run_failures",
            "Compaction runs that failed",
            self.run_failures.clone(),
        );
        r.register(
            "blocks_compacted",
            "Source blocks compacted",
            self.blocks_compacted.clone(),
        );
        r.register(
            "bytes_compacted",
            "Bytes of source blocks compacted",
            self.bytes_compacted.clone(),
        );
        r.register(
            "cold_compression_saved_bytes",
            "Bytes saved by cold compression of written blocks",
            self.bytes_saved.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Duration of compaction runs",
            self.duration.clone(),
        );
        r.register(
            "last_successful_run_timestamp_seconds",
            "Unix time of the last successful run",
            self.last_success.clone(),
        );
        r.register(
            "disk_insufficient_skips",
            "Compaction jobs skipped because the data directory cannot hold them",
            self.disk_skips.clone(),
        );
    }
}

/// One group of blocks to merge into one.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Blocks to merge, sorted by min time.
    pub blocks: Vec<BlockMeta>,
}

/// Plans the next compactions for one tenant's live blocks, like Mimir: first any group of
/// blocks with overlapping time ranges (the replicas' copies); only when none overlap, groups
/// of adjacent blocks inside one window of the smallest range in `ranges[1..]` that has more
/// than one block, and only complete windows (data exists after them, or their last
/// `ranges[0]` slot holds data), since ingesters may still ship blocks into the others.
pub fn plan(blocks: &[BlockMeta], ranges: &[i64]) -> Vec<Job> {
    let mut sorted: Vec<&BlockMeta> = blocks.iter().collect();
    sorted.sort_by(|a, b| (a.min_time, &a.ulid).cmp(&(b.min_time, &b.ulid)));
    let mut jobs = Vec::new();
    let mut group: Vec<&BlockMeta> = Vec::new();
    let mut group_max = i64::MIN;
    for b in &sorted {
        if !group.is_empty() && b.min_time >= group_max {
            if group.len() > 1 {
                jobs.push(Job {
                    blocks: group.iter().map(|m| (*m).clone()).collect(),
                });
            }
            group.clear();
        }
        group_max = if group.is_empty() {
            b.max_time
        } else {
            group_max.max(b.max_time)
        };
        group.push(b);
    }
    if group.len() > 1 {
        jobs.push(Job {
            blocks: group.iter().map(|m| (*m).clone()).collect(),
        });
    }
    if !jobs.is_empty() {
        return jobs;
    }
    let newest = sorted.iter().map(|b| b.max_time).max().unwrap_or(i64::MIN);
    for &range in ranges.iter().skip(1) {
        let mut windows: BTreeMap<i64, Vec<&BlockMeta>> = BTreeMap::new();
        for b in &sorted {
            let w = b.min_time.div_euclid(range) * range;
            if b.max_time <= w + range {
                windows.entry(w).or_default().push(b);
            }
        }
        for (w, group) in windows {
            // A window is complete once data exists past it, or its last base-range slot is
            // filled: no block can still arrive for it from the ingesters.
            let group_max = group.iter().map(|b| b.max_time).max().unwrap_or(i64::MIN);
            let complete = newest > w + range || group_max > w + range - ranges[0];
            if group.len() > 1 && complete {
                jobs.push(Job {
                    blocks: group.into_iter().cloned().collect(),
                });
            }
        }
        if !jobs.is_empty() {
            return jobs;
        }
    }
    jobs
}

/// Free bytes of the filesystem holding `path`.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[derive(Debug, Default)]
struct BlockState {
    has_meta: bool,
    deletion_mark: bool,
    no_compact: bool,
    bytes: u64,
    last_modified: Option<SystemTime>,
}

/// The compactor: owns its data directory and works on one bucket.
pub struct Compactor {
    store: Arc<dyn ObjectStore>,
    settings: CompactorSettings,
    metrics: CompactorMetrics,
    skipped: Mutex<Vec<SkippedJob>>,
}

impl Compactor {
    /// A compactor over `store`.
    pub fn new(store: Arc<dyn ObjectStore>, settings: CompactorSettings) -> Self {
        Self {
            store,
            settings,
            metrics: CompactorMetrics::default(),
            skipped: Mutex::new(Vec::new()),
        }
    }

    /// The compactor's metrics, to register.
    pub fn metrics(&self) -> &CompactorMetrics {
        &self.metrics
    }

    /// A plain-text status page: settings and the jobs last skipped for lack of disk.
    pub fn status_text(&self) -> String {
        let mut s = format!(
            "data_dir: {}\nfree bytes: {}\ncap: {:?}\n",
            self.settings.data_dir.display(),
            free_space(&self.settings.data_dir).unwrap_or(0),
            self.settings.max_data_dir_bytes
        );
        let skipped = self.skipped.lock().expect("status lock");
        if skipped.is_empty() {
            s.push_str("skipped jobs: none\n");
        } else {
            s.push_str("skipped jobs:\n");
            for j in skipped.iter() {
                s.push_str(&format!("- {j}\n"));
            }
        }
        s
    }

    fn clean_data_dir(&self) -> Result<(), CompactorError> {
        let d = &self.settings.data_dir;
        let err = |op| {
            move |source| CompactorError::DataDir {
                op,
                path: d.clone(),
                source,
            }
        };
        if d.exists() {
            for e in std::fs::read_dir(d).map_err(err("list"))? {
                let p = e.map_err(err("list"))?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(err("remove"))?;
                } else {
                    std::fs::remove_file(&p).map_err(err("remove"))?;
                }
            }
        }
        std::fs::create_dir_all(d).map_err(err("create"))
    }

    fn available_bytes(&self) -> u64 {
        let free = free_space(&self.settings.data_dir).unwrap_or(0);
        match self.settings.max_data_dir_bytes {
            Some(cap) => free.min(cap.saturating_sub(dir_bytes(&self.settings.data_dir))),
            None => free,
        }
    }

    /// Runs one full pass over every tenant of the bucket.
    pub fn run_once(&self) -> BoxFuture<'_, Result<RunReport, CompactorError>> {
        Box::pin(async move {
            let start = Instant::now();
            self.metrics.runs.inc();
            let result = self.run_inner().await;
            self.metrics.duration.observe(start.elapsed().as_secs_f64());
            match &result {
                Ok(r) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                    self.metrics.last_success.set(now);
                    *self.skipped.lock().expect("status lock") = r.skipped.clone();
                }
                Err(e) => {
                    self.metrics.run_failures.inc();
                    tracing::error!(error = %e, "compaction run failed");
                }
            }
            result
        })
    }

    async fn run_inner(&self) -> Result<RunReport, CompactorError> {
        self.clean_data_dir()?;
        let mut report = RunReport::default();
        let tenants = rimir_objstore::list_tenants(self.store.as_ref())
            .await
            .map_err(|source| CompactorError::Bucket {
                tenant: "*".into(),
                source: Box::new(source),
            })?;
        for tenant in tenants {
            report.tenants += 1;
            self.run_tenant(&tenant, &mut report).await?;
        }
        Ok(report)
    }

    async fn scan(&self, tenant: &str) -> Result<BTreeMap<String, BlockState>, CompactorError> {
        let bucket = |source| CompactorError::Bucket {
            tenant: tenant.to_string(),
            source: Box::new(source),
        };
        let entries = self
            .store
            .list(&format!("{tenant}/"), false)
            .await
            .map_err(bucket)?;
        let mut blocks: BTreeMap<String, BlockState> = BTreeMap::new();
        for e in entries {
            let ListEntry::Object { key, meta } = e else {
                continue;
            };
            let rest = &key[tenant.len() + 1..];
            let Some((id, file)) = rest.split_once('/') else {
                continue;
            };
            if ulid::Ulid::from_string(id).is_err() {
                continue;
            }
            let st = blocks.entry(id.to_string()).or_default();
            match file {
                rimir_tsdb::block::META_FILE => st.has_meta = true,
                DELETION_MARK => st.deletion_mark = true,
                NO_COMPACT_MARK => st.no_compact = true,
                _ => {}
            }
            st.bytes += meta.size;
            st.last_modified = Some(
                st.last_modified
                    .map_or(meta.last_modified, |t| t.max(meta.last_modified)),
            );
        }
        Ok(blocks)
    }

    async fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<T, CompactorError> {
        let body = self
            .store
            .get(key)
            .await
            .map_err(|source| CompactorError::Bucket {
                tenant: tenant.to_string(),
                source: Box::new(source),
            })?;
        serde_json::from_slice(&body).map_err(|source| CompactorError::Json {
            tenant: tenant.to_string(),
            key: key.to_string(),
            source,
        })
    }

    async fn mark_for_deletion(&self, tenant: &str, ulid: &str) -> Result<(), CompactorError> {
        let mark = DeletionMark {
            id: ulid.to_string(),
            deletion_time: unix_now(),
            version: 1,
        };
        let body = Bytes::from(serde_json::to_vec(&mark).expect("marker serializes"));
        for key in [
            format!("{tenant}/{ulid}/{DELETION_MARK}"),
            format!("{tenant}/markers/{ulid}-{DELETION_MARK}"),
        ] {
            self.store
                .put(&key, body.clone())
                .await
                .map_err(|source| CompactorError::Bucket {
                    tenant: tenant.to_string(),
                    source: Box::new(source),
                })?;
        }
        tracing::info!(tenant, block = ulid, "marked block for deletion");
        Ok(())
    }

    async fn run_tenant(&self, tenant: &str, report: &mut RunReport) -> Result<(), CompactorError> {
        let bucket = |source| CompactorError::Bucket {
            tenant: tenant.to_string(),
            source: Box::new(source),
        };
        let now = SystemTime::now();
        report.abandoned_writes_removed += self
            .store
            .remove_abandoned_writes(
                &format!("{tenant}/"),
                self.settings.partial_block_deletion_delay,
            )
            .await
            .map_err(bucket)?;
        let states = self.scan(tenant).await?;
        // 1. Remove blocks whose deletion delay has passed (meta.json first: the block
        //    disappears for readers before any data file does), and stale partial uploads.
        for (id, st) in &states {
            if st.deletion_mark {
                let mark: DeletionMark = self
                    .read_json(tenant, &format!("{tenant}/{id}/{DELETION_MARK}"))
                    .await?;
                if unix_now() - mark.deletion_time >= self.settings.deletion_delay.as_secs() as i64
                {
                    if st.has_meta {
                        self.store
                            .delete(&format!("{tenant}/{id}/{}", rimir_tsdb::block::META_FILE))
                            .await
                            .map_err(bucket)?;
                    }
                    self.store
                        .delete_prefix(&format!("{tenant}/{id}/"))
                        .await
                        .map_err(bucket)?;
                    let _ = self
                        .store
                        .delete(&format!("{tenant}/markers/{id}-{DELETION_MARK}"))
                        .await;
                    report.deleted += 1;
                    tracing::info!(tenant, block = %id, "deleted block after deletion delay");
                }
            } else if !st.has_meta {
                let age = st
                    .last_modified
                    .and_then(|t| now.duration_since(t).ok())
                    .unwrap_or_default();
                if age >= self.settings.partial_block_deletion_delay {
                    self.store
                        .delete_prefix(&format!("{tenant}/{id}/"))
                        .await
                        .map_err(bucket)?;
                    report.partials_deleted += 1;
                    tracing::info!(tenant, block = %id, "deleted partial block upload");
                }
            }
        }
        // 2. Live blocks.
        let mut live: Vec<BlockMeta> = Vec::new();
        let mut no_compact = BTreeSet::new();
        let mut sizes = BTreeMap::new();
        for (id, st) in &states {
            if st.has_meta && !st.deletion_mark {
                let meta: BlockMeta = self
                    .read_json(
                        tenant,
                        &format!("{tenant}/{id}/{}", rimir_tsdb::block::META_FILE),
                    )
                    .await?;
                if st.no_compact {
                    no_compact.insert(id.clone());
                }
                sizes.insert(id.clone(), st.bytes);
                live.push(meta);
            }
        }
        // 3. Blocks whose data is wholly inside another live block (a compaction that crashed
        //    between uploading its output and marking its sources), and expired blocks.
        let retention = self
            .settings
            .tenant_retention
            .get(tenant)
            .copied()
            .or(self.settings.retention)
            .filter(|d| !d.is_zero());
        let now_ms = unix_now() * 1000;
        let mut doomed = BTreeSet::new();
        for a in &live {
            let sa: BTreeSet<&String> = a.compaction.sources.iter().collect();
            let superseded = live.iter().any(|b| {
                b.ulid != a.ulid && {
                    let sb: BTreeSet<&String> = b.compaction.sources.iter().collect();
                    sa.is_subset(&sb) && (sa != sb || b.ulid < a.ulid)
                }
            });
            let expired = retention.is_some_and(|r| a.max_time < now_ms - r.as_millis() as i64);
            if superseded || expired {
                doomed.insert(a.ulid.clone());
            }
        }
        for id in &doomed {
            self.mark_for_deletion(tenant, id).await?;
            report.marked += 1;
        }
        live.retain(|m| !doomed.contains(&m.ulid));
        // 4. Compact until nothing is left to do or nothing left fits.
        let mut skipped_ids: BTreeSet<String> = BTreeSet::new();
        loop {
            let candidates: Vec<BlockMeta> = live
                .iter()
                .filter(|m| !no_compact.contains(&m.ulid) && !skipped_ids.contains(&m.ulid))
                .cloned()
                .collect();
            let jobs = plan(&candidates, &self.settings.block_ranges);
            if jobs.is_empty() {
                break;
            }
            for job in jobs {
                let ids: Vec<String> = job.blocks.iter().map(|b| b.ulid.clone()).collect();
                let stored: u64 = ids.iter().map(|i| sizes.get(i).copied().unwrap_or(0)).sum();
                // Plain size of each source (compressed ones estimated at 4× their size), and
                // whether it must be decompressed to disk to be read (compressed as one stream
                // per file, as before frames; blocks in frames are read in place).
                let plain_sizes: Vec<(u64, bool)> = job
                    .blocks
                    .iter()
                    .map(|b| {
                        let s = sizes.get(&b.ulid).copied().unwrap_or(0);
                        if rimir_tsdb::block::block_compression(b) == Compression::None {
                            (s, false)
                        } else {
                            let framed = b.rimir.as_ref().is_some_and(|r| r.frame_bytes.is_some());
                            (s * 4, !framed)
                        }
                    })
                    .collect();
                let plain: u64 = plain_sizes.iter().map(|p| p.0).sum();
                let decompressed: u64 = plain_sizes.iter().filter(|p| p.1).map(|p| p.0).sum();
                // Downloaded sources + decompressed copies + the merged output.
                let needed = stored + decompressed + plain;
                let available = self.available_bytes();
                if needed > available {
                    let s = SkippedJob {
                        tenant: tenant.to_string(),
                        blocks: ids.clone(),
                        needed_bytes: needed,
                        available_bytes: available,
                    };
                    tracing::warn!("{s}");
                    self.metrics
                        .disk_skips
                        .get_or_create(&TenantLabel {
                            tenant: tenant.to_string(),
                        })
                        .inc();
                    report.skipped.push(s);
                    skipped_ids.extend(ids);
                    continue;
                }
                let out = self.execute(tenant, &job, report).await?;
                for id in &ids {
                    self.mark_for_deletion(tenant, id).await?;
                    report.marked += 1;
                }
                self.metrics.blocks_compacted.inc_by(ids.len() as u64);
                self.metrics.bytes_compacted.inc_by(stored);
                report.jobs += 1;
                live.retain(|m| !ids.contains(&m.ulid));
                sizes.insert(out.0.ulid.clone(), out.1);
                live.push(out.0);
            }
        }
        // 5. Bucket index of what is live now.
        self.write_bucket_index(tenant).await
    }

    async fn execute(
        &self,
        tenant: &str,
        job: &Job,
        report: &mut RunReport,
    ) -> Result<(BlockMeta, u64), CompactorError> {
        let ids: Vec<String> = job.blocks.iter().map(|b| b.ulid.clone()).collect();
        let block_err = |source| CompactorError::Block {
            tenant: tenant.to_string(),
            blocks: ids.clone(),
            source: Box::new(source),
        };
        let bucket = |source| CompactorError::Bucket {
            tenant: tenant.to_string(),
            source: Box::new(source),
        };
        let job_dir = self.settings.data_dir.join(format!("job-{}", ids[0]));
        let src_dir = job_dir.join("src");
        let scratch = job_dir.join("scratch");
        let out_dir = job_dir.join("out");
        for d in [&src_dir, &scratch, &out_dir] {
            std::fs::create_dir_all(d).map_err(|source| CompactorError::DataDir {
                op: "create",
                path: d.clone(),
                source,
            })?;
        }
        let mut blocks = Vec::new();
        for id in &ids {
            let local = src_dir.join(id);
            rimir_objstore::download_block(self.store.as_ref(), tenant, id, &local)
                .await
                .map_err(bucket)?;
            blocks.push(Block::open_with_scratch(&local, &scratch).map_err(block_err)?);
        }
        report.data_dir_peak_bytes = report
            .data_dir_peak_bytes
            .max(dir_bytes(&self.settings.data_dir));
        let out_parent = out_dir.clone();
        let (meta, blocks) = tokio::task::block_in_place(|| {
            compact_blocks(&blocks, &out_parent, "compactor").map(|m| (m, blocks))
        })
        .map_err(block_err)?;
        let out_block = out_dir.join(&meta.ulid);
        report.data_dir_peak_bytes = report
            .data_dir_peak_bytes
            .max(dir_bytes(&self.settings.data_dir));
        drop(blocks);
        let (plain, stored) = compress_block(&out_block, self.settings.cold).map_err(block_err)?;
        report.bytes_plain += plain;
        report.bytes_stored += stored;
        self.metrics
            .bytes_saved
            .inc_by(plain.saturating_sub(stored));
        let meta = rimir_tsdb::block::read_meta(&out_block).map_err(block_err)?;
        rimir_objstore::upload_block(self.store.as_ref(), tenant, &out_block)
            .await
            .map_err(bucket)?;
        report.blocks_written.push(meta.ulid.clone());
        tracing::info!(
            tenant,
            sources = ?ids,
            block = %meta.ulid,
            plain_bytes = plain,
            stored_bytes = stored,
            "compacted blocks"
        );
        std::fs::remove_dir_all(&job_dir).map_err(|source| CompactorError::DataDir {
            op: "remove job dir",
            path: job_dir.clone(),
            source,
        })?;
        Ok((meta, stored))
    }

    /// Writes `<tenant>/bucket-index.json.gz` listing the live blocks and deletion marks.
    async fn write_bucket_index(&self, tenant: &str) -> Result<(), CompactorError> {
        let states = self.scan(tenant).await?;
        let mut blocks = Vec::new();
        let mut marks = Vec::new();
        for (id, st) in &states {
            if !st.has_meta {
                continue;
            }
            if st.deletion_mark {
                let mark: DeletionMark = self
                    .read_json(tenant, &format!("{tenant}/{id}/{DELETION_MARK}"))
                    .await?;
                marks
                    .push(serde_json::json!({"block_id": id, "deletion_time": mark.deletion_time}));
            }
            let meta: BlockMeta = self
                .read_json(
                    tenant,
                    &format!("{tenant}/{id}/{}", rimir_tsdb::block::META_FILE),
                )
                .await?;
            let segments = meta.thanos.as_ref().map_or(0, |t| t.segment_files.len());
            blocks.push(serde_json::json!({
                "block_id": id,
                "min_time": meta.min_time,
                "max_time": meta.max_time,
                "uploaded_at": st.last_modified.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs()),
                "segments_format": "1b6d",
                "segments_num": segments,
                "compaction_level": meta.compaction.level,
                "source": meta.thanos.as_ref().map(|t| t.source.clone()).unwrap_or_default(),
            }));
        }
        let index = serde_json::json!({
            "version": 1,
            "blocks": blocks,
            "block_deletion_marks": marks,
            "updated_at": unix_now(),
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(
            &mut gz,
            &serde_json::to_vec(&index).expect("index serializes"),
        )
        .and_then(|_| gz.try_finish())
        .map_err(|source| CompactorError::DataDir {
            op: "gzip bucket index",
            path: self.settings.data_dir.clone(),
            source,
        })?;
        let body = gz.finish().map_err(|source| CompactorError::DataDir {
            op: "gzip bucket index",
            path: self.settings.data_dir.clone(),
            source,
        })?;
        self.store
            .put(&format!("{tenant}/{BUCKET_INDEX}"), Bytes::from(body))
            .await
            .map_err(|source| CompactorError::Bucket {
                tenant: tenant.to_string(),
                source: Box::new(source),
            })
    }
}

/// Reads a tenant's bucket index: the ULIDs of the blocks it lists as live (not marked).
pub async fn read_bucket_index(
    store: &dyn ObjectStore,
    tenant: &str,
) -> Result<Vec<String>, CompactorError> {
    let key = format!("{tenant}/{BUCKET_INDEX}");
    let body = store
        .get(&key)
        .await
        .map_err(|source| CompactorError::Bucket {
            tenant: tenant.to_string(),
            source: Box::new(source),
        })?;
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).map_err(
        |source| CompactorError::DataDir {
            op: "gunzip bucket index",
            path: PathBuf::from(&key),
            source,
        },
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&json).map_err(|source| CompactorError::Json {
            tenant: tenant.to_string(),
            key: key.clone(),
            source,
        })?;
    let marked: BTreeSet<&str> = v["block_deletion_marks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["block_id"].as_str())
        .collect();
    Ok(v["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["block_id"].as_str())
        .filter(|id| !marked.contains(id))
        .map(String::from)
        .collect())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rimir_tsdb::block::{BlockStats, CompactionMeta};

    const H: i64 = 3_600_000;

    use rimir_objstore::FilesystemStore;
    use rimir_tsdb::block::{BlockOptions, write_block};
    use rimir_tsdb::labels::{Labels, Matcher};
    use rimir_tsdb::series::Sample;

    fn data(series: usize, from: i64, to: i64, step: i64) -> Vec<(Labels, Vec<Sample>)> {
        (0..series)
            .map(|i| {
                let l = Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]);
                let s = (from..to)
                    .step_by(step as usize)
                    .map(|t| (t, (t / step + i as i64) as f64))
                    .collect();
                (l, s)
            })
            .collect()
    }

    async fn upload(
        store: &FilesystemStore,
        tenant: &str,
        series: Vec<(Labels, Vec<Sample>)>,
    ) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let meta = write_block(tmp.path(), series, &BlockOptions::default()).unwrap();
        rimir_objstore::upload_block(store, tenant, &tmp.path().join(&meta.ulid))
            .await
            .unwrap();
        meta.ulid
    }

    async fn live_dump(store: &FilesystemStore, tenant: &str) -> Vec<(Labels, Vec<Sample>)> {
        let tmp = tempfile::tempdir().unwrap();
        let mut all: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
        let states_live: Vec<String> = rimir_objstore::list_blocks(store, tenant).await.unwrap();
        for id in states_live {
            if store
                .head(&format!("{tenant}/{id}/{DELETION_MARK}"))
                .await
                .unwrap()
                .is_some()
            {
                continue;
            }
            let local = tmp.path().join(&id);
            rimir_objstore::download_block(store, tenant, &id, &local)
                .await
                .unwrap();
            let b = Block::open(&local).unwrap();
            for s in b
                .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
                .unwrap()
            {
                all.entry(s.labels).or_default().push(s.samples);
            }
        }
        all.into_iter()
            .map(|(l, parts)| {
                let mut v: Vec<Sample> = parts.concat();
                v.sort_by_key(|s| s.0);
                (l, v)
            })
            .collect()
    }

    fn sorted(mut v: Vec<(Labels, Vec<Sample>)>) -> Vec<(Labels, Vec<Sample>)> {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn settings(dir: &Path) -> CompactorSettings {
        CompactorSettings {
            data_dir: dir.to_path_buf(),
            deletion_delay: Duration::ZERO,
            ..CompactorSettings::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_merge_into_one_block_equal_to_one_replica() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let input = data(30, 0, 2 * H, 15_000);
        for _ in 0..3 {
            upload(&store, "t1", input.clone()).await;
        }
        let mut s = settings(work.path());
        s.deletion_delay = Duration::from_secs(3600);
        let c = Compactor::new(Arc::new(store.clone()), s);
        let r = c.run_once().await.unwrap();
        assert_eq!((r.jobs, r.marked, r.deleted), (1, 3, 0));
        assert!(r.bytes_stored < r.bytes_plain, "gzip must shrink: {r:?}");
        assert!(
            live_dump(&store, "t1").await == sorted(input.clone()),
            "bucket data differs from input"
        );
        let live = read_bucket_index(&store, "t1").await.unwrap();
        assert_eq!(live, r.blocks_written);
        assert_eq!(dir_bytes(work.path()), 0, "data dir cleaned after the job");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twelve_2h_blocks_become_one_24h_block_and_sources_are_deleted() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let input = data(5, 0, 24 * H, 60_000);
        for w in 0..12 {
            let part = input
                .iter()
                .map(|(l, s)| {
                    (
                        l.clone(),
                        s.iter()
                            .copied()
                            .filter(|(t, _)| *t >= w * 2 * H && *t < (w + 1) * 2 * H)
                            .collect(),
                    )
                })
                .collect();
            upload(&store, "t1", part).await;
        }
        let c = Compactor::new(Arc::new(store.clone()), settings(work.path()));
        let r = c.run_once().await.unwrap();
        assert_eq!(r.jobs, 3, "{r:?}");
        let live = read_bucket_index(&store, "t1").await.unwrap();
        assert_eq!(live.len(), 1);
        let meta: BlockMeta = serde_json::from_slice(
            &rimir_objstore::read_meta_json(&store, "t1", &live[0])
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!((meta.min_time, meta.max_time), (0, 24 * H - 60_000 + 1));
        assert_eq!(meta.compaction.sources.len(), 12);
        assert!(
            live_dump(&store, "t1").await == sorted(input.clone()),
            "bucket data differs from input"
        );
        // Deletion delay 0: the next run removes all 14 marked blocks (12 sources, 2 of 12h).
        let r = c.run_once().await.unwrap();
        assert_eq!(r.deleted, 14);
        assert_eq!(
            rimir_objstore::list_blocks(&store, "t1").await.unwrap(),
            live
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_marks_then_deletes_expired_blocks() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let now = unix_now() * 1000;
        let old = upload(&store, "t1", data(2, 0, 2 * H, 60_000)).await;
        let fresh = upload(&store, "t1", data(2, now - H, now, 60_000)).await;
        let mut s = settings(work.path());
        s.retention = Some(Duration::from_secs(24 * 3600));
        let c = Compactor::new(Arc::new(store.clone()), s);
        let r = c.run_once().await.unwrap();
        assert_eq!(r.marked, 1);
        assert_eq!(
            read_bucket_index(&store, "t1").await.unwrap(),
            vec![fresh.clone()]
        );
        c.run_once().await.unwrap();
        let left = rimir_objstore::list_blocks(&store, "t1").await.unwrap();
        assert_eq!(left, vec![fresh]);
        assert!(!left.contains(&old));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_too_big_for_the_data_dir_is_skipped_and_others_still_run() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let big = data(400, 0, 2 * H, 15_000);
        for _ in 0..2 {
            upload(&store, "big", big.clone()).await;
        }
        let small = data(2, 0, 2 * H, 60_000);
        for _ in 0..2 {
            upload(&store, "small", small.clone()).await;
        }
        let mut s = settings(work.path());
        s.max_data_dir_bytes = Some(200_000);
        let c = Compactor::new(Arc::new(store.clone()), s);
        let mut reg = Registry::default();
        c.metrics().register(&mut reg);
        let r = c.run_once().await.unwrap();
        assert_eq!(r.jobs, 1, "the small tenant's job runs: {r:?}");
        assert_eq!(r.skipped.len(), 1);
        let skip = &r.skipped[0];
        assert_eq!(skip.tenant, "big");
        assert!(skip.needed_bytes > skip.available_bytes);
        let msg = skip.to_string();
        assert!(msg.contains("tenant big") && msg.contains("bytes"), "{msg}");
        assert!(c.status_text().contains("tenant big"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("rimir_compactor_disk_insufficient_skips_total{tenant=\"big\"} 1"),
            "{text}"
        );
        assert!(r.data_dir_peak_bytes <= 200_000, "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_compact_marks_and_per_tenant_retention_are_honoured() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let now = unix_now() * 1000;
        let input = data(2, now - H, now, 60_000);
        let a = upload(&store, "t1", input.clone()).await;
        upload(&store, "t1", input.clone()).await;
        store
            .put(
                &format!("t1/{a}/{NO_COMPACT_MARK}"),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        let old_kept = upload(&store, "keep", data(1, 0, H, 60_000)).await;
        let old_dropped = upload(&store, "drop", data(1, 0, H, 60_000)).await;
        let mut s = settings(work.path());
        s.retention = Some(Duration::from_secs(24 * 3600));
        s.tenant_retention.insert("keep".into(), Duration::ZERO);
        let c = Compactor::new(Arc::new(store.clone()), s);
        let r = c.run_once().await.unwrap();
        assert_eq!(r.jobs, 0, "a no-compact block is never merged: {r:?}");
        assert_eq!(read_bucket_index(&store, "t1").await.unwrap().len(), 2);
        assert_eq!(
            read_bucket_index(&store, "keep").await.unwrap(),
            vec![old_kept]
        );
        assert!(
            !read_bucket_index(&store, "drop")
                .await
                .unwrap()
                .contains(&old_dropped)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn superseded_sources_and_stale_partial_uploads_are_cleaned() {
        let bucket = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(bucket.path()).unwrap();
        let input = data(3, 0, 2 * H, 60_000);
        for _ in 0..2 {
            upload(&store, "t1", input.clone()).await;
        }
        // A partial upload: data without meta.json.
        store
            .put(
                "t1/01ARZ3NDEKTSV4RRFFQ69G5FAV/index",
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        let mut s = settings(work.path());
        s.partial_block_deletion_delay = Duration::ZERO;
        s.cold = Compression::None;
        let c = Compactor::new(Arc::new(store.clone()), s);
        let r = c.run_once().await.unwrap();
        assert_eq!(r.partials_deleted, 1);
        assert!(
            store
                .list("t1/01ARZ3NDEKTSV4RRFFQ69G5FAV/", false)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            live_dump(&store, "t1").await == sorted(input.clone()),
            "bucket data differs from input"
        );
    }

    fn meta(id: &str, min: i64, max: i64) -> BlockMeta {
        BlockMeta {
            ulid: id.into(),
            min_time: min,
            max_time: max,
            stats: BlockStats::default(),
            compaction: CompactionMeta {
                level: 1,
                sources: vec![id.into()],
                parents: vec![],
            },
            version: 1,
            thanos: None,
            rimir: None,
        }
    }

    fn ids(jobs: &[Job]) -> Vec<Vec<&str>> {
        jobs.iter()
            .map(|j| j.blocks.iter().map(|b| b.ulid.as_str()).collect())
            .collect()
    }

    #[test]
    fn overlapping_replica_blocks_are_merged_first() {
        let ranges = [2 * H, 12 * H, 24 * H];
        let blocks = [
            meta("a1", 0, 2 * H),
            meta("a2", 0, 2 * H),
            meta("a3", 0, 2 * H),
            meta("b1", 2 * H, 4 * H),
        ];
        assert_eq!(ids(&plan(&blocks, &ranges)), vec![vec!["a1", "a2", "a3"]]);
    }

    #[test]
    fn adjacent_blocks_compact_per_complete_window() {
        let ranges = [2 * H, 12 * H, 24 * H];
        let twelve: Vec<BlockMeta> = (0..12)
            .map(|i| meta(&format!("b{i:02}"), i * 2 * H, (i + 1) * 2 * H))
            .collect();
        let jobs = plan(&twelve, &ranges);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].blocks.len(), 6);
        let two = [meta("x", 0, 12 * H), meta("y", 12 * H, 24 * H)];
        assert_eq!(ids(&plan(&two, &ranges)), vec![vec!["x", "y"]]);
        // An incomplete window (newer blocks may still arrive) waits.
        let partial = [meta("p", 0, 2 * H), meta("q", 2 * H, 4 * H)];
        assert!(plan(&partial, &ranges).is_empty());
        assert!(plan(&[meta("z", 0, 24 * H)], &ranges).is_empty());
    }
}
