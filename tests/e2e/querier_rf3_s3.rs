//! A querier process over three ingesters (RF=3) and S3 blocks (moto): after the ingesters flush
//! their replica blocks to S3 and take more samples, a query spanning both is continuous and
//! has every sample exactly once, the three replica blocks read from S3 deduplicated, with
//! ranged GETs through the querier's page cache and no whole-block download.

use rimir_e2e::free_port;
use rimir_e2e::moto::{MotoServer, child_env};
use rimir_e2e::rimir::{Rimir, now_ms, post, snappy, write_request};

/// The value of the sample `name` (no labels) in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

fn s3_args(moto: &MotoServer, bucket: &str) -> Vec<String> {
    vec![
        "--blocks-storage.backend=s3".into(),
        format!("--blocks-storage.s3.bucket-name={bucket}"),
        format!("--blocks-storage.s3.endpoint={}", moto.endpoint()),
        "--blocks-storage.s3.region=us-east-1".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_over_rf3_ingesters_and_s3_blocks_is_continuous_without_duplicates() {
    let moto = MotoServer::shared();
    let bucket = "rimir-querier-rf3";
    moto.create_bucket(bucket).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let moto2 = moto.clone();
    tokio::task::spawn_blocking(move || {
        let moto = moto2;
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let ingesters: Vec<Rimir> = (0..3)
            .map(|i| {
                let mut args = vec![
                    "--target=ingester".to_string(),
                    format!("--ingester.ring.instance-id=ingester-{i}"),
                    format!(
                        "--blocks-storage.tsdb.dir={}",
                        dir.join(format!("ingester-{i}")).display()
                    ),
                ];
                args.extend(s3_args(&moto, bucket));
                Rimir::start_with_env(
                    &args,
                    Some(ports[i]),
                    &dir,
                    &format!("ingester-{i}"),
                    &child_env(),
                )
            })
            .collect();
        let ring: Vec<String> = (0..3)
            .map(|i| format!("ingester-{i}=127.0.0.1:{}", ports[i]))
            .collect();
        let ring_args = vec![
            format!("--ingester.ring.instances={}", ring.join(",")),
            "--ingester.ring.replication-factor=3".to_string(),
        ];
        let distributor = Rimir::start(
            &[vec!["--target=distributor".to_string()], ring_args.clone()].concat(),
            None,
            &dir,
            "distributor",
        );
        let mut qargs = vec!["--target=querier".to_string()];
        qargs.extend(ring_args);
        qargs.extend(s3_args(&moto, bucket));
        let querier = Rimir::start_with_env(&qargs, None, &dir, "querier", &child_env());
        for i in &ingesters {
            i.wait_ready();
        }
        distributor.wait_ready();
        querier.wait_ready();

        let t = now_ms() / 1000 * 1000;
        // Stay inside the ingesters' current 2h block range.
        let base = (t - 60_000).max(t - t % 7_200_000);
        let n = ((t - base) / 1000).max(4);
        let push = |from: i64, to: i64| {
            for s in 0..5 {
                let samples: Vec<(i64, f64)> = (from..to)
                    .map(|i| (base + i * 1000, (i * 10 + s) as f64))
                    .collect();
                let body = snappy(&write_request(&[(
                    vec![("__name__", "rf3_total".to_string()), ("s", s.to_string())],
                    samples,
                )]));
                let (code, msg) = distributor.push(None, &body);
                assert_eq!(code, 200, "{msg}");
            }
        };
        push(0, n / 2);
        for i in &ingesters {
            let (code, msg) = post(&format!("{}/ingester/flush", i.url), &[], b"");
            assert_eq!(code, 200, "{msg}");
        }
        push(n / 2, n);

        let url = format!(
            "{}/prometheus/api/v1/query?query=rf3_total%5B10m%5D&time={}",
            querier.url,
            (base + n * 1000) / 1000 + 1
        );
        let (code, body) = rimir_e2e::rimir::get(&url);
        assert_eq!(code, 200, "{body}\n{}", querier.log_text());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let result = v["data"]["result"].as_array().unwrap();
        assert_eq!(result.len(), 5, "{body}");
        for r in result {
            let s: i64 = r["metric"]["s"].as_str().unwrap().parse().unwrap();
            let got: Vec<(i64, f64)> = r["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        (p[0].as_f64().unwrap() * 1000.0) as i64,
                        p[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            let want: Vec<(i64, f64)> = (0..n)
                .map(|i| (base + i * 1000, (i * 10 + s) as f64))
                .collect();
            assert_eq!(
                got, want,
                "series s={s}: every sample once, across blocks and ingesters"
            );
        }
        // The three replica blocks were read from S3 in place: ranged GETs through the page
        // cache under the querier's working directory, no whole-block download.
        let (code, metrics) = rimir_e2e::rimir::get(&format!("{}/metrics", querier.url));
        assert_eq!(code, 200, "{metrics}");
        let requests = metric(&metrics, "rimir_querier_bucket_range_requests_total");
        let fetched = metric(&metrics, "rimir_querier_bucket_fetched_bytes_total");
        assert!(
            requests >= 3.0,
            "one or more ranged GETs per block: {requests}"
        );
        assert!(fetched > 0.0, "{metrics}");
        assert_eq!(
            metric(&metrics, "rimir_querier_bucket_block_downloads_total"),
            0.0,
            "no block was downloaded whole"
        );
        assert!(metric(&metrics, "rimir_querier_page_cache_misses_total") > 0.0);
        let blocks: Vec<_> = std::fs::read_dir(dir.join("data/querier/anonymous"))
            .expect("the querier cached pages of the bucket's blocks")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("index.pages").is_dir())
            .collect();
        assert_eq!(blocks.len(), 3, "one block per replica: {blocks:?}");
        for b in &blocks {
            assert!(
                !b.path().join("meta.json").exists() && !b.path().join("index").exists(),
                "no whole-block copy in {:?}",
                b.path()
            );
        }
        // Asked again, the blocks are read from the local page cache.
        let (code, body) = rimir_e2e::rimir::get(&url);
        assert_eq!(code, 200, "{body}");
        let (_, metrics) = rimir_e2e::rimir::get(&format!("{}/metrics", querier.url));
        assert_eq!(
            metric(&metrics, "rimir_querier_bucket_range_requests_total"),
            requests,
            "the repeated query fetched nothing"
        );
        assert!(metric(&metrics, "rimir_querier_page_cache_hits_total") > 0.0);

        // Metric metadata goes to three ingesters and comes back once through the querier.
        let meta = rimir::remote_write::WriteRequest {
            metadata: vec![rimir::remote_write::MetricMetadata {
                r#type: 1,
                metric_family_name: "rf3_total".into(),
                help: "Pushed three times over.".into(),
                unit: String::new(),
            }],
            ..Default::default()
        };
        let (code, msg) = distributor.push(None, &snappy(&meta.encode_to_bytes()));
        assert_eq!(code, 200, "{msg}");
        let (code, body) = rimir_e2e::rimir::get(&format!(
            "{}/prometheus/api/v1/metadata",
            querier.url
        ));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"],
            serde_json::json!({"rf3_total": [{"type": "counter", "help": "Pushed three times over.", "unit": ""}]})
        );
    })
    .await
    .unwrap();
}

/// A querier over one large block in S3 (20 000 series): a query for one series fetches a small
/// part of the block with ranged GETs, never the whole block.
#[test]
fn selective_query_on_a_large_s3_block_fetches_a_small_part_of_it() {
    use rimir_objstore::{S3Store, upload_block};
    use rimir_tsdb::block::{BlockOptions, write_block};
    use rimir_tsdb::labels::Labels;

    let moto = MotoServer::shared();
    let bucket = "rimir-querier-ranged";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(moto.create_bucket(bucket));
    let tmp = tempfile::tempdir().unwrap();
    let base: i64 = 1_700_000_000_000;
    let n = 20_000;
    let series = (0..n)
        .map(|i| {
            let labels = Labels::from_pairs([
                ("__name__", format!("ranged_metric_{}", i % 7)),
                ("instance", format!("host-{i:05}")),
                ("job", format!("job-{}", i % 13)),
            ]);
            let samples = (0..240i64)
                .map(|j| (base + j * 15_000, ((i * 31 + j as usize * 7) % 1000) as f64))
                .collect();
            (labels, samples)
        })
        .collect();
    let meta = write_block(&tmp.path().join("local"), series, &BlockOptions::default()).unwrap();
    let store = S3Store::new(&moto.s3_config(bucket), &moto.sdk_config()).unwrap();
    let uploaded = rt
        .block_on(upload_block(
            &store,
            "anonymous",
            &tmp.path().join("local").join(&meta.ulid),
        ))
        .unwrap();

    let mut args = vec!["--target=querier".to_string()];
    args.extend(s3_args(&moto, bucket));
    let querier = Rimir::start_with_env(&args, None, tmp.path(), "querier", &child_env());
    querier.wait_ready();
    let url = format!(
        "{}/prometheus/api/v1/query?query=%7Binstance%3D%22host-12345%22%7D%5B1h%5D&time={}",
        querier.url,
        (base + 239 * 15_000) / 1000
    );
    let (code, body) = rimir_e2e::rimir::get(&url);
    assert_eq!(code, 200, "{body}\n{}", querier.log_text());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{body}");
    assert_eq!(result[0]["values"].as_array().unwrap().len(), 240);

    let (_, metrics) = rimir_e2e::rimir::get(&format!("{}/metrics", querier.url));
    let fetched = metric(&metrics, "rimir_querier_bucket_fetched_bytes_total");
    let requests = metric(&metrics, "rimir_querier_bucket_range_requests_total");
    eprintln!(
        "one series of {n} from S3: {fetched} of {} block bytes in {requests} ranged GETs",
        uploaded.bytes
    );
    assert_eq!(
        metric(&metrics, "rimir_querier_bucket_block_downloads_total"),
        0.0
    );
    assert!(requests > 0.0);
    assert!(
        fetched * 10.0 < uploaded.bytes as f64,
        "fetched {fetched} bytes of a {}-byte block",
        uploaded.bytes
    );
}
