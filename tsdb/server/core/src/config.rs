//! The `rimir.yaml` configuration: Mimir's key names where the concept is the same, Go-style
//! durations, unknown keys rejected by name, and command-line flags that override the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or holds an unknown key or a bad value.
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file (`<flags>` for overrides).
        path: String,
        /// serde_yaml's message names the key and the line.
        source: serde_yaml::Error,
    },
    /// A value is out of its allowed range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A duration written the Go way: `2h`, `13h`, `10m`, `1h30m`, `500ms`, `0s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub std::time::Duration);

impl GoDuration {
    /// A duration of `h` hours.
    pub const fn hours(h: u64) -> Self {
        Self(std::time::Duration::from_secs(h * 3600))
    }
    /// A duration of `m` minutes.
    pub const fn minutes(m: u64) -> Self {
        Self(std::time::Duration::from_secs(m * 60))
    }
    /// A duration of `s` seconds.
    pub const fn seconds(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    /// The duration in whole milliseconds.
    pub fn as_millis_i64(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?} (expected e.g. 2h, 10m, 1h30m, 500ms)");
        let t = s.trim();
        if t == "0" {
            return Ok(Self::default());
        }
        if t.is_empty() {
            return Err(bad());
        }
        let mut nanos: u128 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let num: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                "w" => 604_800_000_000_000,
                "y" => 31_536_000_000_000_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            nanos += (num * unit as f64).round() as u128;
        }
        let nanos = u64::try_from(nanos).map_err(|_| bad())?;
        Ok(Self(std::time::Duration::from_nanos(nanos)))
    }
}

impl fmt::Display for GoDuration {
    /// The shortest Go-style form: `2h`, `1h30m`, `10m`, `90s`, `500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() != 0 && d.as_secs() == 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sec > 0 || d.subsec_millis() > 0 {
            if d.subsec_millis() > 0 {
                write!(f, "{sec}.{:03}s", d.subsec_millis())?;
            } else {
                write!(f, "{sec}s")?;
            }
        }
        Ok(())
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The role(s) a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Distributor and ingester (and querier) in one process.
    All,
    /// Receives remote-write and fans out to ingesters.
    Distributor,
    /// Holds recent data, ships blocks.
    Ingester,
    /// Answers PromQL.
    Querier,
    /// Compacts blocks in the bucket.
    Compactor,
}

impl Target {
    /// Whether this process runs the distributor.
    pub fn runs_distributor(self) -> bool {
        matches!(self, Target::All | Target::Distributor)
    }
    /// Whether this process runs an ingester.
    pub fn runs_ingester(self) -> bool {
        matches!(self, Target::All | Target::Ingester)
    }
    /// Whether this process runs the compactor.
    pub fn runs_compactor(self) -> bool {
        matches!(self, Target::All | Target::Compactor)
    }
    /// Whether this process runs the querier.
    pub fn runs_querier(self) -> bool {
        matches!(self, Target::All | Target::Querier)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::All => "all",
            Target::Distributor => "distributor",
            Target::Ingester => "ingester",
            Target::Querier => "querier",
            Target::Compactor => "compactor",
        })
    }
}

/// The whole `rimir.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which role this process runs.
    pub target: Target,
    /// When false every request belongs to the tenant `anonymous`.
    pub multitenancy_enabled: bool,
    /// Listening addresses.
    pub server: ServerConfig,
    /// Distributor settings.
    pub distributor: DistributorConfig,
    /// Ingester settings.
    pub ingester: IngesterConfig,
    /// Object storage and the local TSDB.
    pub blocks_storage: BlocksStorageConfig,
    /// Compactor settings.
    pub compactor: CompactorConfig,
    /// Querier settings.
    pub querier: QuerierConfig,
    /// Default per-tenant limits.
    pub limits: Limits,
    /// Per-tenant overrides of `limits` (Mimir's runtime-config `overrides`): tenant → keys.
    pub overrides: BTreeMap<String, serde_yaml::Mapping>,
    /// Compression of hot (WAL, gRPC) and cold (compacted blocks) data.
    pub compression: CompressionConfig,
    /// Mimir's runtime configuration file: per-tenant overrides reloaded without a restart.
    pub runtime_config: RuntimeConfigConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: Target::All,
            multitenancy_enabled: false,
            server: ServerConfig::default(),
            distributor: DistributorConfig::default(),
            ingester: IngesterConfig::default(),
            blocks_storage: BlocksStorageConfig::default(),
            compactor: CompactorConfig::default(),
            querier: QuerierConfig::default(),
            limits: Limits::default(),
            overrides: BTreeMap::new(),
            compression: CompressionConfig::default(),
            runtime_config: RuntimeConfigConfig::default(),
        }
    }
}

