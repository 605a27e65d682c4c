//! Pure builders of every Kubernetes child of a MimirCluster: names, labels, owner references,
//! and one module per kind. Nothing here talks to a server.

pub mod config;
pub mod objects;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::MimirCluster;

/// HTTP port of every rimir process.
pub const HTTP_PORT: i32 = 8080;
/// gRPC port of every rimir process.
pub const GRPC_PORT: i32 = 9095;
/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "rimir-operator";
/// Pod-template annotation holding the hash of the config and role ARN.
pub const CONFIG_HASH_ANNOTATION: &str = "rimir.io/config-hash";
/// ServiceAccount annotation read by the EKS pod identity webhook.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// Label naming the MimirCluster a child belongs to (instead of ArgoCD's
/// `app.kubernetes.io/instance`, which would make ArgoCD prune our children).
pub const CLUSTER_LABEL: &str = "rimir.io/cluster";
/// The four components, in rollout order.
pub const COMPONENTS: [&str; 4] = ["distributor", "ingester", "compactor", "querier"];

/// Names of a cluster's children, all derived from the MimirCluster's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// MimirCluster name.
    pub cluster: String,
    /// Namespace of the MimirCluster and its children.
    pub namespace: String,
}

impl Names {
    /// Names for one MimirCluster.
    pub fn of(mc: &MimirCluster) -> Names {
        Names {
            cluster: mc.name_any(),
            namespace: mc.namespace().unwrap_or_else(|| "default".to_string()),
        }
    }
    /// `ConfigMap` holding `rimir.yaml`.
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    /// StatefulSet of a component.
    pub fn statefulset(&self, component: &str) -> String {
        format!("{}-{component}", self.cluster)
    }
    /// ClusterIP Service of a component (distributor: `/api/v1/push`, querier: `/prometheus`).
    pub fn service(&self, component: &str) -> String {
        format!("{}-{component}", self.cluster)
    }
    /// Headless Service governing a component's StatefulSet.
    pub fn headless_service(&self, component: &str) -> String {
        format!("{}-{component}-headless", self.cluster)
    }
    /// DNS name of a headless Service inside the cluster.
    pub fn headless_fqdn(&self, component: &str) -> String {
        format!(
            "{}.{}.svc.cluster.local",
            self.headless_service(component),
            self.namespace
        )
    }
    /// PodDisruptionBudget of the ingesters.
    pub fn ingester_pdb(&self) -> String {
        format!("{}-ingester", self.cluster)
    }
    /// Default IAM role name: `rimir-<namespace>-<name>`, shortened with a hash past 64 characters.
    pub fn default_role_name(&self) -> String {
        let full = format!("rimir-{}-{}", self.namespace, self.cluster);
        if full.len() <= 64 {
            return full;
        }
        let digest = short_hash(full.as_bytes());
        format!("{}-{}", &full[..64 - 1 - digest.len()], digest)
    }
    /// `namespace/name`, the value of our ownership tags in AWS.
    pub fn owner_tag(&self) -> String {
        format!("{}/{}", self.namespace, self.cluster)
    }
}

/// First 16 hex digits of SHA-256: the one hashing function for config hashes and names.
pub fn short_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Labels on every child (and the selector labels of a component's pods).
pub fn labels(names: &Names, component: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "rimir".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
        (CLUSTER_LABEL.to_string(), names.cluster.clone()),
    ]);
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".to_string(), c.to_string());
    }
    l
}

/// The labels selecting a component's pods (a stable subset of [`labels`]).
pub fn selector_labels(names: &Names, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "rimir".to_string()),
        (CLUSTER_LABEL.to_string(), names.cluster.clone()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// Owner reference making the MimirCluster the controller of a child (garbage collection).
pub fn owner_reference(mc: &MimirCluster) -> Option<OwnerReference> {
    mc.controller_owner_ref(&())
}

/// Metadata of a child: name, namespace, our labels and the owner reference. The parent's own
/// labels and annotations (ArgoCD's tracking label among them) are deliberately not copied.
pub fn child_meta(
    mc: &MimirCluster,
    names: &Names,
    name: String,
    component: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names, component)),
        owner_references: owner_reference(mc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Hash rolled into pod templates: pods restart when the config or the role ARN changes.
pub fn config_hash(config_yaml: &str, role_arn: &str) -> String {
    let mut data = config_yaml.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(role_arn.as_bytes());
    short_hash(&data)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::MimirClusterSpec;

    /// The tutorial's setup as a MimirCluster `prod` in `monitoring`.
    pub(crate) fn sample() -> MimirCluster {
        let spec: MimirClusterSpec = serde_yaml::from_str(
            r#"
aws:
  region: eu-west-3
  accountId: "123456789012"
  oidcIssuer: https://oidc.eks.eu-west-3.amazonaws.com/id/ABCDEF
storage:
  bucketName: acme-metrics
  retention: 400d
serviceAccount:
  name: mimir
compactor:
  replicas: 1
  persistentVolume: {enabled: true, size: 50Gi}
"#,
        )
        .unwrap();
        let mut mc = MimirCluster::new("prod", spec);
        mc.metadata.namespace = Some("monitoring".into());
        mc.metadata.uid = Some("7d2c1f9e-0000-4000-8000-000000000001".into());
        mc.metadata.generation = Some(1);
        mc
    }

    #[test]
    fn role_name_is_capped_at_64_characters_and_stable() {
        let names = Names {
            cluster: "x".repeat(70),
            namespace: "monitoring".into(),
        };
        let a = names.default_role_name();
        assert_eq!(a.len(), 64);
        assert_eq!(a, names.default_role_name());
        let short = Names {
            cluster: "prod".into(),
            namespace: "monitoring".into(),
        };
        assert_eq!(short.default_role_name(), "rimir-monitoring-prod");
    }

    #[test]
    fn config_hash_changes_with_config_or_role() {
        let h = config_hash("a: 1\n", "arn:aws:iam::1:role/r");
        assert_ne!(h, config_hash("a: 2\n", "arn:aws:iam::1:role/r"));
        assert_ne!(h, config_hash("a: 1\n", "arn:aws:iam::1:role/s"));
        assert_eq!(h, config_hash("a: 1\n", "arn:aws:iam::1:role/r"));
    }
}
