//! The `MimirCluster` custom resource (`rimir.io/v1alpha1`): what a user asks for (`spec`) and
//! what the operator reports (`status`). The CRD YAML is generated from these types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image the operator runs when `spec.image` is not set.
pub const DEFAULT_IMAGE: &str = "ghcr.io/rimir/rimir:0.1.0";
/// Compactor scratch volume size when the spec does not set one (the tutorial's 50Gi).
pub const DEFAULT_COMPACTOR_VOLUME: &str = "50Gi";
/// Ingester WAL/blocks volume size when the spec does not set one.
pub const DEFAULT_INGESTER_VOLUME: &str = "10Gi";

/// A rimir (Mimir-compatible) metrics cluster on EKS: its S3 bucket, the IAM role its pods
/// assume through IRSA, and the distributor/ingester/compactor/querier workloads.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rimir.io",
    version = "v1alpha1",
    kind = "MimirCluster",
    plural = "mimirclusters",
    shortname = "mimir",
    namespaced,
    status = "MimirClusterStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bucket","type":"string","jsonPath":".spec.storage.bucketName"}"#,
    printcolumn = r#"{"name":"Ingesters","type":"string","jsonPath":".status.ingesters"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MimirClusterSpec {
    /// Container image of the rimir server, run by every component.
    #[serde(default = "default_image")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("image must not be empty"))]
    #[schemars(length(max = 512))]
    pub image: String,
    /// AWS account, region and the EKS cluster's OIDC issuer used for IRSA.
    pub aws: AwsSpec,
    /// The S3 bucket holding the TSDB blocks.
    pub storage: StorageSpec,
    /// What happens to AWS resources when the MimirCluster is deleted: `Retain` keeps the
    /// bucket, its data and the IAM role; `Delete` removes the inline policy, the role and a
    /// bucket the operator created (with its objects).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The Kubernetes ServiceAccount the pods run as; the operator annotates it with the role ARN.
    #[serde(default)]
    pub service_account: ServiceAccountSpec,
    /// Distributors: receive remote-write pushes and fan them out to ingesters.
    #[serde(default = "default_distributor")]
    pub distributor: ComponentSpec,
    /// Ingesters: hold recent samples, write the WAL and cut blocks shipped to S3.
    #[serde(default = "default_ingester")]
    pub ingester: StatefulComponentSpec,
    /// Compactor: merges and deduplicates blocks in S3 and applies retention.
    #[serde(default = "default_compactor")]
    pub compactor: StatefulComponentSpec,
    /// Queriers: answer PromQL over the Prometheus HTTP API.
    #[serde(default = "default_querier")]
    pub querier: ComponentSpec,
    /// Compression of hot data (WAL, distributor→ingester gRPC) and cold data (blocks in S3).
    #[serde(default)]
    pub compression: CompressionSpec,
    /// Per-tenant limits, rendered under `limits:` in `rimir.yaml` (Mimir key names).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Free-form configuration deep-merged over the rendered `rimir.yaml`, like the
    /// mimir-distributed chart's `structuredConfig` (Mimir key names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub structured_config: Option<serde_json::Value>,
}

/// AWS placement and identity federation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsSpec {
    /// AWS region of the bucket (e.g. `eu-west-3`); the partition (`aws`, `aws-cn`,
    /// `aws-us-gov`) is derived from it.
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$')").message("region must look like eu-west-3"))]
    #[schemars(length(max = 32))]
    pub region: String,
    /// 12-digit AWS account id; looked up with STS GetCallerIdentity when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{12}$')").message("accountId must be 12 digits"))]
    #[schemars(length(max = 12))]
    pub account_id: Option<String>,
    /// OIDC issuer of the EKS cluster, with or without `https://`
    /// (`aws eks describe-cluster --query cluster.identity.oidc.issuer`).
    #[x_kube(validation = Rule::new("self.matches('^(https://)?[a-zA-Z0-9.-]+(/[A-Za-z0-9._-]+)*$')").message("oidcIssuer must be a host name and path, like oidc.eks.eu-west-3.amazonaws.com/id/EXAMPLE"))]
    #[schemars(length(max = 512))]
    pub oidc_issuer: String,
    /// Name of the IAM role to create; defaults to `rimir-<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9+=,.@_-]{1,64}$')").message("roleName must be 1-64 characters of letters, digits and +=,.@_-"))]
    #[schemars(length(max = 64))]
    pub role_name: Option<String>,
}