/// `runtime_config.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfigConfig {
    /// A YAML file in Mimir's runtime-config format (`overrides: {tenant: {limit: value}}`);
    /// its overrides apply on top of `limits` and this file's `overrides`. None: no such file.
    pub file: Option<PathBuf>,
    /// How often the file is read again (10s); a change applies without a restart.
    pub period: GoDuration,
}

impl Default for RuntimeConfigConfig {
    fn default() -> Self {
        Self {
            file: None,
            period: GoDuration::seconds(10),
        }
    }
}

/// `server.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP and gRPC servers bind to.
    pub http_listen_address: String,
    /// HTTP port (8080).
    pub http_listen_port: u16,
    /// gRPC port (9095).
    pub grpc_listen_port: u16,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub graceful_shutdown_timeout: GoDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen_address: "0.0.0.0".into(),
            http_listen_port: 8080,
            grpc_listen_port: 9095,
            graceful_shutdown_timeout: GoDuration::seconds(30),
        }
    }
}

/// `distributor.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributorConfig {
    /// Largest accepted push body, compressed or decompressed (Mimir: 100 MiB).
    pub max_recv_msg_size: usize,
    /// Deadline of one push to one ingester.
    pub remote_timeout: GoDuration,
    /// Deduplication of HA Prometheus pairs (`distributor.ha_tracker.*`).
    pub ha_tracker: HaTrackerConfig,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        Self {
            max_recv_msg_size: 100 << 20,
            remote_timeout: GoDuration::seconds(2),
            ha_tracker: HaTrackerConfig::default(),
        }
    }
}

/// `distributor.ha_tracker.*`: of the replicas of one Prometheus HA pair (series with the same
/// `limits.ha_cluster_label` and different `limits.ha_replica_label`), only the elected
/// replica's samples are stored. The election of each (tenant, cluster) is held by the
/// ingester that owns it on the ring, so every distributor agrees on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaTrackerConfig {
    /// Turns the tracker on; a tenant's pushes are deduplicated when its
    /// `limits.accept_ha_samples` is also true (false).
    pub enable_ha_tracker: bool,
    /// How long a distributor trusts its cached election before it asks the ingester again,
    /// which also tells the ingester the elected replica is alive (15s).
    pub ha_tracker_update_timeout: GoDuration,
    /// Up to this much random time is added to each update timeout, so that the distributors'
    /// refreshes spread out (5s).
    pub ha_tracker_update_timeout_jitter_max: GoDuration,
    /// After this long without samples from the elected replica, the next replica that pushes
    /// is elected (30s). Must exceed the update timeout plus its jitter.
    pub ha_tracker_failover_timeout: GoDuration,
}

impl Default for HaTrackerConfig {
    fn default() -> Self {
        Self {
            enable_ha_tracker: false,
            ha_tracker_update_timeout: GoDuration::seconds(15),
            ha_tracker_update_timeout_jitter_max: GoDuration::seconds(5),
            ha_tracker_failover_timeout: GoDuration::seconds(30),
        }
    }
}

/// `ingester.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngesterConfig {
    /// The ingester ring.
    pub ring: RingConfig,
    /// How long metric metadata (type, help, unit) is kept after it was last received (10m);
    /// Prometheus sends it every minute by default.
    pub metadata_retain_period: GoDuration,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self {
            ring: RingConfig::default(),
            metadata_retain_period: GoDuration::minutes(10),
        }
    }
}

/// `ingester.ring.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// Copies of each series (3).
    pub replication_factor: usize,
    /// Place the copies in distinct zones.
    pub zone_awareness_enabled: bool,
    /// This ingester's name; its ring tokens derive from it (default: the host name).
    pub instance_id: String,
    /// This ingester's zone.
    pub instance_availability_zone: String,
    /// Statically listed ingesters.
    pub instances: Vec<RingInstance>,
    /// Addresses to discover ingesters at: `host:port` or `dns+host:port` (every A/AAAA record
    /// is one ingester, asked for its name over gRPC).
    pub join_members: Vec<String>,
    /// How often `dns+` members are resolved again.
    pub dns_refresh_interval: GoDuration,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            zone_awareness_enabled: false,
            instance_id: default_instance_id(),
            instance_availability_zone: String::new(),
            instances: Vec::new(),
            join_members: Vec::new(),
            dns_refresh_interval: GoDuration::seconds(15),
        }
    }
}

fn default_instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ingester".into())
}

