//! Binds the ingester to the storage engine: a tenant's [`Tsdb`] is a [`Head`] (WAL in
//! `<tenant>/head/wal`), blocks are written by [`block::write_block`] next to it, and shipped by
//! [`rimir_objstore::upload_block`] (`meta.json` last) to the configured bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::ingester::{Appended, BoxFuture, Shipper, Tsdb, TsdbOpener};
use rimir_core::config::{Backend, Compression, Config};
use rimir_core::runtime::RuntimeLimits;
use rimir_objstore::{BucketConfig, ObjectStore};
use rimir_tsdb::block::{self, BlockOptions};
use rimir_tsdb::head::{Head, HeadOptions, SeriesSamples};
use rimir_tsdb::labels::Matcher;
use rimir_tsdb::series::Series;

/// The storage engine pieces an ingester needs, built from the config: how to open a tenant's
/// head, and where to ship its blocks.
pub type Storage = (Box<TsdbOpener>, Arc<dyn Shipper>);

/// A tenant's head.
struct HeadTsdb {
    head: Head,
}

impl Tsdb for HeadTsdb {
    fn append(&self, batch: &[SeriesSamples<'_>], max_series: u64) -> Result<Appended, String> {
        let max_series = usize::try_from(max_series).unwrap_or(usize::MAX);
        let s = self
            .head
            .append_refs(batch, max_series)
            .map_err(|e| e.to_string())?;
        Ok(Appended {
            refused: s.rejected_samples(),
            message: s.rejected.first().map(|r| r.message.clone()),
            series_limited: s.series_limited,
        })
    }

    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        self.head.select(matchers, mint, maxt)
    }

    fn num_series(&self) -> usize {
        self.head.num_series()
    }

    fn bounds(&self) -> Option<(i64, i64)> {
        Some((self.head.min_time()?, self.head.max_time()?))
    }

    fn write_block(&self, mint: i64, maxt: i64, parent: &Path) -> Result<Option<PathBuf>, String> {
        let series = self.head.series_for_block(mint, maxt);
        if series.is_empty() {
            return Ok(None);
        }
        let opts = BlockOptions {
            min_time: Some(mint),
            max_time: Some(maxt),
            source: "receive".into(),
            ..BlockOptions::default()
        };
        let meta = block::write_block(parent, series, &opts).map_err(|e| e.to_string())?;
        Ok(Some(parent.join(meta.ulid)))
    }

    fn truncate_before(&self, t: i64) -> Result<(), String> {
        self.head.truncate_before(t).map_err(|e| e.to_string())
    }
}

/// Ships blocks to the bucket, opened on first use (opening S3 loads the SDK config, which is
/// async).
struct BucketShipper {
    config: BucketConfig,
    store: OnceCell<Arc<dyn ObjectStore>>,
}

