//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection`
//! does it, so the operator can run with several replicas: only the holder of the lease
//! reconciles, the others wait and take over when it stops renewing.
//!
//! The holder renews `renewTime` every `retry_period`; a lease counts as expired when its
//! record has not changed for `lease_duration`, measured on this process' own clock from the
//! moment it saw the record change (never by comparing `renewTime` with the local clock, so
//! clock skew between nodes does not matter). Updates carry the `resourceVersion` they read,
//! so two candidates never both win: the loser gets a 409 Conflict and tries again later.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::{Error, Result};

/// How the election runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (`--leader-election-id`).
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal (15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership (10 s).
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew (2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks `lease_duration > renew_deadline > retry_period > 0`, as client-go requires.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("--leader-election-retry-period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(
                "--leader-election-renew-deadline must be longer than --leader-election-retry-period"
                    .into(),
            );
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(
                "--leader-election-lease-duration must be longer than --leader-election-renew-deadline"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What a candidate should do with the Lease it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Another replica holds a lease that has not expired.
    Wait {
        /// The holder.
        holder: String,
    },
    /// Write this spec (create the Lease, renew it, or take it over).
    Write(LeaseSpec),
}

/// Decides, from the Lease as read (`None`: it does not exist), whether `me` may write it, and
/// what. `expired` tells whether the current record has gone unchanged for the lease duration.
pub fn decide(current: Option<&LeaseSpec>, me: &str, expired: bool, cfg: &LeaseConfig) -> Decision {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let holder = current
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    match (current, holder) {
        (Some(spec), Some(h)) if h == me => Decision::Write(LeaseSpec {
            renew_time: Some(now),
            lease_duration_seconds: Some(seconds),
            ..spec.clone()
        }),
        (Some(_), Some(h)) if !expired => Decision::Wait { holder: h },
        (spec, _) => Decision::Write(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(spec.map_or(0, |s| {
                s.lease_transitions.unwrap_or(0)
                    + i32::from(s.holder_identity.as_deref().is_some_and(|h| !h.is_empty()))
            })),
            ..Default::default()
        }),
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The record last read and when it was first seen, to tell expiry by the local clock.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

fn kube_err<'a>(
    operation: &'static str,
    cfg: &'a LeaseConfig,
) -> impl Fn(kube::Error) -> Error + 'a {
    move |e| Error::Kube {
        operation,
        object: format!("Lease/{}/{}", cfg.namespace, cfg.name),
        source: Box::new(e),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// An elector for the Lease `cfg.namespace/cfg.name`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    /// The election's settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// One attempt to acquire or renew: `Ok(true)` when this replica holds the lease now,
    /// `Ok(false)` when another one does (or won a race for it).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(kube_err("get", &self.cfg))?;
        let spec = current.as_ref().and_then(|l| l.spec.clone());
        let changed = self.observed.as_ref().is_none_or(|(s, _)| *s != spec);
        if changed {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, seen)| seen.elapsed() >= self.cfg.lease_duration);
        let want = match decide(spec.as_ref(), &self.cfg.identity, expired, &self.cfg) {
            Decision::Wait { .. } => return Ok(false),
            Decision::Write(s) => s,
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(want.clone()),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Replace with the resourceVersion read: a concurrent writer makes this a 409.
                lease.spec = Some(want.clone());
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => {
                self.observed = Some((Some(want), Instant::now()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_err("update", &self.cfg)(e)),
        }
    }

    /// Waits until this replica holds the lease, trying every `retry_period`.
    pub async fn acquire(&mut self) {
        let mut logged_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {
                    let holder = self
                        .observed
                        .as_ref()
                        .and_then(|(s, _)| s.as_ref()?.holder_identity.clone());
                    if holder != logged_holder {
                        tracing::info!(lease = %self.cfg.name, holder = ?holder, "waiting for leadership");
                        logged_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the lease every `retry_period` for as long as this replica holds it; returns when
    /// it could not renew for `renew_deadline` or another replica took it, i.e. when
    /// leadership is lost.
    pub async fn keep(&mut self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.cfg.name, "another replica took the lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the lease"),
            }
            if last_renewed.elapsed() >= self.cfg.renew_deadline {
                tracing::error!(
                    lease = %self.cfg.name,
                    deadline = ?self.cfg.renew_deadline,
                    "could not renew the lease in time"
                );
                return;
            }
        }
    }

    /// Gives the lease up (holder cleared, duration 1 s) so another replica takes over at once
    /// instead of waiting for it to expire. Only when this replica still holds it.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(kube_err("get", &self.cfg))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(kube_err("release", &self.cfg)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            namespace: "rimir-system".into(),
            name: "rimir-operator".into(),
            identity: "pod-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created_for_me() {
        let Decision::Write(s) = decide(None, "pod-a", false, &cfg()) else {
            panic!("should write");
        };
        assert_eq!(s.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(s.lease_duration_seconds, Some(15));
        assert_eq!(s.lease_transitions, Some(0));
        assert!(s.acquire_time.is_some() && s.renew_time.is_some());
    }

    #[test]
    fn my_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let mine = held_by("pod-a", 3);
        let Decision::Write(s) = decide(Some(&mine), "pod-a", true, &cfg()) else {
            panic!("should renew");
        };
        assert_eq!(s.acquire_time, mine.acquire_time);
        assert_eq!(s.lease_transitions, Some(3));
        assert_ne!(s.renew_time, mine.renew_time);
    }

    #[test]
    fn another_holder_is_respected_until_its_lease_expires() {
        let theirs = held_by("pod-b", 1);
        assert_eq!(
            decide(Some(&theirs), "pod-a", false, &cfg()),
            Decision::Wait {
                holder: "pod-b".into()
            }
        );
        let Decision::Write(s) = decide(Some(&theirs), "pod-a", true, &cfg()) else {
            panic!("should take over");
        };
        assert_eq!(s.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(s.lease_transitions, Some(2));
        assert_ne!(s.acquire_time, theirs.acquire_time);
    }

    #[test]
    fn a_released_lease_is_taken_at_once_without_counting_a_transition() {
        let released = LeaseSpec {
            holder_identity: None,
            lease_transitions: Some(4),
            ..held_by("", 4)
        };
        let Decision::Write(s) = decide(Some(&released), "pod-a", false, &cfg()) else {
            panic!("should take it");
        };
        assert_eq!(s.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(s.lease_transitions, Some(4));
    }

    #[test]
    fn timings_must_nest_as_in_client_go() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.renew_deadline = Duration::from_secs(20);
        assert!(c.validate().unwrap_err().contains("lease-duration"));
        let mut c = cfg();
        c.retry_period = Duration::from_secs(10);
        assert!(c.validate().unwrap_err().contains("retry-period"));
    }
}
