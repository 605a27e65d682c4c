//! The ingester ring: each ingester owns tokens derived from its name, so every distributor
//! computes the same ring with no coordination; a series goes to the `replication_factor`
//! instances found clockwise from its token (in distinct zones when zone-aware), and a write
//! succeeds when a quorum of them acknowledged it.

use std::collections::BTreeSet;

use crate::remote_write::LabelRef;

/// Tokens each ingester owns on the ring.
pub const TOKENS_PER_INSTANCE: u32 = 128;

/// One ingester.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    /// Stable name (StatefulSet pod name); its tokens derive from it.
    pub id: String,
    /// gRPC address `host:port`.
    pub addr: String,
    /// Availability zone (empty: none).
    pub zone: String,
}

/// A ring built from a set of instances.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    instances: Vec<Instance>,
    /// (token, index into `instances`), sorted by token.
    tokens: Vec<(u32, usize)>,
    replication_factor: usize,
    zone_aware: bool,
    zones: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Folds a 64-bit hash to a well-mixed 32-bit ring position.
fn fold(mut h: u64) -> u32 {
    // splitmix64 finaliser: FNV's low bits are poorly distributed for short keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h ^ (h >> 32)) as u32
}

/// The token of token number `i` of instance `id`.
pub fn instance_token(id: &str, i: u32) -> u32 {
    let h = fnv(FNV_OFFSET, id.as_bytes());
    fold(fnv(h, &i.to_be_bytes()))
}