/// One statically configured ingester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingInstance {
    /// Stable name (the StatefulSet pod name); the ring tokens derive from it.
    pub id: String,
    /// gRPC address `host:port`.
    pub addr: String,
    /// Availability zone, for zone-aware placement.
    #[serde(default)]
    pub zone: String,
}

/// `blocks_storage.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlocksStorageConfig {
    /// `filesystem` or `s3`.
    pub backend: Backend,
    /// S3 bucket.
    pub s3: S3Config,
    /// Filesystem bucket.
    pub filesystem: FilesystemConfig,
    /// The ingester's local TSDB.
    pub tsdb: TsdbConfig,
}

impl Default for BlocksStorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Filesystem,
            s3: S3Config::default(),
            filesystem: FilesystemConfig::default(),
            tsdb: TsdbConfig::default(),
        }
    }
}

/// Object storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A directory.
    Filesystem,
    /// Amazon S3 or an S3-compatible store.
    S3,
}

/// `blocks_storage.s3.*`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket_name: String,
    /// Region.
    pub region: String,
    /// Custom endpoint (`http://127.0.0.1:5000` for moto); empty for AWS.
    pub endpoint: String,
    /// Use `http://` for an endpoint given without a scheme.
    pub insecure: bool,
    /// Path-style addressing (S3-compatible stores; automatic with a custom endpoint).
    /// Credentials never come from this file: the AWS SDK default chain (environment, IRSA web
    /// identity, instance metadata) provides them.
    pub force_path_style: bool,
}

/// `blocks_storage.filesystem.*`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// Bucket directory.
    pub dir: PathBuf,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/blocks"),
        }
    }
}

/// `blocks_storage.tsdb.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TsdbConfig {
    /// Local directory of heads, WALs and shipped blocks, one subdirectory per tenant.
    pub dir: PathBuf,
    /// Block ranges; the first one is the head's block length (2h).
    pub block_ranges_period: Vec<GoDuration>,
    /// How long shipped blocks stay on the ingester's disk (13h).
    pub retention_period: GoDuration,
    /// How often the head is checked for a block to cut.
    pub head_compaction_interval: GoDuration,
    /// How often cut blocks are shipped to the bucket.
    pub ship_interval: GoDuration,
    /// Cut and ship every block of the heads when the ingester stops.
    pub flush_blocks_on_shutdown: bool,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/tsdb"),
            block_ranges_period: vec![GoDuration::hours(2)],
            retention_period: GoDuration::hours(13),
            head_compaction_interval: GoDuration::minutes(1),
            ship_interval: GoDuration::minutes(1),
            flush_blocks_on_shutdown: false,
        }
    }
}

impl TsdbConfig {
    /// The head block length in milliseconds.
    pub fn block_range_ms(&self) -> i64 {
        self.block_ranges_period
            .first()
            .copied()
            .unwrap_or(GoDuration::hours(2))
            .as_millis_i64()
    }
}

/// Smallest `querier.cache_max_bytes`: a few hundred pages, so one query's reads fit.
pub const MIN_QUERIER_CACHE_BYTES: u64 = 16 << 20;

/// `querier.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerierConfig {
    /// Queries reaching into this window of the past also ask the ingesters (13h).
    pub query_ingesters_within: GoDuration,
    /// Where pages of bucket blocks (and whole cold-compressed blocks) are cached.
    pub cache_dir: PathBuf,
    /// Most bytes of cached pages in `cache_dir`; least recently used pages are evicted (10 GiB).
    pub cache_max_bytes: u64,
    /// Most series one query may fetch (0: unlimited).
    pub max_fetched_series_per_query: usize,
    /// Most samples one query may load and produce (50 000 000).
    pub max_samples: usize,
    /// Longest evaluation time of one query (2m).
    pub timeout: GoDuration,
}

impl Default for QuerierConfig {
    fn default() -> Self {
        Self {
            query_ingesters_within: GoDuration::hours(13),
            cache_dir: PathBuf::from("./data/querier"),
            cache_max_bytes: 10 << 30,
            max_fetched_series_per_query: 0,
            max_samples: 50_000_000,
            timeout: GoDuration::minutes(2),
        }
    }
}

