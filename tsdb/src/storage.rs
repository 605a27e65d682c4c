//! Binds the ingester to the storage engine: a tenant's [`Tsdb`] is a [`Head`] (WAL in
//! `<tenant>/head/wal`), blocks are written by [`block::write_block`] next to it, and shipped by
//! [`objstore::upload_block`] (`meta.json` last) to the configured bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::block::{self, BlockOptions};
use crate::config::{Backend, Compression, Config};
use crate::head::{Head, HeadOptions, SeriesSamples};
use crate::ingester::{Appended, BoxFuture, Shipper, Tsdb, TsdbOpener};
use crate::labels::Matcher;
use crate::objstore::{self, BucketConfig, ObjectStore};
use crate::series::Series;
use crate::server::Storage;

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
                .get_or_try_init(|| objstore::open_bucket(&self.config))
                .await
                .map_err(|e| e.to_string())?;
            objstore::upload_block(store.as_ref(), tenant, block_dir)
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
            Backend::Filesystem => objstore::Backend::Filesystem,
            Backend::S3 => objstore::Backend::S3,
        },
        objstore::FilesystemConfig {
            dir: b.filesystem.dir.clone(),
        },
        objstore::S3Config {
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

/// Builds the ingester's storage from the config.
pub fn open(cfg: &Config) -> Result<Storage, String> {
    let mut opts = HeadOptions {
        chunk_range_ms: cfg.blocks_storage.tsdb.block_range_ms(),
        ..HeadOptions::default()
    };
    opts.wal.compression = match cfg.compression.hot {
        Compression::None => crate::wal::Compression::None,
        _ => crate::wal::Compression::Snappy,
    };
    let open: Box<TsdbOpener> = Box::new(move |dir: &Path| {
        let (head, report) = Head::open(dir, opts.clone()).map_err(|e| e.to_string())?;
        tracing::info!(dir = %dir.display(), ?report, "head opened");
        Ok(Arc::new(HeadTsdb { head }) as Arc<dyn Tsdb>)
    });
    let shipper = Arc::new(BucketShipper {
        config: bucket_config(cfg)?,
        store: OnceCell::new(),
    });
    Ok((open, shipper))
}