/// The ring position of a tenant's series; `labels` sorted by name. The same FNV-1a framing as
/// [`rimir_tsdb::labels::Labels::stable_hash`], seeded with the tenant.
pub fn shard_token(tenant: &str, labels: &[LabelRef<'_>]) -> u32 {
    let mut h = fnv(FNV_OFFSET, tenant.as_bytes());
    h = fnv(h, &[0xff]);
    for l in labels {
        h = fnv(h, l.name.as_bytes());
        h = fnv(h, &[0xff]);
        h = fnv(h, l.value.as_bytes());
        h = fnv(h, &[0xff]);
    }
    fold(h)
}

/// The token of a tenant's HA cluster: the ingester owning it holds the cluster's election.
pub fn ha_token(tenant: &str, cluster: &str) -> u32 {
    let mut h = fnv(FNV_OFFSET, tenant.as_bytes());
    h = fnv(h, &[0xfe]);
    h = fnv(h, cluster.as_bytes());
    fold(h)
}

impl Ring {
    /// Builds the ring; duplicate ids keep the first instance.
    pub fn new(mut instances: Vec<Instance>, replication_factor: usize, zone_aware: bool) -> Self {
        instances.sort();
        let mut seen = BTreeSet::new();
        instances.retain(|i| seen.insert(i.id.clone()));
        let mut tokens = Vec::with_capacity(instances.len() * TOKENS_PER_INSTANCE as usize);
        for (idx, inst) in instances.iter().enumerate() {
            for t in 0..TOKENS_PER_INSTANCE {
                tokens.push((instance_token(&inst.id, t), idx));
            }
        }
        tokens.sort_unstable();
        let zones = instances
            .iter()
            .map(|i| i.zone.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        Self {
            instances,
            tokens,
            replication_factor: replication_factor.max(1),
            zone_aware,
            zones,
        }
    }

    /// The instances, sorted by id.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// How many copies each series gets: the configured factor, capped by the instances (or
    /// zones, when zone-aware) that exist.
    pub fn replication_factor(&self) -> usize {
        let cap = if self.zone_aware {
            self.zones
        } else {
            self.instances.len()
        };
        self.replication_factor.min(cap)
    }

    /// Acknowledgements a write needs: a majority of the replication factor.
    pub fn quorum(&self) -> usize {
        self.replication_factor() / 2 + 1
    }

    /// Writes into `out` the indices (into [`Ring::instances`]) of the replicas of `token`.
    pub fn replicas(&self, token: u32, out: &mut Vec<usize>) {
        out.clear();
        let rf = self.replication_factor();
        if rf == 0 {
            return;
        }
        let start = self.tokens.partition_point(|&(t, _)| t < token);
        let (after, before) = (&self.tokens[start..], &self.tokens[..start]);
        for &(_, idx) in after.iter().chain(before) {
            if out.contains(&idx) {
                continue;
            }
            if self.zone_aware {
                let zone = self.instances[idx].zone.as_str();
                if out.iter().any(|&o| self.instances[o].zone == zone) {
                    continue;
                }
            }
            out.push(idx);
            if out.len() == rf {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn inst(id: &str, zone: &str) -> Instance {
        Instance {
            id: id.into(),
            addr: format!("{id}:9095"),
            zone: zone.into(),
        }
    }

    fn labels(i: usize) -> Vec<(String, String)> {
        vec![("__name__".into(), "m".into()), ("i".into(), i.to_string())]
    }

    fn token(i: usize) -> u32 {
        let l = labels(i);
        let refs: Vec<LabelRef<'_>> = l
            .iter()
            .map(|(n, v)| LabelRef { name: n, value: v })
            .collect();
        shard_token("t", &refs)
    }

    #[test]
    fn every_distributor_computes_the_same_replicas_regardless_of_listing_order() {
        let a = Ring::new(
            vec![inst("i-0", ""), inst("i-1", ""), inst("i-2", "")],
            3,
            false,
        );
        let b = Ring::new(
            vec![inst("i-2", ""), inst("i-0", ""), inst("i-1", "")],
            3,
            false,
        );
        let (mut ra, mut rb) = (vec![], vec![]);
        for i in 0..200 {
            a.replicas(token(i), &mut ra);
            b.replicas(token(i), &mut rb);
            assert_eq!(ra, rb);
            assert_eq!(ra.len(), 3);
        }
    }

    #[test]
    fn replicas_are_distinct_and_load_is_spread() {
        let ids: Vec<Instance> = (0..6).map(|i| inst(&format!("ingester-{i}"), "")).collect();
        let ring = Ring::new(ids, 3, false);
        let mut counts: HashMap<usize, usize> = HashMap::new();
        let mut r = vec![];
        for i in 0..6000 {
            ring.replicas(token(i), &mut r);
            let set: BTreeSet<_> = r.iter().collect();
            assert_eq!(set.len(), 3);
            for &x in &r {
                *counts.entry(x).or_default() += 1;
            }
        }
        // Each of 6 instances should hold about half of 6000 series; allow ±25 %.
        for (&i, &c) in &counts {
            assert!((2250..=3750).contains(&c), "instance {i} holds {c}");
        }
    }

    #[test]
    fn zone_aware_placement_puts_each_copy_in_its_own_zone() {
        let ids = vec![
            inst("a-0", "a"),
            inst("a-1", "a"),
            inst("b-0", "b"),
            inst("b-1", "b"),
            inst("c-0", "c"),
            inst("c-1", "c"),
        ];
        let ring = Ring::new(ids, 3, true);
        let mut r = vec![];
        for i in 0..500 {
            ring.replicas(token(i), &mut r);
            let zones: BTreeSet<_> = r
                .iter()
                .map(|&x| ring.instances()[x].zone.clone())
                .collect();
            assert_eq!(zones.len(), 3, "series {i} replicas {r:?}");
        }
    }

    #[test]
    fn replication_is_capped_by_instances_and_quorum_is_a_majority() {
        let one = Ring::new(vec![inst("solo", "")], 3, false);
        assert_eq!(one.replication_factor(), 1);
        assert_eq!(one.quorum(), 1);
        let three = Ring::new(vec![inst("a", ""), inst("b", ""), inst("c", "")], 3, false);
        assert_eq!(three.quorum(), 2);
        let empty = Ring::new(vec![], 3, false);
        let mut r = vec![1];
        empty.replicas(5, &mut r);
        assert!(r.is_empty());
    }

    #[test]
    fn removing_an_instance_moves_only_its_series() {
        let full = Ring::new(
            (0..4).map(|i| inst(&format!("i{i}"), "")).collect(),
            1,
            false,
        );
        let less = Ring::new(
            (0..3).map(|i| inst(&format!("i{i}"), "")).collect(),
            1,
            false,
        );
        let (mut a, mut b) = (vec![], vec![]);
        for i in 0..1000 {
            full.replicas(token(i), &mut a);
            less.replicas(token(i), &mut b);
            let ida = &full.instances()[a[0]].id;
            if ida != "i3" {
                assert_eq!(ida, &less.instances()[b[0]].id);
            }
        }
    }
}