/// `compactor.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactorConfig {
    /// The compactor's working directory (its PVC).
    pub data_dir: PathBuf,
    /// Compaction ranges, ascending; the first is the ingesters' block range (2h, 12h, 24h).
    pub block_ranges: Vec<GoDuration>,
    /// How long a block marked for deletion stays readable before it is removed (12h).
    pub deletion_delay: GoDuration,
    /// Time between compaction runs (1h).
    pub compaction_interval: GoDuration,
    /// Partial uploads (no meta.json) untouched this long are removed (1d).
    pub partial_block_deletion_delay: GoDuration,
    /// Cap on the bytes the data dir may use, below the volume's free space (0: no cap).
    pub max_data_dir_bytes: u64,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data/compactor"),
            block_ranges: vec![
                GoDuration::hours(2),
                GoDuration::hours(12),
                GoDuration::hours(24),
            ],
            deletion_delay: GoDuration::hours(12),
            compaction_interval: GoDuration::hours(1),
            partial_block_deletion_delay: GoDuration::hours(24),
            max_data_dir_bytes: 0,
        }
    }
}

/// `compression.*`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// WAL and distributor→ingester messages (snappy).
    pub hot: Compression,
    /// Blocks the compactor writes (gzip).
    pub cold: Compression,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            hot: Compression::Snappy,
            cold: Compression::Gzip,
        }
    }
}

/// A compression choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Snappy (fast).
    Snappy,
    /// Gzip (small).
    Gzip,
    /// Uncompressed.
    None,
}

/// Per-tenant limits, Mimir's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Samples per second per tenant (10 000).
    pub ingestion_rate: f64,
    /// Burst of the rate limiter (200 000).
    pub ingestion_burst_size: u64,
    /// Labels per series, including `__name__` (30).
    pub max_label_names_per_series: usize,
    /// Characters in a label name (1024).
    pub max_label_name_length: usize,
    /// Characters in a label value (2048).
    pub max_label_value_length: usize,
    /// How far in the future a sample may be (10m).
    pub creation_grace_period: GoDuration,
    /// Active series per tenant across the cluster (150 000; 0 = unlimited).
    pub max_global_series_per_user: u64,
    /// Characters in a metric metadata's metric name, help or unit (1024).
    pub max_metadata_length: usize,
    /// Blocks whose data ended longer ago than this are deleted by the compactor (0 = keep).
    pub compactor_blocks_retention_period: GoDuration,
    /// How far behind the newest sample of its tenant's head a sample may be and still be
    /// stored out of order (0 = samples must arrive in order per series, Prometheus' default).
    /// Read when the tenant's head opens: a change takes effect when the ingester restarts.
    pub out_of_order_time_window: GoDuration,
    /// Deduplicate this tenant's HA Prometheus pairs when `distributor.ha_tracker` is enabled
    /// (false).
    pub accept_ha_samples: bool,
    /// The label naming a Prometheus HA pair (`cluster`).
    pub ha_cluster_label: String,
    /// The label naming a replica of a pair (`__replica__`); removed from stored series.
    pub ha_replica_label: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ingestion_rate: 10_000.0,
            ingestion_burst_size: 200_000,
            max_label_names_per_series: 30,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            creation_grace_period: GoDuration::minutes(10),
            max_global_series_per_user: 150_000,
            max_metadata_length: 1024,
            compactor_blocks_retention_period: GoDuration(std::time::Duration::ZERO),
            out_of_order_time_window: GoDuration(std::time::Duration::ZERO),
            accept_ha_samples: false,
            ha_cluster_label: "cluster".into(),
            ha_replica_label: "__replica__".into(),
        }
    }
}

