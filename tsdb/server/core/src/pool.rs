//! The ingesters a distributor writes to and a querier reads from: the ring and one gRPC
//! client per instance, refreshed from `join_members`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::Config;
use crate::grpc::{IngesterClient, IngesterService};
use crate::ring::{Instance, Ring};

/// The ingesters a distributor writes to: the current ring and a client per instance.
pub struct IngesterPool {
    ring: RwLock<Arc<Ring>>,
    clients: Mutex<HashMap<String, Arc<dyn IngesterService>>>,
    timeout: Duration,
    max_message_size: usize,
    replication_factor: usize,
    zone_aware: bool,
}

impl IngesterPool {
    /// A pool for the configured ring (static instances; `join_members` are added by
    /// [`IngesterPool::refresh`]).
    pub fn new(cfg: &Config) -> Self {
        let r = &cfg.ingester.ring;
        let instances = r
            .instances
            .iter()
            .map(|i| Instance {
                id: i.id.clone(),
                addr: i.addr.clone(),
                zone: i.zone.clone(),
            })
            .collect();
        Self {
            ring: RwLock::new(Arc::new(Ring::new(
                instances,
                r.replication_factor,
                r.zone_awareness_enabled,
            ))),
            clients: Mutex::new(HashMap::new()),
            timeout: cfg.distributor.remote_timeout.0,
            max_message_size: cfg.distributor.max_recv_msg_size,
            replication_factor: r.replication_factor,
            zone_aware: r.zone_awareness_enabled,
        }
    }

    /// A pool of one in-process ingester (`--target=all`).
    pub fn local(id: &str, ingester: Arc<dyn IngesterService>, cfg: &Config) -> Self {
        let pool = Self::new(cfg);
        let addr = format!("local:{id}");
        pool.set_ring(vec![Instance {
            id: id.into(),
            addr: addr.clone(),
            zone: String::new(),
        }]);
        pool.lock_clients().insert(addr, ingester);
        pool
    }

    /// Uses `client` for the instance at `addr` instead of dialling it over gRPC: an
    /// in-process ingester, or a stand-in in tests.
    pub fn insert_client(&self, addr: impl Into<String>, client: Arc<dyn IngesterService>) {
        self.lock_clients().insert(addr.into(), client);
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn IngesterService>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the ring's members.
    pub fn set_ring(&self, instances: Vec<Instance>) {
        let ring = Ring::new(instances, self.replication_factor, self.zone_aware);
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    /// The client of the ingester at `addr`, created on first use and reused afterwards.
    pub fn client(&self, addr: &str) -> Result<Arc<dyn IngesterService>, tonic::Status> {
        let mut clients = self.lock_clients();
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c: Arc<dyn IngesterService> = Arc::new(IngesterClient::new(
            addr,
            self.timeout,
            self.max_message_size,
        )?);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Rebuilds the ring from the static instances plus every address `join_members` resolve
    /// to (`dns+host:port` resolves to one ingester per address; each is asked its name).
    /// Members that cannot be reached keep their previous identity.
    pub fn refresh<'a>(&'a self, cfg: &'a Config) -> crate::BoxFuture<'a, ()> {
        Box::pin(async move {
            let r = &cfg.ingester.ring;
            let mut instances: Vec<Instance> = r
                .instances
                .iter()
                .map(|i| Instance {
                    id: i.id.clone(),
                    addr: i.addr.clone(),
                    zone: i.zone.clone(),
                })
                .collect();
            let previous = self.ring();
            for member in &r.join_members {
                let (dns, hostport) = match member.strip_prefix("dns+") {
                    Some(h) => (true, h),
                    None => (false, member.as_str()),
                };
                let addrs: Vec<String> = if dns {
                    match tokio::net::lookup_host(hostport).await {
                        Ok(it) => it.map(|a| a.to_string()).collect(),
                        Err(e) => {
                            tracing::warn!(member, error = %e, "resolving ring member");
                            previous
                                .instances()
                                .iter()
                                .map(|i| i.addr.clone())
                                .collect()
                        }
                    }
                } else {
                    vec![hostport.to_string()]
                };
                for addr in addrs {
                    let known = previous
                        .instances()
                        .iter()
                        .find(|i| i.addr == addr)
                        .cloned();
                    let info = match self.client(&addr) {
                        Ok(c) => c.info().await.ok(),
                        Err(_) => None,
                    };
                    match (info, known) {
                        (Some(info), _) => instances.push(Instance {
                            id: info.id,
                            addr,
                            zone: info.zone,
                        }),
                        (None, Some(k)) => instances.push(k),
                        (None, None) => tracing::warn!(addr, "ring member did not answer Info"),
                    }
                }
            }
            self.set_ring(instances);
        })
    }
}
