//! The distributor: decodes remote-write pushes, validates them against the tenant's limits,
//! shards each series onto the ingester ring and writes it to `replication_factor` ingesters,
//! answering success only when every stored series reached a quorum.
//!
//! Mimir semantics: the valid series of a partly invalid request are stored and the request is
//! answered 400 naming the first invalid series; rate limiting rejects the whole request (429);
//! a series that misses its quorum fails the request with 500, so a client never sees a false
//! acknowledgement.
//!
//! Built on `rimir-core` (limits, ring, ingester pool, gRPC client); it must not import another
//! role crate, and it holds no HTTP server: the `rimir` crate routes `/api/v1/push` here.
//!
//! With `distributor.ha_tracker` on, pushes of a Prometheus HA pair's non-elected replica are
//! answered 202 and not stored (module `ha`; the election is held by an ingester).
//!
//! Where to start reading: [`Distributor::push`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use rimir_core::BoxFuture;
use rimir_core::config::{Compression, Config, Limits};
use rimir_core::grpc::{PushRequest, SeriesBatch, compress, compression_code};
use rimir_core::metrics::Metrics;
use rimir_core::pool::IngesterPool;
use rimir_core::remote_write::{self, LabelRef, MetricMetadata, WriteRequestRef, encode_series};
use rimir_core::ring::{Instance, Ring, shard_token};
use rimir_core::runtime::RuntimeLimits;
use rimir_core::tenant::{ANONYMOUS, validate_tenant};
use rimir_tsdb::labels::{METRIC_NAME, write_go_quoted};
use rimir_tsdb::series::Sample;

mod ha;
use ha::{HaTracker, Verdict};

/// The HTTP answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// HTTP status code.
    pub status: u16,
    /// Body: empty on success, else the reason.
    pub message: String,
}

impl PushResult {
    fn ok() -> Self {
        Self {
            status: 200,
            message: String::new(),
        }
    }
    fn err(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A per-tenant token bucket.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The distributor.
pub struct Distributor {
    multitenancy: bool,
    max_recv: usize,
    hot: Compression,
    limits: Arc<RuntimeLimits>,
    pool: Arc<IngesterPool>,
    rate: Mutex<HashMap<String, Bucket>>,
    /// HA deduplication, when `distributor.ha_tracker.enable_ha_tracker` is on.
    ha: Option<HaTracker>,
    metrics: Arc<Metrics>,
}

/// One push to one ingester: its index in the ring, the answer, the seconds it took.
type PushOutcome = (
    usize,
    Result<rimir_core::grpc::PushResponse, tonic::Status>,
    f64,
);

/// A series that passed validation.
struct Valid<'r, 'a> {
    labels: Cow<'r, [LabelRef<'a>]>,
    samples: Cow<'r, [Sample]>,
}

/// Why a series was refused: the Mimir discard reason and the message.
struct Invalid {
    reason: &'static str,
    message: String,
    samples: usize,
}

impl Distributor {
    /// A distributor writing to `pool` under the per-tenant `limits` in force (reloaded from
    /// the runtime-config file without a restart).
    pub fn new(
        cfg: &Config,
        limits: Arc<RuntimeLimits>,
        pool: Arc<IngesterPool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            multitenancy: cfg.multitenancy_enabled,
            max_recv: cfg.distributor.max_recv_msg_size,
            hot: cfg.compression.hot,
            limits,
            pool,
            rate: Mutex::new(HashMap::new()),
            ha: HaTracker::new(&cfg.distributor.ha_tracker),
            metrics,
        }
    }

    /// The pool of ingesters.
    pub fn pool(&self) -> &Arc<IngesterPool> {
        &self.pool
    }