/// The object store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// S3 bucket name (3-63 lowercase letters, digits, dots and hyphens). Immutable.
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$') && !self.contains('..') && !self.matches('^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$') && !self.startsWith('xn--') && !self.endsWith('-s3alias')").message("bucketName must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"),
        validation = Rule::new("self == oldSelf").message("bucketName is immutable")
    )]
    #[schemars(length(max = 63))]
    pub bucket_name: String,
    /// `Create` makes the bucket if missing and only uses an existing one tagged as this
    /// cluster's; `Adopt` also takes over an existing bucket of the account.
    #[serde(default)]
    pub mode: BucketMode,
    /// How long blocks are kept in the bucket (Prometheus duration such as `400d`; `0s` keeps
    /// them forever). Rendered as `limits.compactor_blocks_retention_period`.
    #[serde(default = "default_retention")]
    #[x_kube(validation = Rule::new("self.matches('^(0|([0-9]+(ms|s|m|h|d|w|y))+)$')").message("retention must be a duration like 30d, 12h or 1y2w"))]
    #[schemars(length(max = 32))]
    pub retention: String,
    /// Endpoint of an S3-compatible store (host or URL); AWS's regional endpoint when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Whether the operator may take over an existing bucket.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BucketMode {
    /// Create the bucket; an existing bucket is used only if tagged as this cluster's.
    #[default]
    Create,
    /// Use an existing bucket of the account (tagging it), or create it if missing.
    Adopt,
}

/// What the operator does with AWS resources on deletion.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the bucket, its data and the IAM role.
    #[default]
    Retain,
    /// Remove the inline policy, the role and the bucket (if the operator created it) with its objects.
    Delete,
}

/// The pods' ServiceAccount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    /// ServiceAccount name; defaults to the MimirCluster's name. It is the `sub` pinned in the
    /// role's trust policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$')").message("serviceAccount.name must be a DNS subdomain"))]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// Extra annotations on the ServiceAccount (the role ARN annotation is always set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A stateless component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Number of pods (0-100).
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("replicas must be between 0 and 100"))]
    pub replicas: i32,
    /// CPU/memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A component with a persistent volume (ingester, compactor).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatefulComponentSpec {
    /// Number of pods (0-100).
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("replicas must be between 0 and 100"))]
    pub replicas: i32,
    /// CPU/memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The data volume (a PersistentVolumeClaim per pod, or an emptyDir when disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolumeSpec>,
}

/// A per-pod data volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeSpec {
    /// Use a PersistentVolumeClaim (true) or an emptyDir (false).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Requested size, a Kubernetes quantity such as `50Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("size must be a quantity like 50Gi"))]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// StorageClass of the claim; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Compression codecs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompressionSpec {
    /// Hot path: WAL records and distributor→ingester gRPC (default snappy).
    #[serde(default = "default_hot")]
    pub hot: Codec,
    /// Cold path: blocks written to S3 by the compactor (default gzip; `none` keeps blocks
    /// byte-for-byte readable by Prometheus tools).
    #[serde(default = "default_cold")]
    pub cold: Codec,
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            hot: Codec::Snappy,
            cold: Codec::Gzip,
        }
    }
}

/// A compression codec.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Snappy: fast, moderate ratio.
    Snappy,
    /// Gzip: slower, better ratio.
    Gzip,
    /// No compression.
    None,
}

/// Per-tenant limits (Mimir names and defaults apply to what is unset).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Samples per second accepted per tenant (`ingestion_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("ingestionRate must not be negative"))]
    pub ingestion_rate: Option<f64>,
    /// Burst size above the rate (`ingestion_burst_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("ingestionBurstSize must not be negative"))]
    pub ingestion_burst_size: Option<i64>,
    /// In-memory series per tenant across ingesters (`max_global_series_per_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("maxGlobalSeriesPerUser must not be negative"))]
    pub max_global_series_per_user: Option<i64>,
    /// Label names per series (`max_label_names_per_series`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxLabelNamesPerSeries must be at least 1"))]
    pub max_label_names_per_series: Option<i64>,
    /// Length of a label value in bytes (`max_label_value_length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxLabelValueLength must be at least 1"))]
    pub max_label_value_length: Option<i64>,
}

