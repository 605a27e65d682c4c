//! The ingester: one head with its WAL per tenant under `blocks_storage.tsdb.dir/<tenant>`,
//! appends acknowledged only once durable, 2h-aligned blocks cut from the head and shipped to the
//! bucket (`meta.json` last), shipped blocks kept locally for `retention_period`, and the query
//! RPCs over the heads.
//!
//! The storage engine is reached through [`Tsdb`] and [`Shipper`], so this module owns only the
//! tenant bookkeeping, limits and the block lifecycle.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use rimir_core::config::Config;
use rimir_core::grpc::{
    HaElectRequest, HaElectResponse, InfoResponse, IngesterService, LabelRequest, LabelResponse,
    MatcherPb, MetadataRequest, MetadataResponse, PushRequest, PushResponse, QueryRequest,
    QueryStreamResponse, SeriesBatch, SeriesPb, decompress,
};
use rimir_core::ha::HaElections;
use rimir_core::metadata::MetadataStore;
use rimir_core::metrics::Metrics;
use rimir_core::remote_write::{Label as PbLabel, PbSample, WriteRequestRef};
use rimir_tsdb::head::SeriesSamples;
use rimir_tsdb::labels::{DisplayRefs, MatchType, Matcher};
use rimir_tsdb::series::Series;

pub use rimir_core::BoxFuture;

/// What an append to a tenant's head stored and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Samples refused (out of order, duplicates, too old) of series that were stored.
    pub refused: u64,
    /// The message naming the first refused sample.
    pub message: Option<String>,
    /// Indices in the batch of new series refused for the series limit.
    pub series_limited: Vec<usize>,
}

/// A tenant's head as the ingester uses it.
pub trait Tsdb: Send + Sync + 'static {
    /// Appends a batch; `Ok` only once it is durable in the WAL. With `max_series > 0`, new
    /// series are refused once the head holds that many.
    fn append(&self, batch: &[SeriesSamples<'_>], max_series: u64) -> Result<Appended, String>;
    /// Series matching all matchers with samples in `[mint, maxt]`.
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series>;
    /// Series in memory.
    fn num_series(&self) -> usize;
    /// Oldest and newest sample timestamps in the head.
    fn bounds(&self) -> Option<(i64, i64)>;
    /// Writes the samples in `[mint, maxt)` as a block under `parent`, returning its directory
    /// (`None` when the range holds no sample).
    fn write_block(&self, mint: i64, maxt: i64, parent: &Path) -> Result<Option<PathBuf>, String>;
    /// Drops samples before `t` from memory and the WAL.
    fn truncate_before(&self, t: i64) -> Result<(), String>;
}

/// Opens (replaying its WAL) the head of a tenant (first argument, for its limits) in a
/// directory.
pub type TsdbOpener = dyn Fn(&str, &Path) -> Result<Arc<dyn Tsdb>, String> + Send + Sync;

/// Uploads a local block directory to `<tenant>/<ULID>/`, `meta.json` last.
pub trait Shipper: Send + Sync + 'static {
    /// Uploads the block.
    fn ship<'a>(
        &'a self,
        tenant: &'a str,
        block_dir: &'a Path,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The file recording which local blocks were shipped (Thanos' shipper file name).
pub const SHIPPER_FILE: &str = "thanos.shipper.json";

/// Where a tenant's head keeps its WAL, below the tenant directory.
const HEAD_DIR: &str = "head";

struct Tenant {
    dir: PathBuf,
    db: Arc<dyn Tsdb>,
    /// Serialises block cutting and shipping per tenant.
    lifecycle: tokio::sync::Mutex<()>,
}

