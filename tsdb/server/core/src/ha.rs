//! HA deduplication's election: which replica of a Prometheus HA pair may write for a tenant's
//! cluster. Held by one ingester per (tenant, cluster) — the first instance of
//! [`crate::ring::ha_token`] on the ring — so that every distributor asks the same place and
//! they all agree, with no consensus store to run beside rimir.
//!
//! The rules are Mimir's: the first replica heard is elected; asking on behalf of the elected
//! replica records it as alive; a different replica is elected only once the elected one has
//! been silent for longer than the failover timeout. An election lives in memory: after the
//! holder restarts, the first replica to push again is elected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::grpc::{HaElectRequest, HaElectResponse};

/// Elections not refreshed for this long are forgotten (a cluster that stopped pushing).
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);

/// One cluster's election.
#[derive(Debug, Clone)]
struct Election {
    replica: String,
    last_seen: Instant,
}

/// The elections this ingester holds, by (tenant, cluster).
#[derive(Debug, Default)]
pub struct HaElections {
    elections: Mutex<HashMap<(String, String), Election>>,
}

/// What [`HaElections::elect`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The answer to send back.
    pub response: HaElectResponse,
    /// Whether the election moved from another replica to the asking one.
    pub changed: bool,
}

impl HaElections {
    /// An empty set of elections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides `req` at time `now`.
    pub fn elect(&self, req: &HaElectRequest, now: Instant) -> Outcome {
        let failover = Duration::from_millis(req.failover_timeout_ms);
        let mut all = self.elections.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, e| now.saturating_duration_since(e.last_seen) < FORGET_AFTER);
        let key = (req.tenant.clone(), req.cluster.clone());
        let mut changed = false;
        let e = all.entry(key).or_insert_with(|| Election {
            replica: req.replica.clone(),
            last_seen: now,
        });
        if e.replica == req.replica {
            e.last_seen = e.last_seen.max(now);
        } else if now.saturating_duration_since(e.last_seen) > failover {
            *e = Election {
                replica: req.replica.clone(),
                last_seen: now,
            };
            changed = true;
        }
        Outcome {
            response: HaElectResponse {
                elected: e.replica.clone(),
                last_seen_age_ms: now.saturating_duration_since(e.last_seen).as_millis() as u64,
            },
            changed,
        }
    }

    /// Number of clusters with an election.
    pub fn len(&self) -> usize {
        self.elections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether no cluster has an election.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(tenant: &str, cluster: &str, replica: &str) -> HaElectRequest {
        HaElectRequest {
            tenant: tenant.into(),
            cluster: cluster.into(),
            replica: replica.into(),
            failover_timeout_ms: 30_000,
        }
    }

    #[test]
    fn the_first_replica_heard_is_elected_and_keeps_it_while_alive() {
        let h = HaElections::new();
        let t0 = Instant::now();
        let o = h.elect(&ask("t", "prom", "a"), t0);
        assert_eq!((o.response.elected.as_str(), o.changed), ("a", false));
        // b asks within the failover timeout: a stays elected, a's age is reported.
        let o = h.elect(&ask("t", "prom", "b"), t0 + Duration::from_secs(10));
        assert_eq!(o.response.elected, "a");
        assert_eq!(o.response.last_seen_age_ms, 10_000);
        // a reports again at 25s, so b asking at 50s (25s of silence) does not take over.
        h.elect(&ask("t", "prom", "a"), t0 + Duration::from_secs(25));
        let o = h.elect(&ask("t", "prom", "b"), t0 + Duration::from_secs(50));
        assert_eq!((o.response.elected.as_str(), o.changed), ("a", false));
    }

    #[test]
    fn another_replica_takes_over_after_the_failover_timeout() {
        let h = HaElections::new();
        let t0 = Instant::now();
        h.elect(&ask("t", "prom", "a"), t0);
        let o = h.elect(&ask("t", "prom", "b"), t0 + Duration::from_millis(30_001));
        assert_eq!((o.response.elected.as_str(), o.changed), ("b", true));
        assert_eq!(o.response.last_seen_age_ms, 0);
        // Now a is the one refused.
        let o = h.elect(&ask("t", "prom", "a"), t0 + Duration::from_secs(31));
        assert_eq!((o.response.elected.as_str(), o.changed), ("b", false));
    }

    #[test]
    fn tenants_and_clusters_have_separate_elections_and_old_ones_are_forgotten() {
        let h = HaElections::new();
        let t0 = Instant::now();
        h.elect(&ask("t", "prom", "a"), t0);
        assert_eq!(h.elect(&ask("t", "other", "b"), t0).response.elected, "b");
        assert_eq!(h.elect(&ask("u", "prom", "b"), t0).response.elected, "b");
        assert_eq!(h.len(), 3);
        h.elect(&ask("t", "prom", "a"), t0 + FORGET_AFTER);
        assert_eq!(
            h.len(),
            1,
            "the clusters silent for {FORGET_AFTER:?} are forgotten"
        );
    }
}