/// What the operator observed and did.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MimirClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary: Provisioning, Ready, Degraded, Failed or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// ARN of the S3 bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_arn: Option<String>,
    /// ARN of the IAM role the pods assume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Ready/desired ingesters, for `kubectl get` (`2/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingesters: Option<String>,
    /// Ready and desired replicas per component (distributor, ingester, compactor, querier).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ReplicaStatus>,
    /// `Ready`, `Progressing`, `Degraded` and one condition per reconcile step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Replica counts of one component.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pods ready.
    pub ready: i32,
    /// Pods asked for.
    pub desired: i32,
}

/// Lifecycle summary of a MimirCluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Steps are still running or pods are starting.
    Provisioning,
    /// Every step done, every component has all its replicas ready.
    Ready,
    /// Provisioned, but a component has fewer ready replicas than desired or a retryable error occurred.
    Degraded,
    /// A terminal error (invalid spec, bucket name taken); retried only when the spec changes.
    Failed,
    /// Being deleted.
    Deleting,
}

impl Phase {
    /// All phases, for metrics.
    pub const ALL: [Phase; 5] = [
        Phase::Provisioning,
        Phase::Ready,
        Phase::Degraded,
        Phase::Failed,
        Phase::Deleting,
    ];

    /// The name used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}
fn default_true() -> bool {
    true
}
fn default_retention() -> String {
    "0s".to_string()
}
fn default_hot() -> Codec {
    Codec::Snappy
}
fn default_cold() -> Codec {
    Codec::Gzip
}
fn default_distributor() -> ComponentSpec {
    ComponentSpec {
        replicas: 2,
        resources: None,
    }
}
fn default_querier() -> ComponentSpec {
    ComponentSpec {
        replicas: 2,
        resources: None,
    }
}
fn default_ingester() -> StatefulComponentSpec {
    StatefulComponentSpec {
        replicas: 3,
        resources: None,
        persistent_volume: None,
    }
}
fn default_compactor() -> StatefulComponentSpec {
    StatefulComponentSpec {
        replicas: 1,
        resources: None,
        persistent_volume: None,
    }
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

impl MimirClusterSpec {
    /// The ServiceAccount name the pods use.
    pub fn service_account_name(&self, cluster: &str) -> String {
        self.service_account
            .name
            .clone()
            .unwrap_or_else(|| cluster.to_string())
    }

    /// Volume size of a stateful component, with its default.
    pub fn volume_size(component: &StatefulComponentSpec, default: &str) -> String {
        component
            .persistent_volume
            .as_ref()
            .and_then(|pv| pv.size.clone())
            .unwrap_or_else(|| default.to_string())
    }
}

/// Checks what the CRD's CEL rules check, so an operator running against an API server without
/// CEL (or an object applied before the CRD was updated) still refuses bad specs before any AWS
/// call. The error names the field.
pub fn validate(spec: &MimirClusterSpec) -> Result<(), crate::Error> {
    let bad =
        |field: &str, why: &str| Err(crate::Error::InvalidSpec(format!("spec.{field}: {why}")));
    let b = &spec.storage.bucket_name;
    let bucket_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ip_like = b.split('.').count() == 4
        && b.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if !(3..=63).contains(&b.len())
        || !bucket_chars
        || !edge(b.bytes().next())
        || !edge(b.bytes().last())
        || b.contains("..")
        || ip_like
        || b.starts_with("xn--")
        || b.ends_with("-s3alias")
    {
        return bad(
            "storage.bucketName",
            &format!(
                "{b:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)"
            ),
        );
    }
    if !is_duration(&spec.storage.retention) {
        return bad(
            "storage.retention",
            &format!(
                "{:?} is not a duration like 30d or 1y",
                spec.storage.retention
            ),
        );
    }
    let r = &spec.aws.region;
    let parts: Vec<&str> = r.split('-').collect();
    if parts.len() < 3
        || parts[0].len() != 2
        || !parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        || !r
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return bad(
            "aws.region",
            &format!("{r:?} is not an AWS region like eu-west-3"),
        );
    }
    if let Some(a) = &spec.aws.account_id
        && (a.len() != 12 || !a.bytes().all(|c| c.is_ascii_digit()))
    {
        return bad("aws.accountId", "must be 12 digits");
    }
    let issuer = spec.aws.oidc_issuer.trim_start_matches("https://");
    if issuer.is_empty() || issuer.contains(char::is_whitespace) || issuer.starts_with('/') {
        return bad(
            "aws.oidcIssuer",
            "must be the cluster's OIDC issuer host and path",
        );
    }
    if let Some(role) = &spec.aws.role_name
        && (role.is_empty()
            || role.len() > 64
            || !role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)))
    {
        return bad(
            "aws.roleName",
            "must be 1-64 characters of letters, digits and +=,.@_-",
        );
    }
    for (field, replicas) in [
        ("distributor.replicas", spec.distributor.replicas),
        ("ingester.replicas", spec.ingester.replicas),
        ("compactor.replicas", spec.compactor.replicas),
        ("querier.replicas", spec.querier.replicas),
    ] {
        if !(0..=100).contains(&replicas) {
            return bad(field, &format!("{replicas} is outside 0-100"));
        }
    }
    for (field, c) in [("ingester", &spec.ingester), ("compactor", &spec.compactor)] {
        if let Some(size) = c
            .persistent_volume
            .as_ref()
            .and_then(|pv| pv.size.as_deref())
            && !is_quantity(size)
        {
            return bad(
                &format!("{field}.persistentVolume.size"),
                &format!("{size:?} is not a quantity like 50Gi"),
            );
        }
    }
    if spec
        .structured_config
        .as_ref()
        .is_some_and(|v| !v.is_object())
    {
        return bad("structuredConfig", "must be a mapping of rimir.yaml keys");
    }
    Ok(())
}