    /// Handles `POST /api/v1/push`: `org_id` is `X-Scope-OrgID`, `content_type` and
    /// `content_encoding` the `Content-Type` and `Content-Encoding` headers.
    ///
    /// Nothing is acknowledged that was not stored: a part of the request that is not stored
    /// (an invalid series, a sample out of bounds, a histogram or exemplar, which rimir does not
    /// store yet) makes the answer a 4xx naming it, and is counted in
    /// `rimir_discarded_samples_total` / `rimir_discarded_exemplars_total` by reason; the valid
    /// rest of the request is stored, as Mimir does.
    pub fn push<'a>(
        &'a self,
        org_id: Option<&'a str>,
        content_type: Option<&'a str>,
        content_encoding: Option<&'a str>,
        body: &'a [u8],
    ) -> BoxFuture<'a, PushResult> {
        Box::pin(async move {
            let start = Instant::now();
            let res = self
                .push_inner(org_id, content_type, content_encoding, body)
                .await;
            self.metrics
                .push_duration
                .observe(start.elapsed().as_secs_f64());
            self.metrics
                .requests
                .get_or_create(&Metrics::label("status_code", &res.status.to_string()))
                .inc();
            res
        })
    }

    /// Resolves the tenant of a request.
    pub fn tenant<'h>(&self, org_id: Option<&'h str>) -> Result<&'h str, PushResult> {
        if !self.multitenancy {
            return Ok(ANONYMOUS);
        }
        let t = org_id
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                PushResult::err(401, "no org id: the X-Scope-OrgID header is required")
            })?;
        validate_tenant(t).map_err(|m| PushResult::err(400, m))?;
        Ok(t)
    }

    async fn push_inner(
        &self,
        org_id: Option<&str>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: &[u8],
    ) -> PushResult {
        let tenant = match self.tenant(org_id) {
            Ok(t) => t,
            Err(e) => return e,
        };
        if let Err(e) = remote_write::negotiate(content_type) {
            return PushResult::err(415, e.to_string());
        }
        if body.is_empty() {
            return PushResult::err(
                400,
                "empty request body: expected a snappy-compressed remote-write WriteRequest",
            );
        }
        if body.len() > self.max_recv {
            return PushResult::err(
                413,
                format!(
                    "request body of {} bytes exceeds the limit of {} bytes (distributor.max_recv_msg_size)",
                    body.len(),
                    self.max_recv
                ),
            );
        }
        let raw = match decompress_body(content_encoding, body, self.max_recv) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let req = match WriteRequestRef::decode(&raw) {
            Ok(r) => r,
            Err(e) => {
                return PushResult::err(400, format!("parsing remote-write WriteRequest: {e}"));
            }
        };
        if req.v2_fields() > 0 {
            return PushResult::err(
                400,
                format!(
                    "the body holds {} fields of a remote-write 2.0 request (symbols, timeseries) but was sent as remote-write 1.0 (Content-Type without proto=io.prometheus.write.v2.Request): nothing was stored",
                    req.v2_fields()
                ),
            );
        }
        let in_force = self.limits.snapshot();
        let limits = in_force.get(tenant);
        let strip = match self.deduplicate(tenant, &req, limits).await {
            Ok(strip) => strip,
            Err(refused) => return refused,
        };
        // With HA deduplication, the series as stored: without the replica label.
        let stripped: Vec<Vec<LabelRef<'_>>> = match strip {
            Some(name) => req
                .iter()
                .map(|(l, _)| l.iter().filter(|l| l.name != name).copied().collect())
                .collect(),
            None => Vec::new(),
        };
        let now_ms = now_millis();
        let mut valid: Vec<Valid<'_, '_>> = Vec::with_capacity(req.len());
        let mut first_error: Option<Invalid> = None;
        let mut received = 0u64;
        for (i, (labels, samples)) in req.iter().enumerate() {
            let labels = stripped.get(i).map_or(labels, Vec::as_slice);
            received += samples.len() as u64;
            match validate_series(labels, samples, limits, now_ms) {
                Ok((v, dropped)) => {
                    if let Some(d) = dropped {
                        self.discard(tenant, &d);
                        first_error.get_or_insert(d);
                    }
                    if !v.samples.is_empty() {
                        valid.push(v);
                    }
                }
                Err(d) => {
                    self.discard(tenant, &d);
                    first_error.get_or_insert(d);
                }
            }
        }
        if let Some(e) = self.discard_unstored(tenant, &req) {
            first_error.get_or_insert(e);
        }
        self.metrics
            .received_samples
            .get_or_create(&Metrics::label("user", tenant))
            .inc_by(received);
        let mut metadata = Vec::with_capacity(req.metadata().len());
        for m in req.metadata() {
            match rimir_core::metadata::validate(m, limits.max_metadata_length) {
                Ok(()) => metadata.push(m.to_owned()),
                Err(e) => {
                    self.metrics
                        .discarded_metadata
                        .get_or_create(&vec![
                            ("user", tenant.to_string()),
                            ("reason", e.reason.into()),
                        ])
                        .inc();
                    first_error.get_or_insert(Invalid {
                        reason: e.reason,
                        message: e.message,
                        samples: 0,
                    });
                }
            }
        }
        if !req.metadata().is_empty() {
            self.metrics
                .received_metadata
                .get_or_create(&Metrics::label("user", tenant))
                .inc_by(req.metadata().len() as u64);
        }
        let n_samples: usize = valid.iter().map(|v| v.samples.len()).sum();
        // Metadata counts towards the rate like samples, as in Mimir.
        let n_items = n_samples + metadata.len();
        if n_items > 0 && !self.take_rate(tenant, n_items as f64, limits) {
            self.metrics
                .discarded_samples
                .get_or_create(&vec![
                    ("user", tenant.to_string()),
                    ("reason", "rate_limited".into()),
                ])
                .inc_by(n_samples as u64);
            return PushResult::err(
                429,
                format!(
                    "the request has been rejected because tenant {tenant} exceeded the ingestion rate limit of {} samples/s with a burst of {} (limits.ingestion_rate, limits.ingestion_burst_size); {n_samples} samples were refused",
                    limits.ingestion_rate, limits.ingestion_burst_size
                ),
            );
        }
        let (series, meta) = tokio::join!(
            async {
                if valid.is_empty() {
                    return Ok(());
                }
                self.replicate(tenant, &valid, limits).await
            },
            async {
                if metadata.is_empty() {
                    return Ok(());
                }
                self.replicate_metadata(tenant, metadata).await
            }
        );
        if let Err(e) = series.and(meta) {
            return e;
        }
        match first_error {
            Some(e) => PushResult::err(400, e.message),
            None => PushResult::ok(),
        }
    }

    /// HA deduplication of a push (Mimir's rules): when the tracker is on and the tenant has
    /// `accept_ha_samples`, the first series' `ha_cluster_label` and `ha_replica_label` name the
    /// pair and the replica. `Ok(Some(label))`: the replica is elected, store the push without
    /// that label; `Ok(None)`: not an HA push; `Err`: 202 for a non-elected replica (counted in
    /// `rimir_distributor_deduped_samples_total`), or 500 when the election could not be read.
    async fn deduplicate<'l>(
        &self,
        tenant: &str,
        req: &WriteRequestRef<'_>,
        limits: &'l Limits,
    ) -> Result<Option<&'l str>, PushResult> {
        let Some(ha) = &self.ha else {
            return Ok(None);
        };
        if !limits.accept_ha_samples || req.is_empty() {
            return Ok(None);
        }
        let (labels, _) = req.series(0);
        let value = |name: &str| {
            labels
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.value)
                .filter(|v| !v.is_empty())
        };
        let (Some(cluster), Some(replica)) = (
            value(&limits.ha_cluster_label),
            value(&limits.ha_replica_label),
        ) else {
            return Ok(None);
        };
        match ha.check(&self.pool, tenant, cluster, replica).await {
            Ok(Verdict::Accept) => Ok(Some(limits.ha_replica_label.as_str())),
            Ok(Verdict::Dedupe { elected }) => {
                let n = req.num_samples();
                self.metrics
                    .deduped_samples
                    .get_or_create(&vec![
                        ("user", tenant.to_string()),
                        ("cluster", cluster.to_string()),
                    ])
                    .inc_by(n as u64);
                Err(PushResult::err(
                    202,
                    format!(
                        "replicas did not match, rejecting sample: replica={replica} elected={elected} (cluster {cluster}, HA deduplication): {n} samples accepted and not stored"
                    ),
                ))
            }
            Err(e) => Err(PushResult::err(500, e)),
        }
    }

    /// Counts the histograms and exemplars of a request, which are not stored, and names the
    /// first series that carried them.
    fn discard_unstored(&self, tenant: &str, req: &WriteRequestRef<'_>) -> Option<Invalid> {
        let unstored = req.unstored();
        let first = unstored.first()?;
        let histograms: usize = unstored.iter().map(|u| u.histograms).sum();
        let exemplars: usize = unstored.iter().map(|u| u.exemplars).sum();
        if histograms > 0 {
            self.discard(
                tenant,
                &Invalid {
                    reason: "native_histograms_unsupported",
                    message: String::new(),
                    samples: histograms,
                },
            );
        }
        if exemplars > 0 {
            self.metrics
                .discarded_exemplars
                .get_or_create(&vec![
                    ("user", tenant.to_string()),
                    ("reason", "exemplars_unsupported".into()),
                ])
                .inc_by(exemplars as u64);
        }
        let mut refused = Vec::new();
        if histograms > 0 {
            refused.push(format!("{histograms} native histogram samples"));
        }
        if exemplars > 0 {
            refused.push(format!("{exemplars} exemplars"));
        }
        let (labels, _) = req.series(first.series);
        Some(Invalid {
            reason: if histograms > 0 {
                "native_histograms_unsupported"
            } else {
                "exemplars_unsupported"
            },
            message: format!(
                "{} in {} series were not stored: this rimir stores float samples only (the request's valid float samples were stored); first such series {}",
                refused.join(" and "),
                unstored.len(),
                series_text(labels)
            ),
            samples: 0,
        })
    }

    fn discard(&self, tenant: &str, d: &Invalid) {
        self.metrics
            .discarded_samples
            .get_or_create(&vec![
                ("user", tenant.to_string()),
                ("reason", d.reason.into()),
            ])
            .inc_by(d.samples as u64);
    }

    fn take_rate(&self, tenant: &str, n: f64, limits: &Limits) -> bool {
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let burst = limits.ingestion_burst_size as f64;
        let now = Instant::now();
        let b = rate.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * limits.ingestion_rate)
            .min(burst);
        b.last = now;
        if n <= b.tokens {
            b.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Writes every valid series to its replicas; fails unless each series reached a quorum.
    async fn replicate(
        &self,
        tenant: &str,
        valid: &[Valid<'_, '_>],
        limits: &Limits,
    ) -> Result<(), PushResult> {
        let ring = self.pool.ring();
        let instances = ring.instances();
        if instances.is_empty() {
            return Err(PushResult::err(500, "no ingesters in the ring"));
        }
        let rf = ring.replication_factor();
        // Each instance's share: the indices of its series in `valid`.
        let mut shares: Vec<Vec<u32>> = vec![Vec::new(); instances.len()];
        let mut replicas_of: Vec<usize> = Vec::with_capacity(valid.len() * rf);
        let mut replicas = Vec::with_capacity(rf);
        for (k, v) in valid.iter().enumerate() {
            ring.replicas(shard_token(tenant, &v.labels), &mut replicas);
            for &i in &replicas {
                shares[i].push(k as u32);
            }
            replicas_of.extend_from_slice(&replicas);
        }
        let max_series = if limits.max_global_series_per_user == 0 {
            0
        } else {
            (limits.max_global_series_per_user * rf as u64).div_ceil(instances.len() as u64)
        };
        // Instances with the same share (all of them when RF equals the number of ingesters)
        // get one encoding, compressed once and shared.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|g| shares[g[0]] == *share) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut tasks = JoinSet::new();
        for group in groups {
            let share = &shares[group[0]];
            let mut payload: Option<bytes::Bytes> = None;
            for i in group {
                let inst = &instances[i];
                let client = match self.pool.client(&inst.addr) {
                    Ok(c) => c,
                    Err(e) => {
                        let e = format!("{}: {}", inst.id, e.message());
                        tasks.spawn(async move { (i, Err(tonic::Status::unavailable(e)), 0.0) });
                        continue;
                    }
                };
                let tenant = tenant.to_string();
                if inst.addr.starts_with("local:") {
                    // In-process ingester: hand the series over, no encoding or compression.
                    let mut batch = SeriesBatch::with_capacity(share.len());
                    for &k in share {
                        let v = &valid[k as usize];
                        batch.push(&v.labels, &v.samples);
                    }
                    tasks.spawn(async move {
                        let t = Instant::now();
                        let r = client.push_local(tenant, batch, max_series).await;
                        (i, r, t.elapsed().as_secs_f64())
                    });
                    continue;
                }
                let payload = payload
                    .get_or_insert_with(|| {
                        let mut raw = Vec::with_capacity(share.len() * 128);
                        for &k in share {
                            let v = &valid[k as usize];
                            encode_series(&mut raw, &v.labels, &v.samples);
                        }
                        match self.hot {
                            Compression::None => raw.into(),
                            hot => compress(hot, &raw).into(),
                        }
                    })
                    .clone();
                let req = PushRequest {
                    tenant,
                    compression: compression_code(self.hot),
                    payload,
                    max_series,
                    metadata: Vec::new(),
                };
                tasks.spawn(async move {
                    let t = Instant::now();
                    let r = client.push(req).await;
                    (i, r, t.elapsed().as_secs_f64())
                });
            }
        }
        self.await_quorum(tenant, &ring, tasks, &replicas_of).await
    }

    /// Writes each metric's metadata to the replicas of its name (as Mimir shards it); fails
    /// unless each entry reached a quorum.
    async fn replicate_metadata(
        &self,
        tenant: &str,
        metadata: Vec<MetricMetadata>,
    ) -> Result<(), PushResult> {
        let ring = self.pool.ring();
        let instances = ring.instances();
        if instances.is_empty() {
            return Err(PushResult::err(500, "no ingesters in the ring"));
        }
        let mut shares: Vec<Vec<MetricMetadata>> = vec![Vec::new(); instances.len()];
        let mut replicas_of = Vec::with_capacity(metadata.len() * ring.replication_factor());
        let mut replicas = Vec::new();
        for m in metadata {
            let name = [LabelRef {
                name: "__name__",
                value: &m.metric_family_name,
            }];
            ring.replicas(shard_token(tenant, &name), &mut replicas);
            for &i in &replicas {
                shares[i].push(m.clone());
            }
            replicas_of.extend_from_slice(&replicas);
        }
        let mut tasks = JoinSet::new();
        for (i, share) in shares.into_iter().enumerate() {
            if share.is_empty() {
                continue;
            }
            let inst = &instances[i];
            let req = PushRequest {
                tenant: tenant.to_string(),
                compression: 0,
                payload: bytes::Bytes::new(),
                max_series: 0,
                metadata: share,
            };
            match self.pool.client(&inst.addr) {
                Ok(client) => {
                    tasks.spawn(async move {
                        let t = Instant::now();
                        let r = client.push(req).await;
                        (i, r, t.elapsed().as_secs_f64())
                    });
                }
                Err(e) => {
                    let e = format!("{}: {}", inst.id, e.message());
                    tasks.spawn(async move { (i, Err(tonic::Status::unavailable(e)), 0.0) });
                }
            }
        }
        self.await_quorum(tenant, &ring, tasks, &replicas_of).await
    }

    /// Collects the answers of pushes to ingesters until every item (series or metadata entry,
    /// whose replicas are the consecutive `RF`-sized chunks of `replicas_of`) has a quorum of
    /// acknowledgements; 500 when that cannot happen, 400 with the first refusal an ingester
    /// reported.
    async fn await_quorum(
        &self,
        tenant: &str,
        ring: &Ring,
        mut tasks: JoinSet<PushOutcome>,
        replicas_of: &[usize],
    ) -> Result<(), PushResult> {
        let instances = ring.instances();
        let rf = ring.replication_factor();
        let quorum = ring.quorum();
        let mut ok = vec![false; instances.len()];
        let mut first_failure: Option<String> = None;
        let mut client_error: Option<String> = None;
        let mut failed = vec![false; instances.len()];
        let worst_of = |ok: &[bool]| {
            replicas_of
                .chunks(rf.max(1))
                .map(|reps| reps.iter().filter(|&&i| ok[i]).count())
                .min()
                .unwrap_or(rf)
        };
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, r, secs)) = joined else { continue };
            let inst = &instances[i];
            self.metrics
                .ingester_push_duration
                .get_or_create(&Metrics::label("ingester", &inst.id))
                .observe(secs);
            match r {
                Ok(resp) => {
                    ok[i] = true;
                    if resp.samples_rejected > 0 {
                        self.metrics
                            .discarded_samples
                            .get_or_create(&vec![
                                ("user", tenant.to_string()),
                                ("reason", "ingester_rejected".into()),
                            ])
                            .inc_by(resp.samples_rejected);
                    }
                    if let Some(e) = resp.errors.into_iter().next() {
                        client_error.get_or_insert(e);
                    }
                }
                Err(s) => {
                    if s.code() == tonic::Code::InvalidArgument {
                        client_error.get_or_insert(s.message().to_string());
                        ok[i] = true;
                    } else {
                        failed[i] = true;
                        first_failure.get_or_insert_with(|| {
                            format!("ingester {} ({}): {}", inst.id, inst.addr, s.message())
                        });
                    }
                }
            }
            // Every series has its quorum: answer now and let slower replicas finish on
            // their own, as Mimir does, so one slow ingester does not set the latency.
            if !tasks.is_empty() && worst_of(&ok) >= quorum {
                tasks.detach_all();
                break;
            }
        }
        self.update_ring_health(&failed, instances);
        let worst = worst_of(&ok);
        if worst < quorum {
            return Err(PushResult::err(
                500,
                format!(
                    "failed pushing to ingesters: quorum not reached ({worst} of {rf} replicas acknowledged, {quorum} needed): {}",
                    first_failure.unwrap_or_default()
                ),
            ));
        }
        if let Some(e) = client_error {
            return Err(PushResult::err(400, e));
        }
        Ok(())
    }

    fn update_ring_health(&self, failed: &[bool], instances: &[Instance]) {
        let failed = failed.iter().filter(|&&f| f).count() as i64;
        self.metrics
            .ring_members
            .get_or_create(&Metrics::label("state", "ACTIVE"))
            .set(instances.len() as i64 - failed);
        self.metrics
            .ring_members
            .get_or_create(&Metrics::label("state", "UNHEALTHY"))
            .set(failed);
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn decompress_body(
    encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Vec<u8>, PushResult> {
    let too_big = || {
        PushResult::err(
            413,
            format!(
                "decompressed request body exceeds the limit of {limit} bytes (distributor.max_recv_msg_size)"
            ),
        )
    };
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    let read_limited = |r: &mut dyn Read, what: &str| -> Result<Vec<u8>, PushResult> {
        let mut out = Vec::new();
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| PushResult::err(400, format!("decompressing {what} request body: {e}")))?;
        if out.len() > limit {
            return Err(too_big());
        }
        Ok(out)
    };
    match enc.as_deref() {
        None | Some("snappy") | Some("") => {
            let n = snap::raw::decompress_len(body).map_err(|e| {
                PushResult::err(400, format!("decompressing snappy request body: {e}"))
            })?;
            if n > limit {
                return Err(too_big());
            }
            snap::raw::Decoder::new().decompress_vec(body).map_err(|e| {
                PushResult::err(400, format!("decompressing snappy request body: {e}"))
            })
        }
        Some("gzip") | Some("x-gzip") => {
            read_limited(&mut flate2::read::GzDecoder::new(body), "gzip")
        }
        Some("zstd") => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(|e| {
                PushResult::err(400, format!("decompressing zstd request body: {e}"))
            })?;
            read_limited(&mut d, "zstd")
        }
        Some("identity") => Ok(body.to_vec()),
        Some(other) => Err(PushResult::err(
            415,
            format!("unsupported Content-Encoding {other:?}: use snappy, gzip or zstd"),
        )),
    }
}