impl Config {
    /// Parses YAML text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: source.into(),
                source: e,
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            source: e,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The effective config as YAML (the `/config` page).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks ranges and that every tenant override names known limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ingester.ring.replication_factor == 0 {
            return Err(ConfigError::Invalid(
                "ingester.ring.replication_factor must be at least 1".into(),
            ));
        }
        let ha = &self.distributor.ha_tracker;
        if ha.ha_tracker_failover_timeout.0
            <= ha.ha_tracker_update_timeout.0 + ha.ha_tracker_update_timeout_jitter_max.0
        {
            return Err(ConfigError::Invalid(format!(
                "distributor.ha_tracker.ha_tracker_failover_timeout ({}) must be greater than ha_tracker_update_timeout ({}) plus ha_tracker_update_timeout_jitter_max ({}): a live replica would be replaced",
                ha.ha_tracker_failover_timeout,
                ha.ha_tracker_update_timeout,
                ha.ha_tracker_update_timeout_jitter_max
            )));
        }
        if self.blocks_storage.tsdb.block_range_ms() <= 0 {
            return Err(ConfigError::Invalid(
                "blocks_storage.tsdb.block_ranges_period must be positive".into(),
            ));
        }
        let ranges = &self.compactor.block_ranges;
        if ranges.is_empty()
            || ranges.iter().any(|d| d.0.is_zero())
            || ranges.windows(2).any(|w| w[1].0 <= w[0].0)
        {
            return Err(ConfigError::Invalid(
                "compactor.block_ranges must be positive and strictly ascending (e.g. [2h, 12h, 24h])".into(),
            ));
        }
        if self.querier.cache_max_bytes < MIN_QUERIER_CACHE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "querier.cache_max_bytes must be at least {MIN_QUERIER_CACHE_BYTES} (16 MiB), got {}",
                self.querier.cache_max_bytes
            )));
        }
        if self.blocks_storage.backend == Backend::S3
            && self.blocks_storage.s3.bucket_name.is_empty()
        {
            return Err(ConfigError::Invalid(
                "blocks_storage.s3.bucket_name is required with backend s3".into(),
            ));
        }
        self.tenant_limits()?;
        Ok(())
    }

    /// The default limits plus each tenant's overrides applied on top.
    pub fn tenant_limits(&self) -> Result<TenantLimits, ConfigError> {
        self.tenant_limits_with(&BTreeMap::new(), "overrides")
    }

    /// The default limits, then each tenant's `overrides` from this file, then its entries of
    /// `runtime` (the runtime-config file's `overrides`, named `origin` in errors), key by key.
    pub fn tenant_limits_with(
        &self,
        runtime: &BTreeMap<String, serde_yaml::Mapping>,
        origin: &str,
    ) -> Result<TenantLimits, ConfigError> {
        let base = serde_yaml::to_value(&self.limits).map_err(|e| ConfigError::Parse {
            path: "limits".into(),
            source: e,
        })?;
        let mut per_tenant = BTreeMap::new();
        let tenants: std::collections::BTreeSet<&String> =
            self.overrides.keys().chain(runtime.keys()).collect();
        for tenant in tenants {
            let mut merged = base.clone();
            if let serde_yaml::Value::Mapping(m) = &mut merged {
                for over in [self.overrides.get(tenant), runtime.get(tenant)]
                    .into_iter()
                    .flatten()
                {
                    for (k, v) in over {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            let path = if runtime.contains_key(tenant) {
                format!("{origin}.{tenant}")
            } else {
                format!("overrides.{tenant}")
            };
            let limits: Limits = serde_yaml::from_value(merged)
                .map_err(|e| ConfigError::Parse { path, source: e })?;
            per_tenant.insert(tenant.clone(), limits);
        }
        Ok(TenantLimits {
            default: self.limits.clone(),
            per_tenant,
        })
    }
}

/// Resolved limits per tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantLimits {
    /// Limits of tenants without overrides.
    pub default: Limits,
    /// Tenants with overrides.
    pub per_tenant: BTreeMap<String, Limits>,
}

impl TenantLimits {
    /// The limits of `tenant`.
    pub fn get(&self, tenant: &str) -> &Limits {
        self.per_tenant.get(tenant).unwrap_or(&self.default)
    }
}

/// Command-line flags (Mimir's names); each one set overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Role of this process.
    #[arg(long = "target", value_enum)]
    pub target: Option<Target>,
    /// Path of `rimir.yaml`.
    #[arg(long = "config.file")]
    pub config_file: Option<PathBuf>,
    /// Print the effective config as YAML and exit.
    #[arg(long = "print.config")]
    pub print_config: bool,
    /// Require `X-Scope-OrgID`.
    #[arg(long = "auth.multitenancy-enabled")]
    pub multitenancy_enabled: Option<bool>,
    /// HTTP bind address.
    #[arg(long = "server.http-listen-address")]
    pub http_listen_address: Option<String>,
    /// HTTP port.
    #[arg(long = "server.http-listen-port")]
    pub http_listen_port: Option<u16>,
    /// gRPC port.
    #[arg(long = "server.grpc-listen-port")]
    pub grpc_listen_port: Option<u16>,
    /// `filesystem` or `s3`.
    #[arg(long = "blocks-storage.backend", value_enum)]
    pub backend: Option<Backend>,
    /// Filesystem bucket directory.
    #[arg(long = "blocks-storage.filesystem.dir")]
    pub filesystem_dir: Option<PathBuf>,
    /// S3 bucket.
    #[arg(long = "blocks-storage.s3.bucket-name")]
    pub s3_bucket_name: Option<String>,
    /// S3 endpoint.
    #[arg(long = "blocks-storage.s3.endpoint")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long = "blocks-storage.s3.region")]
    pub s3_region: Option<String>,
    /// Local TSDB directory.
    #[arg(long = "blocks-storage.tsdb.dir")]
    pub tsdb_dir: Option<PathBuf>,
    /// Shipped blocks' local retention.
    #[arg(long = "blocks-storage.tsdb.retention-period")]
    pub tsdb_retention_period: Option<GoDuration>,
    /// Compactor working directory.
    #[arg(long = "compactor.data-dir")]
    pub compactor_data_dir: Option<PathBuf>,
    /// Run one compaction pass over the bucket and exit (tests, cron jobs).
    #[arg(long = "compactor.run-once")]
    pub compactor_run_once: bool,
    /// Replication factor.
    #[arg(long = "ingester.ring.replication-factor")]
    pub replication_factor: Option<usize>,
    /// This ingester's name.
    #[arg(long = "ingester.ring.instance-id")]
    pub instance_id: Option<String>,
    /// This ingester's zone.
    #[arg(long = "ingester.ring.instance-availability-zone")]
    pub instance_zone: Option<String>,
    /// Static ingesters as `id=host:port[@zone]`, repeatable or comma-separated.
    #[arg(long = "ingester.ring.instances", value_delimiter = ',')]
    pub instances: Vec<String>,
    /// Ingester discovery addresses (`dns+host:port`), repeatable.
    #[arg(long = "ingester.ring.join-members", value_delimiter = ',')]
    pub join_members: Vec<String>,
    /// Hot-path compression.
    #[arg(long = "compression.hot", value_enum)]
    pub compression_hot: Option<Compression>,
    /// Per-tenant ingestion rate.
    #[arg(long = "distributor.ingestion-rate-limit")]
    pub ingestion_rate: Option<f64>,
    /// Per-tenant ingestion burst.
    #[arg(long = "distributor.ingestion-burst-size")]
    pub ingestion_burst_size: Option<u64>,
    /// Per-tenant active series limit.
    #[arg(long = "ingester.max-global-series-per-user")]
    pub max_global_series_per_user: Option<u64>,
    /// Runtime-config file (per-tenant overrides reloaded without restart).
    #[arg(long = "runtime-config.file")]
    pub runtime_config_file: Option<PathBuf>,
    /// How often the runtime-config file is read again.
    #[arg(long = "runtime-config.reload-period")]
    pub runtime_config_period: Option<GoDuration>,
    /// Turn the HA tracker on.
    #[arg(long = "distributor.ha-tracker.enable")]
    pub ha_tracker_enable: Option<bool>,
    /// Deduplicate every tenant's HA pairs (`limits.accept_ha_samples`).
    #[arg(long = "distributor.ha-tracker.enable-for-all-users")]
    pub accept_ha_samples: Option<bool>,
    /// The HA pair label (`limits.ha_cluster_label`).
    #[arg(long = "distributor.ha-tracker.cluster")]
    pub ha_cluster_label: Option<String>,
    /// The replica label (`limits.ha_replica_label`).
    #[arg(long = "distributor.ha-tracker.replica")]
    pub ha_replica_label: Option<String>,
    /// How long a cached election is trusted.
    #[arg(long = "distributor.ha-tracker.update-timeout")]
    pub ha_tracker_update_timeout: Option<GoDuration>,
    /// Random time added to the update timeout, at most.
    #[arg(long = "distributor.ha-tracker.update-timeout-jitter-max")]
    pub ha_tracker_update_timeout_jitter_max: Option<GoDuration>,
    /// Silence of the elected replica after which another is elected.
    #[arg(long = "distributor.ha-tracker.failover-timeout")]
    pub ha_tracker_failover_timeout: Option<GoDuration>,
}

