//! The rendered `rimir.yaml`: Mimir-named keys built from the spec, with the user's
//! `structuredConfig` deep-merged on top.

use serde_json::{Map, Value, json};

use crate::aws::{Partition, s3_endpoint};
use crate::crd::{Codec, MimirCluster};
use crate::workloads::{GRPC_PORT, HTTP_PORT, Names};

/// Where each pod mounts its data volume.
pub const DATA_DIR: &str = "/data";

/// The config the operator would write without any `structuredConfig`.
pub fn default_config(mc: &MimirCluster, names: &Names) -> Value {
    let spec = &mc.spec;
    let partition = Partition::from_region(&spec.aws.region);
    let endpoint = spec
        .storage
        .endpoint
        .clone()
        .unwrap_or_else(|| s3_endpoint(&spec.aws.region, partition));
    let replication_factor = spec.ingester.replicas.clamp(1, 3);
    let mut limits = Map::new();
    limits.insert(
        "compactor_blocks_retention_period".into(),
        Value::String(spec.storage.retention.clone()),
    );
    let l = &spec.limits;
    if let Some(v) = l.ingestion_rate {
        limits.insert("ingestion_rate".into(), json!(v));
    }
    if let Some(v) = l.ingestion_burst_size {
        limits.insert("ingestion_burst_size".into(), json!(v));
    }
    if let Some(v) = l.max_global_series_per_user {
        limits.insert("max_global_series_per_user".into(), json!(v));
    }
    if let Some(v) = l.max_label_names_per_series {
        limits.insert("max_label_names_per_series".into(), json!(v));
    }
    if let Some(v) = l.max_label_value_length {
        limits.insert("max_label_value_length".into(), json!(v));
    }
    json!({
        "multitenancy_enabled": false,
        "server": {
            "http_listen_port": HTTP_PORT,
            "grpc_listen_port": GRPC_PORT,
        },
        "blocks_storage": {
            "backend": "s3",
            "s3": {
                "bucket_name": spec.storage.bucket_name,
                "region": spec.aws.region,
                "endpoint": endpoint,
            },
            "tsdb": { "dir": format!("{DATA_DIR}/tsdb") },
        },
        "compactor": { "data_dir": format!("{DATA_DIR}/compactor") },
        "ingester": { "ring": { "replication_factor": replication_factor } },
        "memberlist": {
            "join_members": [format!("dns+{}:{GRPC_PORT}", names.headless_fqdn("ingester"))],
        },
        "compression": { "hot": codec(spec.compression.hot), "cold": codec(spec.compression.cold) },
        "limits": limits,
    })
}

fn codec(c: Codec) -> &'static str {
    match c {
        Codec::Snappy => "snappy",
        Codec::Gzip => "gzip",
        Codec::None => "none",
    }
}

/// The final config: defaults with `structuredConfig` merged over them.
pub fn config(mc: &MimirCluster, names: &Names) -> Value {
    let mut base = default_config(mc, names);
    if let Some(overlay) = &mc.spec.structured_config {
        deep_merge(&mut base, overlay);
    }
    base
}

/// The config as the YAML text stored in the ConfigMap (keys sorted, so stable for hashing).
pub fn config_yaml(mc: &MimirCluster, names: &Names) -> String {
    // A serde_json::Value always serializes to YAML.
    serde_yaml::to_string(&config(mc, names)).unwrap_or_default()
}

/// Merges `overlay` into `base`: objects merge key by key, anything else replaces.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::sample;

    #[test]
    fn rendered_config_uses_mimir_keys_for_the_bucket_and_ring() {
        let mc = sample();
        let names = Names::of(&mc);
        let c = config(&mc, &names);
        assert_eq!(c["blocks_storage"]["backend"], "s3");
        assert_eq!(c["blocks_storage"]["s3"]["bucket_name"], "acme-metrics");
        assert_eq!(c["blocks_storage"]["s3"]["region"], "eu-west-3");
        assert_eq!(
            c["blocks_storage"]["s3"]["endpoint"],
            "s3.eu-west-3.amazonaws.com"
        );
        assert_eq!(c["ingester"]["ring"]["replication_factor"], 3);
        assert_eq!(c["compactor"]["data_dir"], "/data/compactor");
        assert_eq!(c["compression"], json!({"hot": "snappy", "cold": "gzip"}));
        assert_eq!(c["limits"]["compactor_blocks_retention_period"], "400d");
        assert_eq!(
            c["memberlist"]["join_members"][0],
            "dns+prod-ingester-headless.monitoring.svc.cluster.local:9095"
        );
    }

    #[test]
    fn structured_config_is_deep_merged_over_defaults() {
        let mut mc = sample();
        mc.spec.structured_config = Some(json!({
            "blocks_storage": {"s3": {"endpoint": "minio:9000"}, "tsdb": {"retention_period": "24h"}},
            "limits": {"max_global_series_per_user": 5},
            "multitenancy_enabled": true,
        }));
        let names = Names::of(&mc);
        let c = config(&mc, &names);
        assert_eq!(c["blocks_storage"]["s3"]["endpoint"], "minio:9000");
        assert_eq!(
            c["blocks_storage"]["s3"]["bucket_name"], "acme-metrics",
            "siblings survive"
        );
        assert_eq!(c["blocks_storage"]["tsdb"]["retention_period"], "24h");
        assert_eq!(c["blocks_storage"]["tsdb"]["dir"], "/data/tsdb");
        assert_eq!(c["limits"]["max_global_series_per_user"], 5);
        assert_eq!(c["limits"]["compactor_blocks_retention_period"], "400d");
        assert_eq!(c["multitenancy_enabled"], true);
        let yaml = config_yaml(&mc, &names);
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn small_ingester_counts_lower_the_replication_factor() {
        let mut mc = sample();
        mc.spec.ingester.replicas = 1;
        assert_eq!(
            config(&mc, &Names::of(&mc))["ingester"]["ring"]["replication_factor"],
            1
        );
    }
}
