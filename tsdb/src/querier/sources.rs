//! Where the querier's data comes from: the ingesters (recent data, over gRPC or in-process)
//! and the blocks in object storage (older data, cached on local disk once per block), merged
//! per series with the replicas' copies deduplicated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;

use super::{QueryError, Queryable};
use crate::api::prometheus::TenantSource;
use crate::block::{Block, BlockMeta};
use crate::distributor::IngesterPool;
use crate::grpc::{LabelRequest, MatcherPb, QueryRequest};
use crate::labels::{Label, Labels, MatchType, Matcher};
use crate::objstore::{self, ObjectStore};
use crate::series::{Series, merge_samples};

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
    let mut by: BTreeMap<Labels, Vec<Vec<crate::series::Sample>>> = BTreeMap::new();
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
                let refs: Vec<&[crate::series::Sample]> =
                    parts.iter().map(|p| p.as_slice()).collect();
                merge_samples(&refs)
            };
            Series { labels, samples }
        })
        .collect()
}

/// The series of a `query_stream` answer.
fn from_pb(resps: Vec<crate::grpc::QueryStreamResponse>) -> Vec<Series> {
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

    fn fan_out<T: Send + 'static>(
        &self,
        ctx: (&[Matcher], i64, i64),
        call: impl Fn(Arc<dyn crate::grpc::IngesterService>) -> BoxFut<T>,
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
        let results = self.handle.block_on(async move {
            let mut out = Vec::new();
            for (id, f) in futs {
                out.push((id, f.await));
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
            return Err(storage(
                ctx.0,
                ctx.1,
                ctx.2,
                format!(
                    "querying ingesters: {} of {} failed (at most {tolerated} may with replication factor {rf}): {}",
                    failures.len(),
                    ring.instances().len(),
                    failures.join("; ")
                ),
            ));
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
        let lists = self.fan_out((matchers, mint, maxt), move |c| {
            let req = req.clone();
            Box::pin(async move {
                if let Some(local) = c.select_local(&req).await {
                    return local;
                }
                Ok(from_pb(c.query_stream(req).await?))
            })
        })?;
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
        let r = self.fan_out((matchers, mint, maxt), move |c| {
            let req = req.clone();
            Box::pin(async move { c.label_names(req).await })
        })?;
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
        let r = self.fan_out((matchers, mint, maxt), move |c| {
            let req = req.clone();
            Box::pin(async move { c.label_values(req).await })
        })?;
        Ok(union(r.into_iter().map(|x| x.values)))
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

struct CachedBlock {
    meta: BlockMeta,
    open: Option<Arc<Block>>,
}

/// A tenant's blocks in object storage. Each block's meta.json is fetched once; a block is
/// downloaded to the local cache directory the first time a query needs its time range, then
/// read from there with ranged reads; blocks that left the bucket are dropped from the cache.
pub struct BucketQueryable {
    store: Arc<dyn ObjectStore>,
    tenant: String,
    cache_dir: PathBuf,
    handle: Handle,
    state: Mutex<(Option<Instant>, BTreeMap<String, CachedBlock>)>,
}

impl BucketQueryable {
    /// The blocks of `tenant` in `store`, cached under `cache_dir/<tenant>/`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        tenant: &str,
        cache_dir: PathBuf,
        handle: Handle,
    ) -> Self {
        Self {
            store,
            tenant: tenant.to_string(),
            cache_dir: cache_dir.join(tenant),
            handle,
            state: Mutex::new((None, BTreeMap::new())),
        }
    }

    /// The open blocks overlapping `[mint, maxt]`, downloading those not cached yet.
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
                .block_on(objstore::list_blocks(self.store.as_ref(), &self.tenant))
                .map_err(|e| exec("listing blocks", &e))?;
            let live: BTreeSet<String> = ids.iter().cloned().collect();
            let gone: Vec<String> =
                st.1.keys()
                    .filter(|k| !live.contains(*k))
                    .cloned()
                    .collect();
            for g in gone {
                st.1.remove(&g);
                let _ = std::fs::remove_dir_all(self.cache_dir.join(&g));
            }
            for id in ids {
                if st.1.contains_key(&id) {
                    continue;
                }
                let raw = self
                    .handle
                    .block_on(objstore::read_meta_json(
                        self.store.as_ref(),
                        &self.tenant,
                        &id,
                    ))
                    .map_err(|e| exec("reading meta.json", &e))?;
                let meta: BlockMeta = serde_json::from_slice(&raw)
                    .map_err(|e| exec(&format!("parsing meta.json of block {id}"), &e))?;
                st.1.insert(id, CachedBlock { meta, open: None });
            }
            st.0 = Some(Instant::now());
        }
        let mut out = Vec::new();
        for (id, cb) in st.1.iter_mut() {
            if cb.meta.max_time <= mint || cb.meta.min_time > maxt {
                continue;
            }
            if cb.open.is_none() {
                let dir = self.cache_dir.join(id);
                if !dir.join(crate::block::META_FILE).is_file() {
                    let _ = std::fs::remove_dir_all(&dir);
                    self.handle
                        .block_on(objstore::download_block(
                            self.store.as_ref(),
                            &self.tenant,
                            id,
                            &dir,
                        ))
                        .map_err(|e| exec("downloading block", &e))?;
                }
                let b = Block::open_with_scratch(&dir, &self.cache_dir.join(".scratch"))
                    .map_err(|e| exec("opening block", &e))?;
                cb.open = Some(Arc::new(b));
            }
            out.extend(cb.open.clone());
        }
        Ok(out)
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
        let series = self.select(matchers, mint, maxt)?;
        Ok(super::label_names_of(series.iter().map(|s| &s.labels)))
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
        let series = self.select(matchers, mint, maxt)?;
        Ok(super::label_values_of(
            name,
            series.iter().map(|s| &s.labels),
        ))
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
}

/// The querier's tenants: each one's ingesters and bucket blocks, merged.
pub struct QuerierTenants {
    pool: Option<Arc<IngesterPool>>,
    store: Option<Arc<dyn ObjectStore>>,
    cache_dir: PathBuf,
    query_ingesters_within: Duration,
    handle: Handle,
    tenants: Mutex<HashMap<String, Arc<dyn Queryable>>>,
}

impl QuerierTenants {
    /// Sources from the ingesters of `pool` and the blocks of `store` (either may be absent).
    pub fn new(
        pool: Option<Arc<IngesterPool>>,
        store: Option<Arc<dyn ObjectStore>>,
        cache_dir: PathBuf,
        query_ingesters_within: Duration,
        handle: Handle,
    ) -> Self {
        Self {
            pool,
            store,
            cache_dir,
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
                        self.cache_dir.clone(),
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