impl Flags {
    /// The config file (if any) with the flags applied on top, validated.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config_file {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        self.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies every flag that was given.
    pub fn apply(&self, cfg: &mut Config) -> Result<(), ConfigError> {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut cfg.target, &self.target);
        set(&mut cfg.multitenancy_enabled, &self.multitenancy_enabled);
        set(
            &mut cfg.server.http_listen_address,
            &self.http_listen_address,
        );
        set(&mut cfg.server.http_listen_port, &self.http_listen_port);
        set(&mut cfg.server.grpc_listen_port, &self.grpc_listen_port);
        set(&mut cfg.blocks_storage.backend, &self.backend);
        set(&mut cfg.blocks_storage.filesystem.dir, &self.filesystem_dir);
        set(&mut cfg.blocks_storage.s3.bucket_name, &self.s3_bucket_name);
        set(&mut cfg.blocks_storage.s3.endpoint, &self.s3_endpoint);
        set(&mut cfg.blocks_storage.s3.region, &self.s3_region);
        set(&mut cfg.blocks_storage.tsdb.dir, &self.tsdb_dir);
        set(
            &mut cfg.blocks_storage.tsdb.retention_period,
            &self.tsdb_retention_period,
        );
        set(&mut cfg.compactor.data_dir, &self.compactor_data_dir);
        if let Some(f) = &self.runtime_config_file {
            cfg.runtime_config.file = Some(f.clone());
        }
        set(&mut cfg.runtime_config.period, &self.runtime_config_period);
        set(
            &mut cfg.ingester.ring.replication_factor,
            &self.replication_factor,
        );
        set(&mut cfg.ingester.ring.instance_id, &self.instance_id);
        set(
            &mut cfg.ingester.ring.instance_availability_zone,
            &self.instance_zone,
        );
        set(&mut cfg.compression.hot, &self.compression_hot);
        set(&mut cfg.limits.ingestion_rate, &self.ingestion_rate);
        set(
            &mut cfg.limits.ingestion_burst_size,
            &self.ingestion_burst_size,
        );
        set(
            &mut cfg.limits.max_global_series_per_user,
            &self.max_global_series_per_user,
        );
        let ha = &mut cfg.distributor.ha_tracker;
        set(&mut ha.enable_ha_tracker, &self.ha_tracker_enable);
        set(
            &mut ha.ha_tracker_update_timeout,
            &self.ha_tracker_update_timeout,
        );
        set(
            &mut ha.ha_tracker_update_timeout_jitter_max,
            &self.ha_tracker_update_timeout_jitter_max,
        );
        set(
            &mut ha.ha_tracker_failover_timeout,
            &self.ha_tracker_failover_timeout,
        );
        set(&mut cfg.limits.accept_ha_samples, &self.accept_ha_samples);
        set(&mut cfg.limits.ha_cluster_label, &self.ha_cluster_label);
        set(&mut cfg.limits.ha_replica_label, &self.ha_replica_label);
        if !self.instances.is_empty() {
            cfg.ingester.ring.instances = self
                .instances
                .iter()
                .map(|s| parse_instance_flag(s))
                .collect::<Result<_, _>>()?;
        }
        if !self.join_members.is_empty() {
            cfg.ingester.ring.join_members = self.join_members.clone();
        }
        Ok(())
    }
}

