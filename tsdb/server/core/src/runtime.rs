//! Runtime configuration: the per-tenant limits in force, rebuilt from Mimir's runtime-config
//! file (`runtime_config.file`, `overrides: {tenant: {limit: value}}`) every
//! `runtime_config.period`, so a change of limits applies without restarting anything.
//!
//! A file that cannot be read or parsed (unknown key, bad value) keeps the last good limits in
//! force: the failure is logged naming the file and the key, and
//! `rimir_runtime_config_last_reload_successful` drops to 0 until a good file is read. At
//! start a bad file is an error, so a process never starts with limits it was not given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use thiserror::Error;

use crate::config::{Config, ConfigError, TenantLimits};

/// The runtime-config file could not be turned into limits.
#[derive(Debug, Error)]
pub enum RuntimeConfigError {
    /// The file could not be read.
    #[error("reading runtime config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or holds a key other than `overrides`.
    #[error("parsing runtime config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message names the key and the line.
        source: serde_yaml::Error,
    },
    /// A tenant's override names an unknown limit or holds a bad value.
    #[error("runtime config file {path}: {source}")]
    Limits {
        /// The file.
        path: PathBuf,
        /// Names the tenant and the key.
        source: ConfigError,
    },
}

/// The runtime-config file's format (the parts of Mimir's that rimir reads).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    /// Tenant → limits that differ from the defaults.
    #[serde(default)]
    overrides: BTreeMap<String, serde_yaml::Mapping>,
}

/// Reload outcomes, served on `/metrics`.
#[derive(Default)]
struct ReloadMetrics {
    last_successful: Gauge,
    reloads: Family<Vec<(&'static str, String)>, Counter>,
}

/// The limits in force, swapped whole when the runtime-config file changes.
pub struct RuntimeLimits {
    cfg: Arc<Config>,
    current: RwLock<Arc<TenantLimits>>,
    /// The text the current limits were built from (None: no file).
    applied: RwLock<Option<String>>,
    metrics: ReloadMetrics,
}

impl RuntimeLimits {
    /// The limits of `cfg`, with the runtime-config file (if any) applied; fails on a file that
    /// cannot be read or parsed.
    pub fn load(cfg: Arc<Config>) -> Result<Self, RuntimeConfigError> {
        let (limits, text) = match &cfg.runtime_config.file {
            None => (
                cfg.tenant_limits()
                    .map_err(|source| RuntimeConfigError::Limits {
                        path: PathBuf::from("<config>"),
                        source,
                    })?,
                None,
            ),
            Some(path) => {
                let text = read(path)?;
                (build(&cfg, path, &text)?, Some(text))
            }
        };
        let metrics = ReloadMetrics::default();
        metrics.last_successful.set(1);
        Ok(Self {
            cfg,
            current: RwLock::new(Arc::new(limits)),
            applied: RwLock::new(text),
            metrics,
        })
    }

    /// The limits in force now; a request holds one snapshot from start to end.
    pub fn snapshot(&self) -> Arc<TenantLimits> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; `Ok(true)` when the limits changed. On error the limits in force
    /// are kept.
    pub fn reload(&self) -> Result<bool, RuntimeConfigError> {
        let Some(path) = &self.cfg.runtime_config.file else {
            return Ok(false);
        };
        let outcome = read(path).and_then(|text| {
            let unchanged = self
                .applied
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                == Some(&*text);
            if unchanged {
                return Ok(false);
            }
            let limits = build(&self.cfg, path, &text)?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
            *self.applied.write().unwrap_or_else(|e| e.into_inner()) = Some(text);
            Ok(true)
        });
        let result = if outcome.is_ok() {
            "success"
        } else {
            "failure"
        };
        self.metrics.last_successful.set(i64::from(outcome.is_ok()));
        self.metrics
            .reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        outcome
    }

    /// Registers `rimir_runtime_config_last_reload_successful` and
    /// `rimir_runtime_config_reloads_total{result}`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rimir_runtime_config_last_reload_successful",
            "Whether the last read of the runtime-config file gave valid limits (1) or not (0)",
            self.metrics.last_successful.clone(),
        );
        r.register(
            "rimir_runtime_config_reloads",
            "Reads of the runtime-config file, by result",
            self.metrics.reloads.clone(),
        );
    }

    /// Rereads the file every `runtime_config.period` until `stop` turns true.
    pub fn run(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> crate::BoxFuture<'static, ()> {
        Box::pin(async move {
            if self.cfg.runtime_config.file.is_none() {
                return;
            }
            let every = self
                .cfg
                .runtime_config
                .period
                .0
                .max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                match self.reload() {
                    Ok(true) => tracing::info!("runtime config reloaded: new limits in force"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "runtime config not applied; the last good limits stay in force")
                    }
                }
            }
        })
    }
}