/// A Prometheus duration (`0`, `30d`, `1y2w`, `90m`).
pub fn is_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Parses a Prometheus-style duration (`30s`, `5m`, `1h30m`) for command-line flags.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if !is_duration(s) {
        return None;
    }
    let mut total = 0u64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (1, 2),
            [b's', ..] => (1_000, 1),
            [b'm', ..] => (60_000, 1),
            [b'h', ..] => (3_600_000, 1),
            [b'd', ..] => (86_400_000, 1),
            [b'w', ..] => (604_800_000, 1),
            [b'y', ..] => (31_536_000_000, 1),
            _ => (0, 0),
        };
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
        rest = &rest[len..];
    }
    Some(std::time::Duration::from_millis(total))
}

/// A Kubernetes quantity in the forms volume sizes use (`50Gi`, `1.5T`, `1000000`).
pub fn is_quantity(s: &str) -> bool {
    let num_len = s
        .bytes()
        .take_while(|c| c.is_ascii_digit() || *c == b'.')
        .count();
    let (num, suffix) = s.split_at(num_len);
    let num_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    num_ok
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
        ]
        .contains(&suffix)
}

/// The CRD as YAML, exactly what `rimir-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    // Serializing a derived CRD cannot fail: it is plain data with string keys.
    serde_yaml::to_string(&MimirCluster::crd()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_generated_output() {
        for file in [
            "crds/mimirclusters.rimir.io.yaml",
            "config/crd/mimirclusters.rimir.io.yaml",
            "charts/rimir-operator/crds/mimirclusters.rimir.io.yaml",
        ] {
            let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
            let committed =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
            assert!(
                committed == crd_yaml(),
                "{file} is stale: run `cargo run -p rimir-operator -- crd > {file}`"
            );
        }
    }

    #[test]
    fn sample_is_valid_and_mirrors_the_tutorial() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/samples/mimircluster.yaml"
        );
        let mc: MimirCluster =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        validate(&mc.spec).unwrap();
        assert_eq!(
            MimirClusterSpec::volume_size(&mc.spec.compactor, DEFAULT_COMPACTOR_VOLUME),
            "50Gi"
        );
        assert_eq!(
            mc.spec.compression,
            CompressionSpec {
                hot: Codec::Snappy,
                cold: Codec::Gzip
            }
        );
        assert_eq!(mc.spec.service_account.name.as_deref(), Some("mimir"));
    }

    #[test]
    fn validation_names_the_offending_field() {
        let good = || -> MimirClusterSpec {
            serde_yaml::from_str(
                "aws: {region: eu-west-3, oidcIssuer: oidc.example.com/id/ABC}\nstorage: {bucketName: metrics}\n",
            )
            .unwrap()
        };
        validate(&good()).unwrap();
        type Mutation = Box<dyn Fn(&mut MimirClusterSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.storage.bucket_name = "Bad_Bucket".into()),
                "storage.bucketName",
            ),
            (
                Box::new(|s| s.storage.bucket_name = "ab".into()),
                "storage.bucketName",
            ),
            (
                Box::new(|s| s.storage.bucket_name = "a..b".into()),
                "storage.bucketName",
            ),
            (
                Box::new(|s| s.storage.bucket_name = "192.168.1.1".into()),
                "storage.bucketName",
            ),
            (
                Box::new(|s| s.storage.retention = "forever".into()),
                "storage.retention",
            ),
            (Box::new(|s| s.aws.region = "paris".into()), "aws.region"),
            (
                Box::new(|s| s.aws.account_id = Some("12".into())),
                "aws.accountId",
            ),
            (
                Box::new(|s| s.aws.oidc_issuer = "https://".into()),
                "aws.oidcIssuer",
            ),
            (Box::new(|s| s.ingester.replicas = 101), "ingester.replicas"),
            (Box::new(|s| s.querier.replicas = -1), "querier.replicas"),
            (
                Box::new(|s| {
                    s.compactor.persistent_volume = Some(PersistentVolumeSpec {
                        enabled: true,
                        size: Some("lots".into()),
                        storage_class_name: None,
                    })
                }),
                "compactor.persistentVolume.size",
            ),
            (
                Box::new(|s| s.structured_config = Some(serde_json::json!([1]))),
                "structuredConfig",
            ),
        ];
        for (mutate, field) in cases {
            let mut spec = good();
            mutate(&mut spec);
            let err = validate(&spec).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
            assert!(err.is_terminal());
        }
        for d in ["0", "30d", "1y2w", "90m", "500ms"] {
            assert!(is_duration(d), "{d}");
        }
        assert_eq!(
            parse_duration("1h30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("250ms"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("5x"), None);
        for q in ["50Gi", "1.5T", "1000000"] {
            assert!(is_quantity(q), "{q}");
        }
        assert!(!is_quantity("50GB") && !is_quantity("Gi") && !is_quantity("1..2Gi"));
    }

    #[test]
    fn crd_has_names_columns_status_and_validations() {
        let crd = serde_json::to_value(MimirCluster::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "mimirclusters.rimir.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "mimir");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Ready", "Phase", "Bucket", "Ingesters", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let bucket = &spec["properties"]["storage"]["properties"]["bucketName"];
        let rules: Vec<&str> = bucket["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert!(rules.contains(&"self == oldSelf"), "{rules:?}");
        assert!(
            bucket["description"]
                .as_str()
                .unwrap()
                .contains("Immutable")
        );
        let structured = &spec["properties"]["structuredConfig"];
        assert_eq!(structured["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            serde_json::json!(["Retain", "Delete"])
        );
    }

    /// Every property in the schema carries a description, so `kubectl explain` documents it.
    #[test]
    fn every_spec_field_is_described() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, sub) in props {
                    let p = format!("{path}.{name}");
                    // Fields typed by k8s-openapi (resources) carry upstream docs; ours must too.
                    if sub.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    walk(&p, sub, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let crd = serde_json::to_value(MimirCluster::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", &root["properties"]["spec"], &mut missing);
        walk("", &root["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn minimal_spec_gets_tutorial_defaults() {
        let spec: MimirClusterSpec = serde_yaml::from_str(
            "aws: {region: eu-west-3, oidcIssuer: oidc.example.com/id/ABC}\nstorage: {bucketName: metrics}\n",
        )
        .unwrap();
        assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(
            spec.compression,
            CompressionSpec {
                hot: Codec::Snappy,
                cold: Codec::Gzip
            }
        );
        assert_eq!(
            MimirClusterSpec::volume_size(&spec.compactor, DEFAULT_COMPACTOR_VOLUME),
            "50Gi"
        );
        assert_eq!(spec.storage.mode, BucketMode::Create);
        assert_eq!(spec.service_account_name("prod"), "prod");
    }
}