/// Parses `id=host:port[@zone]`.
fn parse_instance_flag(s: &str) -> Result<RingInstance, ConfigError> {
    let (id, rest) = s.split_once('=').ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--ingester.ring.instances entry {s:?} is not id=host:port[@zone]"
        ))
    })?;
    let (addr, zone) = rest.split_once('@').unwrap_or((rest, ""));
    Ok(RingInstance {
        id: id.into(),
        addr: addr.into(),
        zone: zone.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_mimir() {
        let c = Config::from_yaml("", "t").unwrap();
        assert_eq!(c.server.http_listen_port, 8080);
        assert_eq!(c.server.grpc_listen_port, 9095);
        assert_eq!(c.ingester.ring.replication_factor, 3);
        assert_eq!(
            c.blocks_storage.tsdb.retention_period,
            GoDuration::hours(13)
        );
        assert_eq!(c.blocks_storage.tsdb.block_range_ms(), 2 * 3600 * 1000);
        assert_eq!(c.limits.max_label_names_per_series, 30);
        assert_eq!(c.limits.creation_grace_period, GoDuration::minutes(10));
        assert_eq!(c.compression.hot, Compression::Snappy);
        assert_eq!(c.querier.cache_max_bytes, 10 << 30);
    }

    #[test]
    fn querier_cache_max_bytes_is_validated_naming_the_key() {
        let c = Config::from_yaml("querier: {cache_max_bytes: 1073741824}\n", "t").unwrap();
        assert_eq!(c.querier.cache_max_bytes, 1 << 30);
        let err = Config::from_yaml("querier: {cache_max_bytes: 1000}\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("querier.cache_max_bytes"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let err = Config::from_yaml("blocks_storage:\n  tsdb:\n    dirr: /x\n", "rimir.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dirr"), "{err}");
        assert!(err.contains("rimir.yaml"), "{err}");
    }

    #[test]
    fn go_durations_parse_and_print() {
        for (s, secs, back) in [
            ("2h", 7200, "2h"),
            ("13h", 46800, "13h"),
            ("10m", 600, "10m"),
            ("1h30m", 5400, "1h30m"),
            ("90s", 90, "1m30s"),
        ] {
            let d: GoDuration = s.parse().unwrap();
            assert_eq!(d.0.as_secs(), secs, "{s}");
            assert_eq!(d.to_string(), back);
        }
        assert_eq!("500ms".parse::<GoDuration>().unwrap().0.as_millis(), 500);
        assert!("2x".parse::<GoDuration>().is_err());
        assert!("h".parse::<GoDuration>().is_err());
        assert!("".parse::<GoDuration>().is_err());
    }

    #[test]
    fn full_file_parses_and_round_trips_through_yaml() {
        let text = r#"
target: ingester
multitenancy_enabled: true
server: {http_listen_port: 9000, grpc_listen_port: 9001}
blocks_storage:
  backend: s3
  s3: {bucket_name: b, region: eu-west-1, endpoint: "http://127.0.0.1:5000"}
  tsdb: {dir: /var/tsdb, block_ranges_period: [2h], retention_period: 6h}
ingester:
  ring:
    replication_factor: 1
    instances: [{id: ingester-0, addr: "127.0.0.1:9095", zone: a}]
    join_members: ["dns+ingesters:9095"]
limits: {ingestion_rate: 5, max_label_names_per_series: 10}
overrides:
  big: {ingestion_rate: 1000000}
compression: {hot: none}
"#;
        let c = Config::from_yaml(text, "t").unwrap();
        assert_eq!(c.target, Target::Ingester);
        assert_eq!(c.blocks_storage.backend, Backend::S3);
        assert_eq!(c.ingester.ring.instances[0].zone, "a");
        let again = Config::from_yaml(&c.to_yaml(), "again").unwrap();
        assert_eq!(again, c);
        let tl = c.tenant_limits().unwrap();
        assert_eq!(tl.get("big").ingestion_rate, 1e6);
        assert_eq!(tl.get("big").max_label_names_per_series, 10);
        assert_eq!(tl.get("other").ingestion_rate, 5.0);
    }

    #[test]
    fn override_with_unknown_limit_is_rejected() {
        let err = Config::from_yaml("overrides:\n  t1: {ingestion_rat: 3}\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("overrides.t1") && err.contains("ingestion_rat"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rimir.yaml");
        std::fs::write(&p, "target: ingester\nserver: {http_listen_port: 1}\n").unwrap();
        let flags = Flags {
            config_file: Some(p),
            http_listen_port: Some(2),
            instances: vec!["i0=127.0.0.1:1@z1".into()],
            ..Default::default()
        };
        let c = flags.resolve().unwrap();
        assert_eq!(c.target, Target::Ingester);
        assert_eq!(c.server.http_listen_port, 2);
        assert_eq!(c.ingester.ring.instances[0].id, "i0");
        assert_eq!(c.ingester.ring.instances[0].zone, "z1");
    }

    #[test]
    fn ha_tracker_keys_parse_and_a_failover_shorter_than_the_refresh_is_refused() {
        let c = Config::from_yaml(
            "distributor:\n  ha_tracker:\n    enable_ha_tracker: true\n    ha_tracker_failover_timeout: 1m\n\
             limits: {accept_ha_samples: true}\n\
             overrides:\n  team: {ha_cluster_label: dc, ha_replica_label: prom_replica}\n",
            "test",
        )
        .unwrap();
        assert!(c.distributor.ha_tracker.enable_ha_tracker);
        assert_eq!(
            c.distributor.ha_tracker.ha_tracker_update_timeout,
            GoDuration::seconds(15)
        );
        let tl = c.tenant_limits().unwrap();
        assert_eq!(
            (
                tl.get("team").ha_cluster_label.as_str(),
                tl.get("team").ha_replica_label.as_str()
            ),
            ("dc", "prom_replica")
        );
        assert!(
            tl.get("team").accept_ha_samples,
            "the default applies under the override"
        );
        assert_eq!(tl.get("other").ha_replica_label, "__replica__");
        let e = Config::from_yaml(
            "distributor: {ha_tracker: {ha_tracker_update_timeout: 20s, ha_tracker_failover_timeout: 24s}}\n",
            "test",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ha_tracker_failover_timeout (24s) must be greater than ha_tracker_update_timeout (20s) plus ha_tracker_update_timeout_jitter_max (5s)"),
            "{e}"
        );
        let flags = Flags {
            ha_tracker_enable: Some(true),
            ha_replica_label: Some("replica".into()),
            ha_tracker_failover_timeout: Some(GoDuration::seconds(40)),
            ..Default::default()
        };
        let c = flags.resolve().unwrap();
        assert!(c.distributor.ha_tracker.enable_ha_tracker);
        assert_eq!(c.limits.ha_replica_label, "replica");
        assert_eq!(
            c.distributor.ha_tracker.ha_tracker_failover_timeout,
            GoDuration::seconds(40)
        );
    }
}