fn read(path: &Path) -> Result<String, RuntimeConfigError> {
    std::fs::read_to_string(path).map_err(|source| RuntimeConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn build(cfg: &Config, path: &Path, text: &str) -> Result<TenantLimits, RuntimeConfigError> {
    let file: RuntimeFile = if text.trim().is_empty() {
        RuntimeFile::default()
    } else {
        serde_yaml::from_str(text).map_err(|source| RuntimeConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?
    };
    cfg.tenant_limits_with(&file.overrides, "runtime_config.overrides")
        .map_err(|source| RuntimeConfigError::Limits {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(file: &Path, yaml: &str) -> Arc<Config> {
        let mut c = Config::from_yaml(yaml, "test").unwrap();
        c.runtime_config.file = Some(file.to_path_buf());
        Arc::new(c)
    }

    fn gather(r: &RuntimeLimits) -> String {
        let mut reg = Registry::default();
        r.register(&mut reg);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
        s
    }

    #[test]
    fn file_overrides_apply_on_top_of_the_config_and_reload_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("runtime.yaml");
        std::fs::write(&f, "overrides:\n  t1:\n    ingestion_rate: 7\n").unwrap();
        let c = cfg(
            &f,
            "limits: {ingestion_rate: 100, ingestion_burst_size: 1000}\noverrides:\n  t1: {ingestion_burst_size: 50}\n",
        );
        let r = RuntimeLimits::load(c).unwrap();
        let s = r.snapshot();
        // Key by key: the file's rate, the config's burst for t1; defaults for others.
        assert_eq!(s.get("t1").ingestion_rate, 7.0);
        assert_eq!(s.get("t1").ingestion_burst_size, 50);
        assert_eq!(s.get("t2").ingestion_rate, 100.0);

        assert!(!r.reload().unwrap(), "an unchanged file changes nothing");
        std::fs::write(
            &f,
            "overrides:\n  t1: {ingestion_rate: 9}\n  t2: {ingestion_rate: 3}\n",
        )
        .unwrap();
        assert!(r.reload().unwrap());
        let s2 = r.snapshot();
        assert_eq!(s2.get("t1").ingestion_rate, 9.0);
        assert_eq!(s2.get("t2").ingestion_rate, 3.0);
        // A snapshot taken before the reload is unchanged (a request sees one set of limits).
        assert_eq!(s.get("t1").ingestion_rate, 7.0);
        assert!(gather(&r).contains("rimir_runtime_config_last_reload_successful 1"));
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_limits_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("runtime.yaml");
        std::fs::write(&f, "overrides:\n  t1: {ingestion_rate: 7}\n").unwrap();
        let r = RuntimeLimits::load(cfg(&f, "{}")).unwrap();

        std::fs::write(&f, "overrides:\n  t1: {ingestion_rat: 8}\n").unwrap();
        let err = r.reload().unwrap_err().to_string();
        assert!(
            err.contains("runtime_config.overrides.t1") && err.contains("ingestion_rat"),
            "{err}"
        );
        assert_eq!(r.snapshot().get("t1").ingestion_rate, 7.0);
        let m = gather(&r);
        assert!(
            m.contains("rimir_runtime_config_last_reload_successful 0"),
            "{m}"
        );
        assert!(
            m.contains("rimir_runtime_config_reloads_total{result=\"failure\"} 1"),
            "{m}"
        );

        std::fs::write(&f, "overides: {}\n").unwrap();
        let err = r.reload().unwrap_err().to_string();
        assert!(err.contains("overides"), "{err}");
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(r.reload(), Err(RuntimeConfigError::Read { .. })));
        assert_eq!(r.snapshot().get("t1").ingestion_rate, 7.0);

        std::fs::write(&f, "").unwrap();
        assert!(r.reload().unwrap(), "an empty file is valid: no overrides");
        assert_eq!(
            r.snapshot().get("t1").ingestion_rate,
            crate::config::Limits::default().ingestion_rate
        );
        assert!(gather(&r).contains("rimir_runtime_config_last_reload_successful 1"));
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("runtime.yaml");
        std::fs::write(&f, "overrides:\n  t1: {max_global_series_per_user: lots}\n").unwrap();
        let err = RuntimeLimits::load(cfg(&f, "{}"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("runtime.yaml") && err.contains("t1"), "{err}");
        let missing = dir.path().join("absent.yaml");
        assert!(matches!(
            RuntimeLimits::load(cfg(&missing, "{}")),
            Err(RuntimeConfigError::Read { .. })
        ));
    }
}