/// The ingester.
pub struct Ingester {
    id: String,
    zone: String,
    dir: PathBuf,
    block_range: i64,
    retention: Duration,
    max_message_size: usize,
    open: Box<TsdbOpener>,
    shipper: Arc<dyn Shipper>,
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    /// Metric metadata per tenant, in memory only.
    metadata: MetadataStore,
    /// The HA clusters whose election this ingester holds (in memory only).
    ha: HaElections,
    ready: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// The ingester failed.
#[derive(Debug, thiserror::Error)]
pub enum IngesterError {
    /// A tenant directory could not be read or created.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A head could not be opened.
    #[error("opening head of tenant {tenant}: {message}")]
    Open {
        /// Tenant.
        tenant: String,
        /// Why.
        message: String,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Ingester {
    /// An ingester over `blocks_storage.tsdb.dir`; call [`Ingester::replay`] before serving.
    pub fn new(
        cfg: &Config,
        open: Box<TsdbOpener>,
        shipper: Arc<dyn Shipper>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            id: cfg.ingester.ring.instance_id.clone(),
            zone: cfg.ingester.ring.instance_availability_zone.clone(),
            dir: cfg.blocks_storage.tsdb.dir.clone(),
            block_range: cfg.blocks_storage.tsdb.block_range_ms(),
            retention: cfg.blocks_storage.tsdb.retention_period.0,
            max_message_size: cfg.distributor.max_recv_msg_size,
            open,
            shipper,
            tenants: Mutex::new(HashMap::new()),
            metadata: MetadataStore::new(cfg.ingester.metadata_retain_period.0),
            ha: HaElections::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether WAL replay finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens every tenant found on disk, replaying their WALs; then the ingester is ready.
    pub fn replay(&self) -> Result<(), IngesterError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| IngesterError::Io {
            op: "creating tsdb dir",
            path: self.dir.clone(),
            source: e,
        })?;
        let rd = std::fs::read_dir(&self.dir).map_err(|e| IngesterError::Io {
            op: "listing tsdb dir",
            path: self.dir.clone(),
            source: e,
        })?;
        for entry in rd.flatten() {
            if entry.path().is_dir()
                && let Some(name) = entry.file_name().to_str()
                && rimir_core::tenant::validate_tenant(name).is_ok()
            {
                self.tenant(name)?;
            }
        }
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        self.metrics.ready.set(1);
        Ok(())
    }

    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tenant>>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's state, opening its head on first use.
    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, IngesterError> {
        if let Some(t) = self.lock_tenants().get(name) {
            return Ok(t.clone());
        }
        let dir = self.dir.join(name);
        let head_dir = dir.join(HEAD_DIR);
        std::fs::create_dir_all(&head_dir).map_err(|e| IngesterError::Io {
            op: "creating tenant dir",
            path: head_dir.clone(),
            source: e,
        })?;
        let db = (self.open)(name, &head_dir).map_err(|message| IngesterError::Open {
            tenant: name.into(),
            message,
        })?;
        let t = Arc::new(Tenant {
            dir,
            db,
            lifecycle: tokio::sync::Mutex::new(()),
        });
        let mut tenants = self.lock_tenants();
        let t = tenants.entry(name.to_string()).or_insert(t).clone();
        self.metrics
            .active_series
            .get_or_create(&Metrics::label("user", name))
            .set(t.db.num_series() as i64);
        Ok(t)
    }

    fn tenants(&self) -> Vec<(String, Arc<Tenant>)> {
        self.lock_tenants()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Cuts every complete block range older than 1.5 ranges before the head's newest sample
    /// (Prometheus' rule), or with `all` every range holding samples, then ships unshipped
    /// blocks and deletes local blocks past retention. Returns the blocks shipped.
    pub fn cut_and_ship(&self, all: bool) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move {
            let mut shipped = 0;
            let mut first_error = None;
            for (name, t) in self.tenants() {
                // One tenant's failure (a full disk, an unreachable bucket) must not stop the others.
                match self.cut_and_ship_tenant(&name, &t, all).await {
                    Ok(n) => shipped += n,
                    Err(e) => {
                        tracing::warn!(tenant = %name, error = %e, "cutting or shipping blocks");
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(shipped),
            }
        })
    }

    async fn cut_and_ship_tenant(
        &self,
        name: &str,
        t: &Tenant,
        all: bool,
    ) -> Result<usize, String> {
        let _g = t.lifecycle.lock().await;
        let db = t.db.clone();
        let dir = t.dir.clone();
        let range = self.block_range;
        tokio::task::spawn_blocking(move || cut_blocks(db.as_ref(), &dir, range, all))
            .await
            .map_err(|e| format!("cutting blocks of {name}: {e}"))??;
        self.metrics
            .active_series
            .get_or_create(&Metrics::label("user", name))
            .set(t.db.num_series() as i64);
        let shipped = self.ship_tenant(name, t).await?;
        self.apply_retention(&t.dir);
        Ok(shipped)
    }

    async fn ship_tenant(&self, name: &str, t: &Tenant) -> Result<usize, String> {
        let mut done = read_shipped(&t.dir);
        let mut n = 0;
        for block in local_blocks(&t.dir) {
            let id = block
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if done.contains(&id) {
                continue;
            }
            match self.shipper.ship(name, &block).await {
                Ok(()) => {
                    done.insert(id);
                    write_shipped(&t.dir, &done).map_err(|e| format!("{e}"))?;
                    self.metrics
                        .shipped_blocks
                        .get_or_create(&Metrics::label("user", name))
                        .inc();
                    n += 1;
                }
                Err(e) => {
                    self.metrics
                        .ship_failures
                        .get_or_create(&Metrics::label("user", name))
                        .inc();
                    return Err(format!(
                        "shipping block {} of tenant {name}: {e}",
                        block.display()
                    ));
                }
            }
        }
        Ok(n)
    }

    /// Deletes shipped local blocks whose newest sample is older than the retention period.
    fn apply_retention(&self, tenant_dir: &Path) {
        let shipped = read_shipped(tenant_dir);
        let cutoff = now_ms() - self.retention.as_millis() as i64;
        for block in local_blocks(tenant_dir) {
            let id = block
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !shipped.contains(id) {
                continue;
            }
            if let Some(maxt) = block_maxt(&block)
                && maxt < cutoff
                && let Err(e) = std::fs::remove_dir_all(&block)
            {
                tracing::warn!(block = %block.display(), error = %e, "deleting local block past retention");
            }
        }
    }

    /// Runs block cutting and shipping every `interval` until `stop` fires.
    pub fn run(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = self.cut_and_ship(false).await {
                            tracing::warn!(error = %e, "block cutting or shipping");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    }
}

/// Cuts the head's due block ranges; returns whether anything was truncated.
fn cut_blocks(db: &dyn Tsdb, dir: &Path, range: i64, all: bool) -> Result<bool, String> {
    let Some((mint, maxt)) = db.bounds() else {
        return Ok(false);
    };
    let mut cut = false;
    let mut start = mint.div_euclid(range) * range;
    loop {
        let end = start + range;
        let complete = if all {
            start <= maxt
        } else {
            // Keep half a range of the newest data in the head for out-of-order appends.
            maxt - start >= range + range / 2
        };
        if !complete {
            break;
        }
        // A forced flush of the range holding the newest sample cuts only up to that sample
        // (as Mimir's forced head compaction does), so later samples of the range are still
        // accepted; the compactor merges the range's blocks later.
        let end = if all { end.min(maxt + 1) } else { end };
        db.write_block(start, end, dir)?;
        db.truncate_before(end)?;
        cut = true;
        start = end;
    }
    Ok(cut)
}

fn local_blocks(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| ulid::Ulid::from_string(n).is_ok())
                && p.join("meta.json").exists()
        })
        .collect();
    v.sort();
    v
}

fn block_maxt(block: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(block.join("meta.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("maxTime")?.as_i64()
}

fn read_shipped(dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join(SHIPPER_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("uploaded").and_then(|u| u.as_array()).map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn write_shipped(dir: &Path, shipped: &BTreeSet<String>) -> std::io::Result<()> {
    let body = serde_json::json!({"version": 1, "uploaded": shipped});
    let tmp = dir.join(format!("{SHIPPER_FILE}.tmp"));
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, dir.join(SHIPPER_FILE))
}

fn matchers(pb: &[MatcherPb]) -> Result<Vec<Matcher>, Status> {
    pb.iter()
        .map(|m| {
            let kind = match m.kind {
                0 => MatchType::Equal,
                1 => MatchType::NotEqual,
                2 => MatchType::Regex,
                3 => MatchType::NotRegex,
                k => {
                    return Err(Status::invalid_argument(format!(
                        "unknown matcher type {k}"
                    )));
                }
            };
            Matcher::new(kind, m.name.clone(), m.value.clone())
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Appends a push to a tenant's head: series beyond the limit are refused with a message
/// naming the first of them, the head's own refusals (out of order, duplicates) follow.
/// Whether the caller of a push still waits for it; cleared when the push's future is dropped
/// (tonic drops it when the client cancels or its deadline passes).
struct Waiting(Arc<AtomicBool>);

impl Waiting {
    fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn append(
    db: &dyn Tsdb,
    tenant: &str,
    batch: &[SeriesSamples<'_>],
    max_series: u64,
) -> Result<PushResponse, Status> {
    let a = db
        .append(batch, max_series)
        .map_err(|e| Status::internal(format!("appending to head of tenant {tenant}: {e}")))?;
    let total: u64 = batch.iter().map(|(_, s)| s.len() as u64).sum();
    let limited: u64 = a
        .series_limited
        .iter()
        .filter_map(|&i| batch.get(i))
        .map(|(_, s)| s.len() as u64)
        .sum();
    let mut errors = Vec::new();
    if let Some((labels, _)) = a.series_limited.first().and_then(|&i| batch.get(i)) {
        errors.push(format!(
            "per-tenant series limit of {max_series} exceeded on this ingester (limits.max_global_series_per_user spread over the ring): series {}",
            DisplayRefs(labels)
        ));
    }
    errors.extend(a.message);
    Ok(PushResponse {
        samples_appended: total - limited - a.refused,
        samples_rejected: limited + a.refused,
        errors,
    })
}

impl Ingester {
    /// The tenant a push goes to, once the ingester is ready and the tenant name valid.
    fn push_target(&self, tenant: &str) -> Result<Arc<Tenant>, Status> {
        if !self.is_ready() {
            return Err(Status::unavailable("ingester is replaying its WAL"));
        }
        rimir_core::tenant::validate_tenant(tenant).map_err(Status::invalid_argument)?;
        self.tenant(tenant).map_err(internal)
    }

    /// Per-request metrics of a push (never per sample).
    fn record_push(&self, tenant: &str, resp: &PushResponse, t: &Tenant) {
        let user = Metrics::label("user", tenant);
        self.metrics
            .ingested_samples
            .get_or_create(&user)
            .inc_by(resp.samples_appended);
        self.metrics
            .active_series
            .get_or_create(&user)
            .set(t.db.num_series() as i64);
    }

    fn existing(&self, tenant: &str) -> Option<Arc<Tenant>> {
        self.lock_tenants().get(tenant).cloned()
    }

    pub(crate) fn select(
        &self,
        tenant: &str,
        m: &[MatcherPb],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, Status> {
        let ms = matchers(m)?;
        Ok(match self.existing(tenant) {
            Some(t) => t.db.select(&ms, mint, maxt),
            None => Vec::new(),
        })
    }
}

#[tonic::async_trait]
impl IngesterService for Ingester {
    async fn push(&self, req: PushRequest) -> Result<PushResponse, Status> {
        if req.payload.is_empty() {
            // Metadata only (Prometheus sends it in requests of its own): no head involved.
            if !self.is_ready() {
                return Err(Status::unavailable("ingester is replaying its WAL"));
            }
            rimir_core::tenant::validate_tenant(&req.tenant).map_err(Status::invalid_argument)?;
            self.metadata.add(&req.tenant, &req.metadata);
            return Ok(PushResponse::default());
        }
        let t = self.push_target(&req.tenant)?;
        self.metadata.add(&req.tenant, &req.metadata);
        let max = self.max_message_size;
        let PushRequest {
            tenant,
            compression,
            payload,
            max_series,
            metadata: _,
        } = req;
        let db = t.db.clone();
        // Set when this future is dropped: the caller stopped waiting (its deadline passed, or
        // the connection went), so a push still queued for the blocking pool is dropped before
        // it is decoded. Nothing was acknowledged for it; a replica that fell behind catches up
        // instead of working through pushes nobody waits for.
        let waiting = Waiting::new();
        let still_waiting = waiting.0.clone();
        let abandoned = self
            .metrics
            .abandoned_pushes
            .get_or_create(&Metrics::label("user", &tenant))
            .clone();
        let (resp, tenant) = tokio::task::spawn_blocking(move || {
            if !still_waiting.load(Ordering::Acquire) {
                abandoned.inc();
                return Err(Status::cancelled(
                    "the caller stopped waiting for this push",
                ));
            }
            let raw = decompress(compression, &payload, max)?;
            let w = WriteRequestRef::decode(&raw)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let batch: Vec<SeriesSamples<'_>> = w.iter().collect();
            append(db.as_ref(), &tenant, &batch, max_series).map(|r| (r, tenant))
        })
        .await
        .map_err(internal)??;
        drop(waiting);
        self.record_push(&tenant, &resp, &t);
        Ok(resp)
    }

    async fn push_local(
        &self,
        tenant: String,
        batch: SeriesBatch,
        max_series: u64,
    ) -> Result<PushResponse, Status> {
        let t = self.push_target(&tenant)?;
        let db = t.db.clone();
        let (resp, tenant) = tokio::task::spawn_blocking(move || {
            let labels = batch.label_refs();
            let series = batch.series(&labels);
            append(db.as_ref(), &tenant, &series, max_series).map(|r| (r, tenant))
        })
        .await
        .map_err(internal)??;
        self.record_push(&tenant, &resp, &t);
        Ok(resp)
    }

    async fn query_stream(&self, req: QueryRequest) -> Result<Vec<QueryStreamResponse>, Status> {
        let series = self.select(&req.tenant, &req.matchers, req.mint, req.maxt)?;
        // Moves labels out of the selected series and frees each one's samples as it is
        // converted, so the answer is not held twice.
        let mut out: Vec<QueryStreamResponse> = Vec::with_capacity(series.len().div_ceil(128));
        for s in series {
            if out.last().is_none_or(|r| r.series.len() == 128) {
                out.push(QueryStreamResponse {
                    series: Vec::with_capacity(128),
                });
            }
            let pb = SeriesPb {
                labels: s
                    .labels
                    .into_vec()
                    .into_iter()
                    .map(|l| PbLabel {
                        name: l.name,
                        value: l.value,
                    })
                    .collect(),
                samples: s
                    .samples
                    .iter()
                    .map(|&(timestamp, value)| PbSample { value, timestamp })
                    .collect(),
            };
            if let Some(r) = out.last_mut() {
                r.series.push(pb);
            }
        }
        Ok(out)
    }

    async fn label_names(&self, req: LabelRequest) -> Result<LabelResponse, Status> {
        let series = self.select(&req.tenant, &req.matchers, req.mint, req.maxt)?;
        let names: BTreeSet<String> = series
            .iter()
            .flat_map(|s| s.labels.iter().map(|l| l.name.clone()))
            .collect();
        Ok(LabelResponse {
            values: names.into_iter().collect(),
        })
    }

    async fn label_values(&self, req: LabelRequest) -> Result<LabelResponse, Status> {
        let series = self.select(&req.tenant, &req.matchers, req.mint, req.maxt)?;
        let values: BTreeSet<String> = series
            .iter()
            .filter_map(|s| s.labels.get(&req.name).map(String::from))
            .collect();
        Ok(LabelResponse {
            values: values.into_iter().collect(),
        })
    }

    async fn select_local(&self, req: &QueryRequest) -> Option<Result<Vec<Series>, Status>> {
        Some(self.select(&req.tenant, &req.matchers, req.mint, req.maxt))
    }

    async fn info(&self) -> Result<InfoResponse, Status> {
        Ok(InfoResponse {
            id: self.id.clone(),
            zone: self.zone.clone(),
            ready: self.is_ready(),
        })
    }

    async fn metrics_metadata(&self, req: MetadataRequest) -> Result<MetadataResponse, Status> {
        let metric = (!req.metric.is_empty()).then_some(req.metric.as_str());
        Ok(MetadataResponse {
            metadata: self.metadata.get(&req.tenant, metric),
        })
    }

    async fn ha_elect(&self, req: HaElectRequest) -> Result<HaElectResponse, Status> {
        if req.tenant.is_empty() || req.cluster.is_empty() || req.replica.is_empty() {
            return Err(Status::invalid_argument(
                "HaElect needs a tenant, a cluster and a replica",
            ));
        }
        let o = self.ha.elect(&req, std::time::Instant::now());
        if o.changed {
            tracing::info!(tenant = %req.tenant, cluster = %req.cluster, elected = %o.response.elected, "HA tracker: failover to another replica");
            self.metrics
                .ha_elected_replica_changes
                .get_or_create(&vec![("user", req.tenant), ("cluster", req.cluster)])
                .inc();
        }
        Ok(o.response)
    }
}

/// In-memory stand-ins for a tenant's head and for the bucket, for tests of the roles that
/// hold an [`Ingester`] without the storage engine.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{Appended, BoxFuture, Shipper, Tsdb};
    use rimir_tsdb::head::SeriesSamples;
    use rimir_tsdb::labels::{Labels, Matcher};
    use rimir_tsdb::series::{Sample, Series};

    /// An in-memory head that writes blocks as a `meta.json` holding its series.
    #[derive(Default)]
    pub struct MemTsdb {
        series: Mutex<BTreeMap<Labels, Vec<Sample>>>,
    }

    impl Tsdb for MemTsdb {
        fn append(&self, batch: &[SeriesSamples<'_>], max_series: u64) -> Result<Appended, String> {
            let mut s = self.series.lock().unwrap();
            let mut out = Appended::default();
            for (i, (l, samples)) in batch.iter().enumerate() {
                let l = Labels::from_refs(l);
                if max_series > 0 && !s.contains_key(&l) && s.len() as u64 >= max_series {
                    out.series_limited.push(i);
                    continue;
                }
                s.entry(l).or_default().extend_from_slice(samples);
            }
            Ok(out)
        }
        fn select(&self, m: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
            self.series
                .lock()
                .unwrap()
                .iter()
                .filter(|(l, _)| m.iter().all(|m| m.matches_labels(l)))
                .map(|(l, s)| Series {
                    labels: l.clone(),
                    samples: s
                        .iter()
                        .copied()
                        .filter(|&(t, _)| t >= mint && t <= maxt)
                        .collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect()
        }
        fn num_series(&self) -> usize {
            self.series.lock().unwrap().len()
        }
        fn bounds(&self) -> Option<(i64, i64)> {
            let s = self.series.lock().unwrap();
            let ts = s.values().flatten().map(|x| x.0);
            let min = ts.clone().min()?;
            Some((min, ts.max()?))
        }
        fn write_block(
            &self,
            mint: i64,
            maxt: i64,
            parent: &Path,
        ) -> Result<Option<PathBuf>, String> {
            let sel = self.select(&[], mint, maxt - 1);
            if sel.is_empty() {
                return Ok(None);
            }
            let dir = parent.join(ulid::Ulid::new().to_string());
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let n: usize = sel.iter().map(|s| s.samples.len()).sum();
            let meta =
                serde_json::json!({"minTime": mint, "maxTime": maxt, "stats": {"numSamples": n}});
            std::fs::write(dir.join("meta.json"), meta.to_string()).map_err(|e| e.to_string())?;
            Ok(Some(dir))
        }
        fn truncate_before(&self, t: i64) -> Result<(), String> {
            let mut s = self.series.lock().unwrap();
            for v in s.values_mut() {
                v.retain(|x| x.0 >= t);
            }
            s.retain(|_, v| !v.is_empty());
            Ok(())
        }
    }

    /// Copies shipped blocks into a directory.
    pub struct DirShipper(pub PathBuf);

    impl Shipper for DirShipper {
        fn ship<'a>(
            &'a self,
            tenant: &'a str,
            block: &'a Path,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let dst = self.0.join(tenant).join(block.file_name().unwrap());
                std::fs::create_dir_all(&dst).map_err(|e| e.to_string())?;
                std::fs::copy(block.join("meta.json"), dst.join("meta.json"))
                    .map_err(|e| e.to_string())?;
                Ok(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{DirShipper, MemTsdb};
    use super::*;
    use rimir_core::grpc::{compress, compression_code};
    use rimir_core::remote_write::{LabelRef, encode_series};
    use rimir_tsdb::series::Sample;

    fn push_req(tenant: &str, series: &[(&str, &[Sample])], max_series: u64) -> PushRequest {
        let mut payload = Vec::new();
        for (name, samples) in series {
            encode_series(
                &mut payload,
                &[LabelRef {
                    name: "__name__",
                    value: name,
                }],
                samples,
            );
        }
        PushRequest {
            tenant: tenant.into(),
            compression: compression_code(rimir_core::config::Compression::Snappy),
            payload: compress(rimir_core::config::Compression::Snappy, &payload).into(),
            max_series,
            metadata: Vec::new(),
        }
    }

    fn ingester(dir: &Path, bucket: &Path) -> Ingester {
        let mut cfg = Config::default();
        cfg.blocks_storage.tsdb.dir = dir.to_path_buf();
        Ingester::new(
            &cfg,
            Box::new(|_t: &str, _p: &Path| Ok(Arc::new(MemTsdb::default()) as Arc<dyn Tsdb>)),
            Arc::new(DirShipper(bucket.to_path_buf())),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn push_is_refused_until_replay_is_done() {
        let d = tempfile::tempdir().unwrap();
        let ing = ingester(&d.path().join("tsdb"), &d.path().join("bucket"));
        let e = ing
            .push(push_req("t", &[("up", &[(1, 1.0)])], 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        ing.replay().unwrap();
        let r = ing
            .push(push_req("t", &[("up", &[(1, 1.0)])], 0))
            .await
            .unwrap();
        assert_eq!(r.samples_appended, 1);
        assert!(d.path().join("tsdb/t/head").is_dir());
    }

    #[test]
    fn a_push_whose_caller_stopped_waiting_is_dropped_unread() {
        // One blocking thread, held busy, so the push queues behind it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let ing = Arc::new(ingester(&d.path().join("tsdb"), &d.path().join("bucket")));
        ing.replay().unwrap();
        rt.block_on(async {
            // Open the tenant's head first, so only the push itself waits for the pool.
            ing.push(push_req("t", &[("warmup", &[(1, 1.0)])], 0))
                .await
                .unwrap();
            let (release, blocked) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || blocked.recv());
            let pushing = {
                let ing = ing.clone();
                tokio::spawn(
                    async move { ing.push(push_req("t", &[("late", &[(2, 1.0)])], 0)).await },
                )
            };
            // Let the push reach the blocking pool's queue, then give up on it, as tonic does
            // when the client's deadline passes.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            pushing.abort();
            assert!(pushing.await.unwrap_err().is_cancelled());
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
            // The queued closure has run (the pool is free again): it stored nothing.
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            let t = ing.existing("t").unwrap();
            assert_eq!(t.db.num_series(), 1, "only the warm-up series");
            let abandoned = ing
                .metrics
                .abandoned_pushes
                .get_or_create(&Metrics::label("user", "t"))
                .get();
            assert_eq!(abandoned, 1);
            // A caller that waits is served as before.
            let r = ing
                .push(push_req("t", &[("late", &[(2, 1.0)])], 0))
                .await
                .unwrap();
            assert_eq!(r.samples_appended, 1);
        });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metadata_is_kept_per_tenant_without_opening_a_head() {
        let d = tempfile::tempdir().unwrap();
        let ing = ingester(&d.path().join("tsdb"), &d.path().join("bucket"));
        ing.replay().unwrap();
        let md = |name: &str, kind: i32| rimir_core::remote_write::MetricMetadata {
            r#type: kind,
            metric_family_name: name.into(),
            help: format!("About {name}."),
            unit: String::new(),
        };
        let only_metadata = PushRequest {
            tenant: "m".into(),
            metadata: vec![md("reqs_total", 1), md("temp", 2)],
            ..Default::default()
        };
        assert_eq!(
            ing.push(only_metadata).await.unwrap(),
            PushResponse::default()
        );
        assert!(
            !d.path().join("tsdb/m").exists(),
            "no head for a metadata-only push"
        );
        let mut with_series = push_req("t", &[("up", &[(1, 1.0)])], 0);
        with_series.metadata = vec![md("up", 2)];
        assert_eq!(ing.push(with_series).await.unwrap().samples_appended, 1);
        let get = |tenant: &str, metric: &str| MetadataRequest {
            tenant: tenant.into(),
            metric: metric.into(),
        };
        let m = ing.metrics_metadata(get("m", "")).await.unwrap().metadata;
        assert_eq!(m, [md("reqs_total", 1), md("temp", 2)]);
        let m = ing
            .metrics_metadata(get("m", "temp"))
            .await
            .unwrap()
            .metadata;
        assert_eq!(m, [md("temp", 2)]);
        let m = ing.metrics_metadata(get("t", "")).await.unwrap().metadata;
        assert_eq!(m, [md("up", 2)]);
        assert!(
            ing.metrics_metadata(get("x", ""))
                .await
                .unwrap()
                .metadata
                .is_empty()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn series_limit_refuses_new_series_but_keeps_known_ones() {
        let d = tempfile::tempdir().unwrap();
        let ing = ingester(&d.path().join("tsdb"), &d.path().join("bucket"));
        ing.replay().unwrap();
        let r = ing
            .push(push_req(
                "t",
                &[("a", &[(1, 1.0)]), ("b", &[(1, 1.0)]), ("c", &[(1, 1.0)])],
                2,
            ))
            .await
            .unwrap();
        assert_eq!((r.samples_appended, r.samples_rejected), (2, 1));
        assert!(r.errors[0].contains("series limit of 2"), "{:?}", r.errors);
        assert!(r.errors[0].contains(r#"{__name__="c"}"#), "{:?}", r.errors);
        let r = ing
            .push(push_req("t", &[("a", &[(2, 1.0)])], 2))
            .await
            .unwrap();
        assert_eq!(r.samples_rejected, 0);
        // Another tenant has its own budget.
        let r = ing
            .push(push_req("u", &[("c", &[(1, 1.0)])], 2))
            .await
            .unwrap();
        assert_eq!(r.samples_appended, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn flush_cuts_aligned_blocks_ships_them_once_and_queries_see_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let bucket = d.path().join("bucket");
        let ing = ingester(&d.path().join("tsdb"), &bucket);
        ing.replay().unwrap();
        let h = 2 * 3600 * 1000;
        let base = now_ms().div_euclid(h) * h - 5 * h;
        let samples: Vec<Sample> = (0..10).map(|i| (base + i * h / 2, i as f64)).collect();
        ing.push(push_req("t", &[("up", &samples)], 0))
            .await
            .unwrap();
        // Samples every hour from 0h to 9h. A periodic cut takes every 2h range starting at
        // least 3h before the newest sample: [0,2h) … [6h,8h).
        assert_eq!(ing.cut_and_ship(false).await.unwrap(), 4);
        let q = ing
            .query_stream(QueryRequest {
                tenant: "t".into(),
                mint: 0,
                maxt: i64::MAX,
                ..Default::default()
            })
            .await
            .unwrap();
        let left: Vec<(i64, f64)> = q[0].series[0]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value))
            .collect();
        assert_eq!(left, vec![(base + 4 * h, 8.0), (base + 9 * h / 2, 9.0)]);
        assert_eq!(ing.cut_and_ship(true).await.unwrap(), 1);
        assert_eq!(
            ing.cut_and_ship(true).await.unwrap(),
            0,
            "nothing shipped twice"
        );
        let shipped: Vec<_> = std::fs::read_dir(bucket.join("t")).unwrap().collect();
        assert_eq!(shipped.len(), 5);
        let mut maxts: Vec<i64> = local_blocks(&d.path().join("tsdb/t"))
            .iter()
            .map(|b| block_maxt(b).unwrap())
            .collect();
        maxts.sort();
        // Complete ranges end on their boundary; the forced cut of the newest range ends just
        // after its newest sample, so later samples of that range are still accepted.
        let mut want: Vec<i64> = (1..=4).map(|i| base + i * h).collect();
        want.push(base + 9 * h / 2 + 1);
        assert_eq!(maxts, want);
        let later: Vec<Sample> = vec![(base + 9 * h / 2 + 1000, 10.0)];
        ing.push(push_req("t", &[("up", &later)], 0))
            .await
            .expect("a sample newer than the flushed ones is accepted");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shipped_blocks_past_retention_are_deleted_locally() {
        let d = tempfile::tempdir().unwrap();
        let bucket = d.path().join("bucket");
        let ing = ingester(&d.path().join("tsdb"), &bucket);
        ing.replay().unwrap();
        let old = now_ms() - 20 * 3600 * 1000;
        let recent = now_ms() - 3600 * 1000;
        ing.push(push_req("t", &[("up", &[(old, 1.0), (recent, 2.0)])], 0))
            .await
            .unwrap();
        assert_eq!(ing.cut_and_ship(true).await.unwrap(), 2);
        let left = local_blocks(&d.path().join("tsdb/t"));
        assert_eq!(left.len(), 1, "the 20h-old block is past the 13h retention");
        assert!(block_maxt(&left[0]).unwrap() > recent);
        assert_eq!(std::fs::read_dir(bucket.join("t")).unwrap().count(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tenants_on_disk_are_reopened_by_replay() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tsdb/team-a/head")).unwrap();
        let ing = ingester(&d.path().join("tsdb"), &d.path().join("bucket"));
        ing.replay().unwrap();
        assert!(ing.existing("team-a").is_some());
        assert!(ing.info().await.unwrap().ready);
    }
}