impl Shipper for BucketShipper {
    fn ship<'a>(
        &'a self,
        tenant: &'a str,
        block_dir: &'a Path,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let store = self
                .store
                .get_or_try_init(|| rimir_objstore::open_bucket(&self.config))
                .await
                .map_err(|e| e.to_string())?;
            rimir_objstore::upload_block(store.as_ref(), tenant, block_dir)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The object-store config of `blocks_storage`.
pub fn bucket_config(cfg: &Config) -> Result<BucketConfig, String> {
    let b = &cfg.blocks_storage;
    BucketConfig::select(
        match b.backend {
            Backend::Filesystem => rimir_objstore::Backend::Filesystem,
            Backend::S3 => rimir_objstore::Backend::S3,
        },
        rimir_objstore::FilesystemConfig {
            dir: b.filesystem.dir.clone(),
        },
        rimir_objstore::S3Config {
            bucket_name: b.s3.bucket_name.clone(),
            region: b.s3.region.clone(),
            endpoint: b.s3.endpoint.clone(),
            insecure: b.s3.insecure,
            force_path_style: b.s3.force_path_style,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// Builds the ingester's storage from the config. A tenant's out-of-order window is read from
/// `limits` when its head opens, so a head opened after a runtime-config reload follows it.
pub fn open(cfg: &Config, limits: &Arc<RuntimeLimits>) -> Result<Storage, String> {
    let mut opts = HeadOptions {
        chunk_range_ms: cfg.blocks_storage.tsdb.block_range_ms(),
        ..HeadOptions::default()
    };
    opts.wal.compression = match cfg.compression.hot {
        Compression::None => rimir_tsdb::wal::Compression::None,
        _ => rimir_tsdb::wal::Compression::Snappy,
    };
    let limits = limits.clone();
    let open: Box<TsdbOpener> = Box::new(move |tenant: &str, dir: &Path| {
        let mut opts = opts.clone();
        opts.out_of_order_window_ms = limits
            .snapshot()
            .get(tenant)
            .out_of_order_time_window
            .as_millis_i64();
        let (head, report) = Head::open(dir, opts).map_err(|e| e.to_string())?;
        tracing::info!(dir = %dir.display(), ?report, "head opened");
        Ok(Arc::new(HeadTsdb { head }) as Arc<dyn Tsdb>)
    });
    let shipper = Arc::new(BucketShipper {
        config: bucket_config(cfg)?,
        store: OnceCell::new(),
    });
    Ok((open, shipper))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingester::Ingester;
    use rimir_core::grpc::{
        IngesterService, MatcherPb, PushRequest, PushResponse, SeriesBatch, compress,
        compression_code,
    };
    use rimir_core::metrics::Metrics;
    use rimir_core::remote_write::{LabelRef, encode_series};
    use rimir_tsdb::series::Sample;

    fn limits(cfg: &Config) -> Arc<RuntimeLimits> {
        Arc::new(RuntimeLimits::load(Arc::new(cfg.clone())).unwrap())
    }

    /// An ingester over real heads (WAL and all) in `dir`.
    fn head_ingester(dir: &Path) -> Ingester {
        let mut cfg = Config::default();
        cfg.blocks_storage.tsdb.dir = dir.join("tsdb");
        cfg.blocks_storage.filesystem.dir = dir.join("bucket");
        let (open, shipper) = open(&cfg, &limits(&cfg)).unwrap();
        let ing = Ingester::new(&cfg, open, shipper, Arc::new(Metrics::new()));
        ing.replay().unwrap();
        ing
    }

    #[tokio::test(flavor = "current_thread")]
    async fn out_of_order_window_is_per_tenant_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::from_yaml(
            &format!(
                "blocks_storage:\n  tsdb:\n    dir: {tsdb}\n  filesystem:\n    dir: {bucket}\n\
                 overrides:\n  late:\n    out_of_order_time_window: 10m\n",
                tsdb = dir.path().join("tsdb").display(),
                bucket = dir.path().join("bucket").display(),
            ),
            "test",
        )
        .unwrap();
        let open_ingester = || {
            let (open, shipper) = open(&cfg, &limits(&cfg)).unwrap();
            let ing = Ingester::new(&cfg, open, shipper, Arc::new(Metrics::new()));
            ing.replay().unwrap();
            ing
        };
        async fn push(ing: &Ingester, tenant: &str, samples: Vec<Sample>) -> PushResponse {
            let up = [LabelRef {
                name: "__name__",
                value: "up",
            }];
            let mut batch = SeriesBatch::default();
            batch.push(&up, &samples);
            ing.push_local(tenant.to_string(), batch, 0).await.unwrap()
        }
        let t = 1_700_000_000_000i64;
        let stored = |ing: &Ingester, tenant: &str| {
            ing.select(
                tenant,
                &[MatcherPb {
                    kind: 0,
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                i64::MIN,
                i64::MAX,
            )
            .unwrap()
            .into_iter()
            .flat_map(|s| s.samples)
            .collect::<Vec<Sample>>()
        };
        let ing = open_ingester();
        for tenant in ["late", "strict"] {
            push(&ing, tenant, vec![(t, 1.0)]).await;
            // 5 minutes behind: inside "late"'s window, out of order for "strict".
            let a = push(&ing, tenant, vec![(t - 300_000, 2.0)]).await;
            let want = if tenant == "late" { (1, 0) } else { (0, 1) };
            assert_eq!(
                (a.samples_appended, a.samples_rejected),
                want,
                "{tenant}: {a:?}"
            );
            // 20 minutes behind: outside every window.
            let a = push(&ing, tenant, vec![(t - 1_200_000, 3.0)]).await;
            assert_eq!(
                (a.samples_appended, a.samples_rejected),
                (0, 1),
                "{tenant}: {a:?}"
            );
        }
        assert_eq!(stored(&ing, "late"), vec![(t - 300_000, 2.0), (t, 1.0)]);
        assert_eq!(stored(&ing, "strict"), vec![(t, 1.0)]);
        drop(ing);
        // The WAL replays the out-of-order sample.
        let ing = open_ingester();
        assert_eq!(stored(&ing, "late"), vec![(t - 300_000, 2.0), (t, 1.0)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn local_handoff_stores_exactly_what_the_grpc_push_stores() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (grpc, local) = (head_ingester(a.path()), head_ingester(b.path()));
        let lab = |name: &'static str, job: &'static str| {
            vec![
                LabelRef {
                    name: "__name__",
                    value: name,
                },
                LabelRef {
                    name: "job",
                    value: job,
                },
            ]
        };
        // Series limit 3: the fourth new series is refused; "up/a" goes back in time.
        let pushes: Vec<Vec<(Vec<LabelRef<'static>>, Vec<Sample>)>> = vec![
            vec![
                (lab("up", "a"), vec![(1000, 1.0), (2000, 2.0)]),
                (lab("up", "b"), vec![(1000, 5.0)]),
                (lab("üñí", "ç"), vec![(1500, -0.0)]),
                (lab("up", "c"), vec![(1000, 7.0)]),
            ],
            vec![
                (lab("up", "a"), vec![(1500, 9.0), (3000, 3.0)]),
                (lab("up", "b"), vec![(1000, 6.0)]),
            ],
        ];
        let mut answers = Vec::new();
        for series in &pushes {
            let mut payload = Vec::new();
            let mut batch = SeriesBatch::default();
            for (l, s) in series {
                encode_series(&mut payload, l, s);
                batch.push(l, s);
            }
            let via_grpc = grpc
                .push(PushRequest {
                    tenant: "t".into(),
                    compression: compression_code(Compression::Snappy),
                    payload: compress(Compression::Snappy, &payload).into(),
                    max_series: 3,
                    metadata: Vec::new(),
                })
                .await
                .unwrap();
            let via_local = local.push_local("t".into(), batch, 3).await.unwrap();
            assert_eq!(via_grpc, via_local);
            answers.push(via_local);
        }
        let counts: Vec<(u64, u64)> = answers
            .iter()
            .map(|a| (a.samples_appended, a.samples_rejected))
            .collect();
        assert_eq!(counts, [(4, 1), (1, 2)]);
        assert!(
            answers[0].errors[0].contains(r#"series limit of 3"#)
                && answers[0].errors[0].contains(r#"{__name__="up", job="c"}"#),
            "{:?}",
            answers[0].errors
        );
        assert!(
            answers[1].errors[0].contains("sample-out-of-order"),
            "{:?}",
            answers[1].errors
        );
        let all = |ing: &Ingester| {
            ing.select(
                "t",
                &[MatcherPb {
                    kind: 2,
                    name: "__name__".into(),
                    value: ".+".into(),
                }],
                i64::MIN,
                i64::MAX,
            )
            .unwrap()
        };
        let stored = all(&grpc);
        assert_eq!(stored, all(&local));
        let names: Vec<String> = stored.iter().map(|s| s.labels.to_string()).collect();
        assert_eq!(
            names,
            [
                r#"{__name__="up", job="a"}"#,
                r#"{__name__="up", job="b"}"#,
                r#"{__name__="üñí", job="ç"}"#
            ]
        );
        assert_eq!(
            stored[0].samples,
            vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)]
        );
    }
}
