//! The distributor's side of HA deduplication: for a push from one replica of a Prometheus HA
//! pair, ask the ingester holding the cluster's election ([`rimir_core::ha`]) whether that
//! replica is the elected one, and cache the answer.
//!
//! A cached answer for the elected replica is trusted for `ha_tracker_update_timeout` (plus a
//! random jitter), after which the distributor asks again — which is also how the holder learns
//! the elected replica is alive. A cached answer refusing a replica is trusted until the elected
//! replica has been silent for `ha_tracker_failover_timeout`; then the distributor asks again,
//! and the holder may elect the asking replica. Since every distributor asks the same holder,
//! they agree; the worst a stale cache does is refuse a few seconds more.
//!
//! If the holder does not answer, the next instances on the ring for the same token are asked
//! (each holds its own election); if none answers, the push fails with a 5xx, so the sender
//! retries and nothing is acknowledged unstored.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rimir_core::config::HaTrackerConfig;
use rimir_core::grpc::{HaElectRequest, HaElectResponse};
use rimir_core::pool::IngesterPool;
use rimir_core::ring::ha_token;

/// Cached elections not used for this long are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);

/// The verdict on one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The replica is elected: store the push (without the replica label).
    Accept,
    /// Another replica is elected: answer 202 and store nothing.
    Dedupe {
        /// The elected replica.
        elected: String,
    },
}

/// One cluster's election as this distributor last heard it.
struct Cached {
    elected: String,
    /// When the holder was asked.
    fetched: Instant,
    /// When the elected replica was last reported, by the holder's account.
    seen: Instant,
    /// How long after `fetched` to ask again on behalf of the elected replica.
    refresh_after: Duration,
}

/// The distributor's HA tracker.
pub(crate) struct HaTracker {
    update_timeout: Duration,
    jitter_max: Duration,
    failover_timeout: Duration,
    /// By tenant, then cluster (nested so that a push looks its cluster up without allocating).
    cache: Mutex<HashMap<String, HashMap<String, Cached>>>,
    jitter_seed: std::collections::hash_map::RandomState,
}

impl HaTracker {
    /// The tracker of `cfg`, or `None` when `enable_ha_tracker` is off.
    pub(crate) fn new(cfg: &HaTrackerConfig) -> Option<Self> {
        cfg.enable_ha_tracker.then(|| Self {
            update_timeout: cfg.ha_tracker_update_timeout.0,
            jitter_max: cfg.ha_tracker_update_timeout_jitter_max.0,
            failover_timeout: cfg.ha_tracker_failover_timeout.0,
            cache: Mutex::new(HashMap::new()),
            jitter_seed: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Whether `replica` may write for `tenant`'s `cluster`; an error names the ingesters that
    /// could not be asked.
    pub(crate) async fn check(
        &self,
        pool: &IngesterPool,
        tenant: &str,
        cluster: &str,
        replica: &str,
    ) -> Result<Verdict, String> {
        let now = Instant::now();
        if let Some(c) = self.lock().get(tenant).and_then(|t| t.get(cluster)) {
            if c.elected == replica && now.duration_since(c.fetched) < c.refresh_after {
                return Ok(Verdict::Accept);
            }
            if c.elected != replica && now.duration_since(c.seen) <= self.failover_timeout {
                return Ok(Verdict::Dedupe {
                    elected: c.elected.clone(),
                });
            }
        }
        let r = self.ask(pool, tenant, cluster, replica).await?;
        let now = Instant::now();
        let seen = now
            .checked_sub(Duration::from_millis(r.last_seen_age_ms))
            .unwrap_or(now);
        let verdict = if r.elected == replica {
            Verdict::Accept
        } else {
            Verdict::Dedupe {
                elected: r.elected.clone(),
            }
        };
        let refresh_after = self.update_timeout + self.jitter(tenant, cluster, now);
        let mut cache = self.lock();
        for clusters in cache.values_mut() {
            clusters.retain(|_, c| now.duration_since(c.fetched) < FORGET_AFTER);
        }
        cache.retain(|_, clusters| !clusters.is_empty());
        cache.entry(tenant.to_string()).or_default().insert(
            cluster.to_string(),
            Cached {
                elected: r.elected,
                fetched: now,
                seen,
                refresh_after,
            },
        );
        Ok(verdict)
    }

    /// Asks the cluster's holder, then the next instances for the same token.
    async fn ask(
        &self,
        pool: &IngesterPool,
        tenant: &str,
        cluster: &str,
        replica: &str,
    ) -> Result<HaElectResponse, String> {
        let ring = pool.ring();
        let mut holders = Vec::new();
        ring.replicas(ha_token(tenant, cluster), &mut holders);
        if holders.is_empty() {
            return Err("HA tracker: no ingesters in the ring to hold the election".into());
        }
        let req = HaElectRequest {
            tenant: tenant.into(),
            cluster: cluster.into(),
            replica: replica.into(),
            failover_timeout_ms: self.failover_timeout.as_millis() as u64,
        };
        let mut failures = Vec::new();
        for i in holders {
            let inst = &ring.instances()[i];
            let answer = match pool.client(&inst.addr) {
                Ok(c) => c.ha_elect(req.clone()).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => return Ok(r),
                Err(e) => failures.push(format!("{} ({}): {}", inst.id, inst.addr, e.message())),
            }
        }
        Err(format!(
            "HA tracker: no ingester holding the election of cluster {cluster:?} answered: {}",
            failures.join("; ")
        ))
    }

    /// A random share of `jitter_max`, so that distributors do not refresh in step.
    fn jitter(&self, tenant: &str, cluster: &str, now: Instant) -> Duration {
        if self.jitter_max.is_zero() {
            return Duration::ZERO;
        }
        let h = self.jitter_seed.hash_one((tenant, cluster, now));
        self.jitter_max.mul_f64((h % 10_000) as f64 / 10_000.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Cached>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