/// `{__name__="up", job="x"}`, cut at 200 characters like Mimir's messages.
fn series_text(labels: &[LabelRef<'_>]) -> String {
    let mut s = String::from("{");
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(l.name);
        s.push('=');
        let _ = write_go_quoted(&mut s, l.value);
        if s.len() > 200 {
            break;
        }
    }
    s.push('}');
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn valid_metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The length of `s` in characters when it exceeds `limit` characters (counted only when
/// its bytes do: a string of at most `limit` bytes cannot have more characters).
fn chars_beyond(s: &str, limit: usize) -> Option<usize> {
    if s.len() <= limit {
        return None;
    }
    Some(s.chars().count()).filter(|&n| n > limit)
}

/// Validates one series. On success returns it (labels without empty values, samples without
/// those beyond the grace period) and, when samples were dropped, why.
fn validate_series<'r, 'a>(
    labels: &'r [LabelRef<'a>],
    samples: &'r [Sample],
    limits: &Limits,
    now_ms: i64,
) -> Result<(Valid<'r, 'a>, Option<Invalid>), Invalid> {
    let bad = |reason: &'static str, message: String| Invalid {
        reason,
        message,
        samples: samples.len(),
    };
    let name = labels
        .iter()
        .find(|l| l.name == METRIC_NAME)
        .map(|l| l.value)
        .unwrap_or("");
    if name.is_empty() {
        return Err(bad(
            "missing_metric_name",
            format!(
                "received a series without a metric name: series {}",
                series_text(labels)
            ),
        ));
    }
    if !valid_metric_name(name) {
        return Err(bad(
            "invalid_metric_name",
            format!(
                "received a series with an invalid metric name {name:?}: series {}",
                series_text(labels)
            ),
        ));
    }
    let non_empty = labels.iter().filter(|l| !l.value.is_empty()).count();
    if non_empty > limits.max_label_names_per_series {
        return Err(bad(
            "max_label_names_per_series",
            format!(
                "received a series whose number of labels ({non_empty}) exceeds the limit of {} (limits.max_label_names_per_series): series {}",
                limits.max_label_names_per_series,
                series_text(labels)
            ),
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if !valid_label_name(l.name) {
            return Err(bad(
                "label_invalid",
                format!(
                    "received a series with an invalid label name {:?}: series {}",
                    l.name,
                    series_text(labels)
                ),
            ));
        }
        if let Some(n) = chars_beyond(l.name, limits.max_label_name_length) {
            return Err(bad(
                "label_name_too_long",
                format!(
                    "received a series whose label name length ({n}) exceeds the limit of {} characters (limits.max_label_name_length), label {:?}: series {}",
                    limits.max_label_name_length,
                    l.name,
                    series_text(labels)
                ),
            ));
        }
        if let Some(n) = chars_beyond(l.value, limits.max_label_value_length) {
            return Err(bad(
                "label_value_too_long",
                format!(
                    "received a series whose label value length ({n}) exceeds the limit of {} characters (limits.max_label_value_length), label {:?}: series {}",
                    limits.max_label_value_length,
                    l.name,
                    series_text(labels)
                ),
            ));
        }
        if i > 0 {
            let prev = labels[i - 1].name;
            if prev == l.name {
                return Err(bad(
                    "duplicate_label_names",
                    format!(
                        "received a series with duplicate label name {:?}: series {}",
                        l.name,
                        series_text(labels)
                    ),
                ));
            }
            if prev > l.name {
                return Err(bad(
                    "labels_not_sorted",
                    format!(
                        "received a series whose label names are not sorted ({:?} after {prev:?}): series {}",
                        l.name,
                        series_text(labels)
                    ),
                ));
            }
        }
    }
    let labels: Cow<'r, [LabelRef<'a>]> = if non_empty == labels.len() {
        Cow::Borrowed(labels)
    } else {
        Cow::Owned(
            labels
                .iter()
                .copied()
                .filter(|l| !l.value.is_empty())
                .collect(),
        )
    };
    let max_t = now_ms.saturating_add(limits.creation_grace_period.as_millis_i64());
    let mut dropped = None;
    let samples: Cow<'r, [Sample]> = if samples.iter().all(|&(t, _)| t <= max_t) {
        Cow::Borrowed(samples)
    } else {
        let kept: Vec<Sample> = samples
            .iter()
            .copied()
            .filter(|&(t, _)| t <= max_t)
            .collect();
        let first = samples.iter().find(|&&(t, _)| t > max_t).map_or(0, |s| s.0);
        dropped = Some(Invalid {
            reason: "sample_too_far_in_future",
            message: format!(
                "received a sample whose timestamp {first} is more than {} in the future (limits.creation_grace_period): series {}",
                limits.creation_grace_period,
                series_text(&labels)
            ),
            samples: samples.len() - kept.len(),
        });
        Cow::Owned(kept)
    };
    Ok((Valid { labels, samples }, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use rimir_core::grpc::IngesterService;
    use rimir_core::grpc::{
        InfoResponse, LabelRequest, LabelResponse, MetadataRequest, MetadataResponse, PushResponse,
        QueryRequest, QueryStreamResponse, decompress,
    };
    use rimir_core::remote_write::{Label, PbSample, TimeSeries, WriteRequest};
    use std::collections::BTreeSet;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// (tenant, [(labels, samples)]) of each push.
    type Pushes = Vec<(String, Vec<(Vec<(String, String)>, Vec<Sample>)>)>;

    /// An in-memory ingester that records what it got, or fails when told to.
    #[derive(Default)]
    struct Fake {
        down: AtomicBool,
        slow: AtomicBool,
        got: Mutex<Pushes>,
        payloads: Mutex<Vec<bytes::Bytes>>,
        metadata: Mutex<Vec<MetricMetadata>>,
        ha: rimir_core::ha::HaElections,
        ha_calls: std::sync::atomic::AtomicUsize,
    }

    #[tonic::async_trait]
    impl IngesterService for Fake {
        async fn push(&self, req: PushRequest) -> Result<PushResponse, tonic::Status> {
            if self.down.load(Ordering::SeqCst) {
                return Err(tonic::Status::unavailable("connection refused"));
            }
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            self.metadata
                .lock()
                .unwrap()
                .extend(req.metadata.iter().cloned());
            if req.payload.is_empty() {
                return Ok(PushResponse::default());
            }
            self.payloads.lock().unwrap().push(req.payload.clone());
            let raw = decompress(req.compression, &req.payload, 1 << 24)?;
            let w = WriteRequestRef::decode(&raw)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let series = w
                .iter()
                .map(|(l, s)| {
                    (
                        l.iter()
                            .map(|l| (l.name.to_string(), l.value.to_string()))
                            .collect(),
                        s.to_vec(),
                    )
                })
                .collect();
            let n = w.num_samples() as u64;
            self.got.lock().unwrap().push((req.tenant, series));
            Ok(PushResponse {
                samples_appended: n,
                ..Default::default()
            })
        }
        async fn query_stream(
            &self,
            _: QueryRequest,
        ) -> Result<Vec<QueryStreamResponse>, tonic::Status> {
            Ok(vec![])
        }
        async fn label_names(&self, _: LabelRequest) -> Result<LabelResponse, tonic::Status> {
            Ok(LabelResponse::default())
        }
        async fn label_values(&self, _: LabelRequest) -> Result<LabelResponse, tonic::Status> {
            Ok(LabelResponse::default())
        }
        async fn info(&self) -> Result<InfoResponse, tonic::Status> {
            Ok(InfoResponse::default())
        }
        async fn metrics_metadata(
            &self,
            _: MetadataRequest,
        ) -> Result<MetadataResponse, tonic::Status> {
            Ok(MetadataResponse {
                metadata: self.metadata.lock().unwrap().clone(),
            })
        }
        async fn ha_elect(
            &self,
            req: rimir_core::grpc::HaElectRequest,
        ) -> Result<rimir_core::grpc::HaElectResponse, tonic::Status> {
            if self.down.load(Ordering::SeqCst) {
                return Err(tonic::Status::unavailable("connection refused"));
            }
            self.ha_calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.ha.elect(&req, std::time::Instant::now()).response)
        }
    }

    impl Fake {
        fn samples(&self) -> usize {
            self.got
                .lock()
                .unwrap()
                .iter()
                .flat_map(|(_, s)| s.iter().map(|(_, s)| s.len()))
                .sum()
        }
    }

    fn setup(cfg: &Config, n: usize) -> (Distributor, Vec<Arc<Fake>>) {
        let fakes: Vec<Arc<Fake>> = (0..n).map(|_| Arc::new(Fake::default())).collect();
        (distributor_over(cfg, &fakes), fakes)
    }

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| PbSample { value, timestamp })
                .collect(),
            ..Default::default()
        }
    }

    fn snappy(w: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&w.encode_to_vec())
            .unwrap()
    }

    fn now() -> i64 {
        now_millis()
    }

    /// Config of an HA-deduplicating distributor: failover after 300ms, no jitter.
    fn ha_config() -> Config {
        let mut cfg = Config::default();
        let ha = &mut cfg.distributor.ha_tracker;
        ha.enable_ha_tracker = true;
        ha.ha_tracker_update_timeout = rimir_core::config::GoDuration(Duration::from_millis(100));
        ha.ha_tracker_update_timeout_jitter_max = rimir_core::config::GoDuration(Duration::ZERO);
        ha.ha_tracker_failover_timeout = rimir_core::config::GoDuration(Duration::from_millis(300));
        cfg.limits.accept_ha_samples = true;
        cfg
    }

    /// A distributor over `fakes` (the same ingesters another distributor may use).
    fn distributor_over(cfg: &Config, fakes: &[Arc<Fake>]) -> Distributor {
        let pool = IngesterPool::new(cfg);
        pool.set_ring(
            (0..fakes.len())
                .map(|i| Instance {
                    id: format!("ingester-{i}"),
                    addr: format!("fake-{i}"),
                    zone: String::new(),
                })
                .collect(),
        );
        for (i, f) in fakes.iter().enumerate() {
            pool.insert_client(format!("fake-{i}"), f.clone());
        }
        let limits = Arc::new(RuntimeLimits::load(Arc::new(cfg.clone())).unwrap());
        Distributor::new(cfg, limits, Arc::new(pool), Arc::new(Metrics::new()))
    }

    fn replica_push(replica: &str, t: i64) -> Vec<u8> {
        snappy(&WriteRequest {
            timeseries: (0..3)
                .map(|i| {
                    ts(
                        &[
                            ("__name__", "up"),
                            ("__replica__", replica),
                            ("cluster", "prom"),
                            ("instance", &format!("i{i}")),
                        ],
                        &[(t, 1.0)],
                    )
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stored_series(fakes: &[Arc<Fake>]) -> BTreeSet<Vec<(String, String)>> {
        fakes
            .iter()
            .flat_map(|f| f.got.lock().unwrap().clone())
            .flat_map(|(_, s)| s.into_iter().map(|(l, _)| l))
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_distributors_agree_on_the_elected_replica_and_fail_over_when_it_goes_silent() {
        let cfg = ha_config();
        let fakes: Vec<Arc<Fake>> = (0..1).map(|_| Arc::new(Fake::default())).collect();
        let (d1, d2) = (
            distributor_over(&cfg, &fakes),
            distributor_over(&cfg, &fakes),
        );
        let t = now();
        assert_eq!(
            d1.push(None, None, None, &replica_push("a", t)).await,
            PushResult::ok()
        );
        let r = d2.push(None, None, None, &replica_push("b", t)).await;
        assert_eq!(r.status, 202, "{}", r.message);
        assert!(r.message.contains("replica=b elected=a"), "{}", r.message);
        // Stored once, without the replica label.
        let stored = stored_series(&fakes);
        assert_eq!(stored.len(), 3, "{stored:?}");
        assert!(
            stored
                .iter()
                .all(|l| l.iter().all(|(n, _)| n != "__replica__"))
        );
        assert!(
            stored
                .iter()
                .all(|l| l.contains(&("cluster".into(), "prom".into())))
        );
        let deduped = d2
            .metrics
            .deduped_samples
            .get_or_create(&vec![
                ("user", "anonymous".into()),
                ("cluster", "prom".into()),
            ])
            .get();
        assert_eq!(deduped, 3);
        // d2's refusal is cached: pushing b again asks nobody.
        let calls = fakes[0].ha_calls.load(Ordering::SeqCst);
        assert_eq!(
            d2.push(None, None, None, &replica_push("b", t + 1))
                .await
                .status,
            202
        );
        assert_eq!(fakes[0].ha_calls.load(Ordering::SeqCst), calls);
        // a keeps pushing through d1, which tells the holder a is alive: no failover.
        for k in 0..4 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            assert_eq!(
                d1.push(None, None, None, &replica_push("a", t + 10 + k))
                    .await,
                PushResult::ok()
            );
        }
        assert_eq!(
            d2.push(None, None, None, &replica_push("b", t + 20))
                .await
                .status,
            202
        );
        // a goes silent: after the failover timeout, b is elected and a refused.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            d2.push(None, None, None, &replica_push("b", t + 30)).await,
            PushResult::ok()
        );
        let r = d1.push(None, None, None, &replica_push("a", t + 31)).await;
        assert_eq!(r.status, 202, "{}", r.message);
        assert!(r.message.contains("replica=a elected=b"), "{}", r.message);
        assert_eq!(
            stored_series(&fakes).len(),
            3,
            "b's series are the same series"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_election_moves_to_the_next_ingester_when_its_holder_is_down_and_500_when_none_answers()
     {
        let mut cfg = ha_config();
        cfg.ingester.ring.replication_factor = 3;
        let fakes: Vec<Arc<Fake>> = (0..3).map(|_| Arc::new(Fake::default())).collect();
        let d = distributor_over(&cfg, &fakes);
        let t = now();
        // Find the holder: the only fake asked.
        assert_eq!(
            d.push(None, None, None, &replica_push("a", t)).await,
            PushResult::ok()
        );
        let holder = (0..3)
            .find(|&i| fakes[i].ha_calls.load(Ordering::SeqCst) == 1)
            .expect("one ingester holds the election");
        assert_eq!(
            fakes
                .iter()
                .map(|f| f.ha_calls.load(Ordering::SeqCst))
                .sum::<usize>(),
            1
        );
        fakes[holder].down.store(true, Ordering::SeqCst);
        // A fresh distributor (empty cache) asks the next holder, which elects b.
        let d2 = distributor_over(&cfg, &fakes);
        // Quorum 2 of 3 still holds for the samples.
        assert_eq!(
            d2.push(None, None, None, &replica_push("b", t + 1)).await,
            PushResult::ok()
        );
        for f in &fakes {
            f.down.store(true, Ordering::SeqCst);
        }
        let d3 = distributor_over(&cfg, &fakes);
        let r = d3.push(None, None, None, &replica_push("a", t + 2)).await;
        assert_eq!(r.status, 500, "{}", r.message);
        assert!(
            r.message.contains(
                "HA tracker: no ingester holding the election of cluster \"prom\" answered"
            ),
            "{}",
            r.message
        );
        assert!(r.message.contains("connection refused"), "{}", r.message);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pushes_without_ha_labels_or_from_tenants_without_accept_ha_samples_are_not_deduplicated()
     {
        let mut cfg = ha_config();
        cfg.limits.accept_ha_samples = false;
        let fakes: Vec<Arc<Fake>> = vec![Arc::new(Fake::default())];
        let d = distributor_over(&cfg, &fakes);
        let t = now();
        for replica in ["a", "b"] {
            assert_eq!(
                d.push(None, None, None, &replica_push(replica, t)).await,
                PushResult::ok()
            );
        }
        let stored = stored_series(&fakes);
        assert_eq!(
            stored.len(),
            6,
            "both replicas, replica label kept: {stored:?}"
        );
        assert_eq!(fakes[0].ha_calls.load(Ordering::SeqCst), 0);
        // Tracker on, but the series carry no replica label: stored, nobody asked.
        let d = distributor_over(&ha_config(), &fakes);
        let plain = snappy(&WriteRequest {
            timeseries: vec![ts(&[("__name__", "up"), ("cluster", "prom")], &[(t, 1.0)])],
            ..Default::default()
        });
        assert_eq!(d.push(None, None, None, &plain).await, PushResult::ok());
        assert_eq!(fakes[0].ha_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replicas_with_the_same_series_share_one_compressed_payload() {
        let mut cfg = Config::default();
        cfg.ingester.ring.replication_factor = 3;
        let (d, fakes) = setup(&cfg, 3);
        let t = now();
        let series: Vec<TimeSeries> = (0..50)
            .map(|i| {
                ts(
                    &[("__name__", "up"), ("job", &format!("j{i}"))],
                    &[(t, 1.0)],
                )
            })
            .collect();
        let r = d
            .push(
                None,
                None,
                None,
                &snappy(&WriteRequest {
                    timeseries: series,
                    ..Default::default()
                }),
            )
            .await;
        assert_eq!(r, PushResult::ok());
        let payloads: Vec<bytes::Bytes> = fakes
            .iter()
            .map(|f| f.payloads.lock().unwrap()[0].clone())
            .collect();
        assert!(
            payloads
                .iter()
                .all(|p| p.as_ptr() == payloads[0].as_ptr() && p.len() == payloads[0].len()),
            "every replica got the same buffer, encoded and compressed once"
        );
        assert!(fakes.iter().all(|f| f.samples() == 50));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_input_gets_exact_status_and_message() {
        let mut cfg = Config::default();
        cfg.distributor.max_recv_msg_size = 4096;
        let (d, fakes) = setup(&cfg, 1);
        let t = now();
        let good = ts(&[("__name__", "up"), ("job", "a")], &[(t, 1.0)]);
        let req = |series: Vec<TimeSeries>| {
            snappy(&WriteRequest {
                timeseries: series,
                ..Default::default()
            })
        };
        let many: Vec<(String, String)> =
            (0..31).map(|i| (format!("l{i:02}"), "v".into())).collect();
        let mut many_refs: Vec<(&str, &str)> = vec![("__name__", "m")];
        many_refs.extend(many.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        let long = "x".repeat(2049);
        let truncated = {
            let mut b = WriteRequest {
                timeseries: vec![good.clone()],
                ..Default::default()
            }
            .encode_to_vec();
            b.truncate(b.len() - 4);
            snap::raw::Encoder::new().compress_vec(&b).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>, u16, String)> = vec![
            (
                "empty body",
                vec![],
                400,
                "empty request body: expected a snappy-compressed remote-write WriteRequest".into(),
            ),
            (
                "non-snappy body",
                b"hello, this is not snappy".to_vec(),
                400,
                "decompressing snappy request body: snappy: corrupt input (expected valid offset but got offset 876; dst position: 0)".into(),
            ),
            (
                "truncated protobuf",
                truncated,
                400,
                "parsing remote-write WriteRequest: malformed or truncated TimeSeries at byte offset 1".into(),
            ),
            (
                "oversize body",
                vec![0u8; 5000],
                413,
                "request body of 5000 bytes exceeds the limit of 4096 bytes (distributor.max_recv_msg_size)".into(),
            ),
            (
                "unsorted labels",
                req(vec![ts(&[("__name__", "up"), ("job", "a"), ("instance", "b")], &[(t, 1.0)])]),
                400,
                r#"received a series whose label names are not sorted ("instance" after "job"): series {__name__="up", job="a", instance="b"}"#.into(),
            ),
            (
                "duplicate labels",
                req(vec![ts(&[("__name__", "up"), ("job", "a"), ("job", "b")], &[(t, 1.0)])]),
                400,
                r#"received a series with duplicate label name "job": series {__name__="up", job="a", job="b"}"#.into(),
            ),
            (
                "empty metric name",
                req(vec![ts(&[("__name__", ""), ("job", "a")], &[(t, 1.0)])]),
                400,
                r#"received a series without a metric name: series {__name__="", job="a"}"#.into(),
            ),
            (
                "invalid metric name",
                req(vec![ts(&[("__name__", "1up")], &[(t, 1.0)])]),
                400,
                r#"received a series with an invalid metric name "1up": series {__name__="1up"}"#.into(),
            ),
            (
                "invalid label name",
                req(vec![ts(&[("__name__", "up"), ("a-b", "c")], &[(t, 1.0)])]),
                400,
                r#"received a series with an invalid label name "a-b": series {__name__="up", a-b="c"}"#.into(),
            ),
            (
                "too many labels",
                req(vec![ts(&many_refs, &[(t, 1.0)])]),
                400,
                format!(
                    "received a series whose number of labels (32) exceeds the limit of 30 (limits.max_label_names_per_series): series {}",
                    series_text(&many_refs.iter().map(|&(name, value)| LabelRef { name, value }).collect::<Vec<_>>())
                ),
            ),
            (
                "too-long value",
                req(vec![ts(&[("__name__", "up"), ("v", &long)], &[(t, 1.0)])]),
                400,
                format!(
                    "received a series whose label value length (2049) exceeds the limit of 2048 characters (limits.max_label_value_length), label \"v\": series {}",
                    series_text(&[LabelRef { name: "__name__", value: "up" }, LabelRef { name: "v", value: &long }])
                ),
            ),
            (
                "future timestamp",
                req(vec![ts(&[("__name__", "up")], &[(t + 3_600_000, 1.0)])]),
                400,
                format!(
                    "received a sample whose timestamp {} is more than 10m in the future (limits.creation_grace_period): series {{__name__=\"up\"}}",
                    t + 3_600_000
                ),
            ),
        ];
        for (name, body, status, message) in cases {
            let r = d.push(None, None, None, &body).await;
            assert_eq!(r.status, status, "{name}: {}", r.message);
            assert_eq!(r.message, message, "{name}");
        }
        assert_eq!(fakes[0].samples(), 0, "nothing invalid may be stored");
        let r = d.push(None, None, Some("br"), b"x").await;
        assert_eq!(r.status, 415);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_tenant_is_401_when_multitenancy_is_enabled() {
        let cfg = Config {
            multitenancy_enabled: true,
            ..Default::default()
        };
        let (d, fakes) = setup(&cfg, 1);
        let body = snappy(&WriteRequest {
            timeseries: vec![ts(&[("__name__", "up")], &[(now(), 1.0)])],
            ..Default::default()
        });
        let r = d.push(None, None, None, &body).await;
        assert_eq!(
            r,
            PushResult::err(401, "no org id: the X-Scope-OrgID header is required")
        );
        assert_eq!(d.push(Some("../etc"), None, None, &body).await.status, 400);
        assert_eq!(d.push(Some("team-a"), None, None, &body).await.status, 200);
        assert_eq!(fakes[0].got.lock().unwrap()[0].0, "team-a");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn valid_series_of_a_partly_invalid_request_are_stored() {
        let (d, fakes) = setup(&Config::default(), 1);
        let t = now();
        let body = snappy(&WriteRequest {
            timeseries: vec![
                ts(
                    &[("__name__", "ok1"), ("empty", "")],
                    &[(t, 1.0), (t + 1, 2.0)],
                ),
                ts(&[("job", "no-name")], &[(t, 1.0)]),
                ts(&[("__name__", "ok2")], &[(t, 3.0), (t + 86_400_000, 9.0)]),
            ],
            ..Default::default()
        });
        let r = d.push(None, None, None, &body).await;
        assert_eq!(r.status, 400);
        assert!(r.message.contains("without a metric name"), "{}", r.message);
        let got = fakes[0].got.lock().unwrap();
        let series = &got[0].1;
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0].0,
            vec![("__name__".to_string(), "ok1".to_string())]
        );
        assert_eq!(series[0].1.len(), 2);
        assert_eq!(series[1].1, vec![(t, 3.0)]);
        assert_eq!(got[0].0, ANONYMOUS);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metadata_goes_to_the_replicas_of_its_metric_and_invalid_metadata_is_400() {
        let mut cfg = Config::default();
        cfg.limits.max_metadata_length = 40;
        let (d, fakes) = setup(&cfg, 5);
        let md = |name: &str, help: &str| MetricMetadata {
            r#type: 1,
            metric_family_name: name.into(),
            help: help.into(),
            unit: String::new(),
        };
        let names: Vec<String> = (0..20).map(|i| format!("metric_{i}_total")).collect();
        // Metadata only, as Prometheus sends it.
        let body = snappy(&WriteRequest {
            metadata: names.iter().map(|n| md(n, "Things.")).collect(),
            ..Default::default()
        });
        let r = d.push(Some("t"), None, None, &body).await;
        assert_eq!(r.status, 200, "{}", r.message);
        for n in &names {
            let holders = fakes
                .iter()
                .filter(|f| {
                    f.metadata
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|m| &m.metric_family_name == n)
                })
                .count();
            assert_eq!(holders, 3, "{n} on RF ingesters");
        }
        assert!(
            fakes.iter().all(|f| f.payloads.lock().unwrap().is_empty()),
            "no series payload for a metadata-only request"
        );
        // An invalid entry is refused and named; the valid one still goes through.
        let body = snappy(&WriteRequest {
            metadata: vec![
                md("good_total", "Fine."),
                md("bad_total", &"x".repeat(41)),
                md("", "No name."),
            ],
            ..Default::default()
        });
        let r = d.push(None, None, None, &body).await;
        assert_eq!(r.status, 400);
        assert!(
            r.message
                .contains("help of 41 characters exceeds the limit of 40")
                && r.message.contains("bad_total"),
            "{}",
            r.message
        );
        let stored: usize = fakes
            .iter()
            .map(|f| {
                f.metadata
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|m| m.metric_family_name == "good_total")
                    .count()
            })
            .sum();
        assert_eq!(stored, 3);
        let text = d.metrics.render();
        assert!(
            text.contains(
                "rimir_discarded_metadata_total{user=\"anonymous\",reason=\"help_too_long\"} 1"
            ) && text.contains("reason=\"missing_metric_name\"} 1"),
            "{text}"
        );
        // With too few ingesters up for a quorum, metadata is not acknowledged either.
        for f in &fakes {
            f.down.store(true, Ordering::SeqCst);
        }
        let r = d
            .push(
                None,
                None,
                None,
                &snappy(&WriteRequest {
                    metadata: vec![md("late_total", "Late.")],
                    ..Default::default()
                }),
            )
            .await;
        assert_eq!(r.status, 500, "{}", r.message);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gzip_and_zstd_bodies_are_accepted() {
        let (d, fakes) = setup(&Config::default(), 1);
        let raw = WriteRequest {
            timeseries: vec![ts(&[("__name__", "up")], &[(now(), 1.0)])],
            ..Default::default()
        }
        .encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::stream::encode_all(raw.as_slice(), 3).unwrap();
        assert_eq!(d.push(None, None, Some("gzip"), &gz).await.status, 200);
        assert_eq!(d.push(None, None, Some("zstd"), &zs).await.status, 200);
        assert_eq!(
            d.push(None, None, Some("gzip"), b"not gzip").await.status,
            400
        );
        assert_eq!(fakes[0].samples(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ingestion_rate_limit_rejects_whole_request_with_429() {
        let mut cfg = Config::default();
        cfg.limits.ingestion_rate = 1.0;
        cfg.limits.ingestion_burst_size = 10;
        let (d, fakes) = setup(&cfg, 1);
        let t = now();
        let samples: Vec<(i64, f64)> = (0..8).map(|i| (t - 100 + i, 1.0)).collect();
        let body = snappy(&WriteRequest {
            timeseries: vec![ts(&[("__name__", "up")], &samples)],
            ..Default::default()
        });
        assert_eq!(d.push(None, None, None, &body).await.status, 200);
        let r = d.push(None, None, None, &body).await;
        assert_eq!(r.status, 429);
        assert!(
            r.message
                .contains("ingestion rate limit of 1 samples/s with a burst of 10"),
            "{}",
            r.message
        );
        assert_eq!(fakes[0].samples(), 8);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn quorum_of_three_tolerates_one_down_but_not_two() {
        let (d, fakes) = setup(&Config::default(), 3);
        let t = now();
        let body = |i: i64| {
            snappy(&WriteRequest {
                timeseries: (0..20)
                    .map(|s| ts(&[("__name__", "m"), ("s", &s.to_string())], &[(t + i, 1.0)]))
                    .collect(),
                ..Default::default()
            })
        };
        assert_eq!(d.push(None, None, None, &body(0)).await.status, 200);
        assert_eq!(fakes.iter().map(|f| f.samples()).sum::<usize>(), 60);
        fakes[1].down.store(true, Ordering::SeqCst);
        assert_eq!(d.push(None, None, None, &body(1)).await.status, 200);
        fakes[2].down.store(true, Ordering::SeqCst);
        let r = d.push(None, None, None, &body(2)).await;
        assert_eq!(r.status, 500, "{}", r.message);
        assert!(
            r.message
                .contains("quorum not reached (1 of 3 replicas acknowledged, 2 needed)"),
            "{}",
            r.message
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn quorum_answers_without_waiting_for_a_slow_replica() {
        let (d, fakes) = setup(&Config::default(), 3);
        fakes[2].slow.store(true, Ordering::SeqCst);
        let body = snappy(&WriteRequest {
            timeseries: vec![ts(&[("__name__", "m")], &[(now(), 1.0)])],
            ..Default::default()
        });
        let start = Instant::now();
        let r = d.push(None, None, None, &body).await;
        assert_eq!(r.status, 200, "{}", r.message);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// An ingester that only answers `Info`.
    struct Named(&'static str);

    #[tonic::async_trait]
    impl IngesterService for Named {
        async fn push(&self, _: PushRequest) -> Result<PushResponse, tonic::Status> {
            Err(tonic::Status::unimplemented("push"))
        }
        async fn query_stream(
            &self,
            _: QueryRequest,
        ) -> Result<Vec<QueryStreamResponse>, tonic::Status> {
            Ok(vec![])
        }
        async fn label_names(&self, _: LabelRequest) -> Result<LabelResponse, tonic::Status> {
            Ok(LabelResponse::default())
        }
        async fn label_values(&self, _: LabelRequest) -> Result<LabelResponse, tonic::Status> {
            Ok(LabelResponse::default())
        }
        async fn info(&self) -> Result<InfoResponse, tonic::Status> {
            Ok(InfoResponse {
                id: self.0.into(),
                zone: "zone-b".into(),
                ready: true,
            })
        }
        async fn metrics_metadata(
            &self,
            _: MetadataRequest,
        ) -> Result<MetadataResponse, tonic::Status> {
            Ok(MetadataResponse::default())
        }
        async fn ha_elect(
            &self,
            _: rimir_core::grpc::HaElectRequest,
        ) -> Result<rimir_core::grpc::HaElectResponse, tonic::Status> {
            Err(tonic::Status::unimplemented("ha_elect"))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_members_are_resolved_and_named_by_their_info() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rimir_core::grpc::IngesterServer::new(Arc::new(Named("ingester-7")), 1 << 20);
        let h = tokio::spawn(server.serve(
            listener,
            Box::pin(async {
                let _ = rx.await;
            }),
        ));
        let mut cfg = Config::default();
        cfg.ingester.ring.join_members = vec![format!("dns+localhost:{port}")];
        cfg.ingester.ring.instances = vec![rimir_core::config::RingInstance {
            id: "static-0".into(),
            addr: "127.0.0.1:1".into(),
            zone: String::new(),
        }];
        let pool = IngesterPool::new(&cfg);
        pool.refresh(&cfg).await;
        let ring = pool.ring();
        let ids: Vec<(&str, &str)> = ring
            .instances()
            .iter()
            .map(|i| (i.id.as_str(), i.zone.as_str()))
            .collect();
        assert_eq!(ids, vec![("ingester-7", "zone-b"), ("static-0", "")]);
        assert_eq!(ring.instances()[0].addr, format!("127.0.0.1:{port}"));
        // Once the member stops answering, it keeps its identity from the previous ring.
        let _ = tx.send(());
        h.await.unwrap().unwrap();
        pool.refresh(&cfg).await;
        assert_eq!(pool.ring().instances().len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn per_tenant_overrides_apply_only_to_that_tenant() {
        let mut cfg = Config::from_yaml(
            "multitenancy_enabled: true\noverrides:\n  small: {max_label_names_per_series: 1}\n",
            "t",
        )
        .unwrap();
        cfg.limits.ingestion_rate = 1e9;
        let (d, _) = setup(&cfg, 1);
        let body = snappy(&WriteRequest {
            timeseries: vec![ts(&[("__name__", "up"), ("job", "x")], &[(now(), 1.0)])],
            ..Default::default()
        });
        assert_eq!(d.push(Some("big"), None, None, &body).await.status, 200);
        let r = d.push(Some("small"), None, None, &body).await;
        assert_eq!(r.status, 400);
        assert!(r.message.contains("limit of 1"), "{}", r.message);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_unstored_is_acknowledged() {
        use rimir_core::remote_write::{Exemplar, HistogramSample};
        let cfg = Config::default();
        let (d, fakes) = setup(&cfg, 1);
        let t = now();
        let stored = |fakes: &[Arc<Fake>]| fakes.iter().map(|f| f.samples()).sum::<usize>();
        let body = |series: Vec<TimeSeries>| {
            snappy(&WriteRequest {
                timeseries: series,
                ..Default::default()
            })
        };
        let plain = body(vec![ts(&[("__name__", "up")], &[(t, 1.0)])]);

        // Remote-write 2.0 by Content-Type: 415, nothing stored.
        let v2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
        let r = d.push(None, Some(v2), None, &plain).await;
        assert_eq!(r.status, 415, "{}", r.message);
        assert!(r.message.contains("remote-write 2.0"), "{}", r.message);
        // Not protobuf, or an unknown message: 415 naming it.
        let r = d.push(None, Some("application/json"), None, &plain).await;
        assert_eq!(
            (r.status, r.message.contains("application/json")),
            (415, true)
        );
        let r = d
            .push(
                None,
                Some("application/x-protobuf; proto=acme.Push"),
                None,
                &plain,
            )
            .await;
        assert_eq!((r.status, r.message.contains("acme.Push")), (415, true));
        assert_eq!(stored(&fakes), 0);
        // The 1.0 spellings are accepted.
        for ct in [
            "application/x-protobuf",
            "application/x-protobuf;proto=prometheus.WriteRequest",
        ] {
            let r = d.push(None, Some(ct), None, &plain).await;
            assert_eq!(r, PushResult::ok(), "{ct}");
        }
        assert_eq!(stored(&fakes), 2);

        // A 2.0 body sent as 1.0 (symbols = 4, timeseries = 5) decodes to no series: refused.
        let mut v2_body = Vec::new();
        for (field, payload) in [
            (4u8, &b"__name__"[..]),
            (4, &b"up"[..]),
            (5, &b"\x0a\x02\x00\x01"[..]),
        ] {
            v2_body.push(field << 3 | 2);
            v2_body.push(payload.len() as u8);
            v2_body.extend_from_slice(payload);
        }
        let r = d
            .push(
                None,
                None,
                None,
                &snap::raw::Encoder::new().compress_vec(&v2_body).unwrap(),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.message);
        assert!(
            r.message.contains("3 fields of a remote-write 2.0 request"),
            "{}",
            r.message
        );

        // A histogram-only series: 400 naming it, counted, nothing stored.
        let mut hist = ts(&[("__name__", "rpc_seconds"), ("job", "api")], &[]);
        hist.histograms = vec![
            HistogramSample {
                count_int: 4,
                sum: 1.5,
                schema: 3,
                timestamp: t,
            };
            2
        ];
        let r = d.push(None, None, None, &body(vec![hist])).await;
        assert_eq!(r.status, 400, "{}", r.message);
        assert!(
            r.message
                .contains("2 native histogram samples in 1 series were not stored")
                && r.message.contains(r#"{__name__="rpc_seconds", job="api"}"#),
            "{}",
            r.message
        );
        assert_eq!(stored(&fakes), 2);

        // Floats with exemplars: the floats are stored, the exemplars refused by name.
        let mut ex = ts(&[("__name__", "req_total")], &[(t, 7.0)]);
        ex.exemplars = vec![Exemplar {
            labels: vec![Label {
                name: "trace_id".into(),
                value: "abc".into(),
            }],
            value: 1.0,
            timestamp: t,
        }];
        let r = d.push(None, None, None, &body(vec![ex])).await;
        assert_eq!(r.status, 400, "{}", r.message);
        assert!(
            r.message.contains("1 exemplars in 1 series"),
            "{}",
            r.message
        );
        assert_eq!(
            stored(&fakes),
            3,
            "the float sample beside the exemplar is stored"
        );

        let text = d.metrics.render();
        assert!(
            text.contains(
                "rimir_discarded_samples_total{user=\"anonymous\",reason=\"native_histograms_unsupported\"} 2"
            ) && text.contains(
                "rimir_discarded_exemplars_total{user=\"anonymous\",reason=\"exemplars_unsupported\"} 1"
            ),
            "{text}"
        );
    }
}
