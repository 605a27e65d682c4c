//! The compactor as users run it: `rimir --target=compactor --compactor.run-once` on a
//! filesystem bucket and on S3 (moto). Replica blocks merge into one block that promtool reads,
//! cold compression shrinks blocks that `rimir tsdb decompress` restores, jobs too big for the
//! data directory are skipped with a message, and SIGKILL at random moments never loses or
//! duplicates data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use rimir_e2e::moto::{MotoServer, child_env};
use rimir_e2e::rimir::{Rimir, get};
use rimir_e2e::{run_ok, workspace_bin};
use rimir_tsdb::block::{Block, BlockOptions, read_meta, write_block};
use rimir_tsdb::labels::{Labels, MatchType, Matcher};
use rimir_tsdb::series::Sample;

const H: i64 = 3_600_000;
const TENANT: &str = "anonymous";

type Data = Vec<(Labels, Vec<Sample>)>;

fn data(series: usize, from: i64, to: i64, step: i64) -> Data {
    (0..series)
        .map(|i| {
            let l = Labels::from_pairs([
                ("__name__", "node_cpu_seconds_total".to_string()),
                ("cpu", i.to_string()),
            ]);
            let s = (from..to)
                .step_by(step as usize)
                .map(|t| (t, (t / step) as f64 * 0.25 + i as f64))
                .collect();
            (l, s)
        })
        .collect()
}

fn window(d: &Data, from: i64, to: i64) -> Data {
    d.iter()
        .map(|(l, s)| {
            let s = s
                .iter()
                .copied()
                .filter(|(t, _)| *t >= from && *t < to)
                .collect();
            (l.clone(), s)
        })
        .collect()
}

fn config(dir: &Path, bucket: &str, cold: &str, extra: &str) -> PathBuf {
    let work = dir.join("work");
    let p = dir.join("rimir.yaml");
    std::fs::write(
        &p,
        format!(
            "target: compactor\n{bucket}\ncompactor:\n  data_dir: {}\n  deletion_delay: 0s\n{extra}compression:\n  cold: {cold}\n",
            work.display()
        ),
    )
    .unwrap();
    p
}

fn fs_bucket(dir: &Path) -> String {
    format!(
        "blocks_storage:\n  backend: filesystem\n  filesystem:\n    dir: {}\n",
        dir.display()
    )
}

fn compactor(cfg: &Path) -> Command {
    let mut c = Command::new(workspace_bin("rimir"));
    c.arg(format!("--config.file={}", cfg.display()))
        .arg("--compactor.run-once")
        .env("RUST_LOG", "warn");
    c
}

/// Live blocks of a tenant in a filesystem bucket: meta.json present, no deletion mark.
fn live_blocks(tenant_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tenant_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.join("meta.json").is_file() && !p.join("deletion-mark.json").exists());
    v.sort();
    v
}

/// Every sample of the given blocks, series merged; duplicates across blocks kept (so a
/// duplicate would show up as a repeated timestamp).
fn read_all(blocks: &[PathBuf]) -> Data {
    let all = Matcher::new(MatchType::Regex, "__name__", ".+").unwrap();
    let mut m: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    for b in blocks {
        let b = Block::open(b).unwrap();
        for s in b
            .select(std::slice::from_ref(&all), i64::MIN, i64::MAX)
            .unwrap()
        {
            m.entry(s.labels).or_default().extend(s.samples);
        }
    }
    m.into_iter()
        .map(|(l, mut s)| {
            s.sort_by_key(|x| x.0);
            (l, s)
        })
        .collect()
}

fn sorted(mut d: Data) -> Data {
    d.sort_by(|a, b| a.0.cmp(&b.0));
    d
}

/// Every object key of a filesystem bucket, through the store's own listing.
fn rt_list(bucket: &Path) -> Vec<String> {
    let store = rimir_objstore::FilesystemStore::new(bucket).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(rimir_objstore::ObjectStore::list(&store, "", false))
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            rimir_objstore::ListEntry::Object { key, .. } => Some(key),
            _ => None,
        })
        .collect()
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

#[test]
fn replica_blocks_merge_into_one_plain_block_promtool_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let tenant = bucket.join(TENANT);
    let input = data(40, 0, 2 * H, 15_000);
    for _ in 0..3 {
        write_block(&tenant, input.clone(), &BlockOptions::default()).unwrap();
    }
    let replica = tmp.path().join("replica");
    write_block(&replica, input.clone(), &BlockOptions::default()).unwrap();
    let cfg = config(tmp.path(), &fs_bucket(&bucket), "none", "");
    let out = stdout(&mut compactor(&cfg));
    assert!(out.contains("jobs=1"), "{out}");
    let live = live_blocks(&tenant);
    assert_eq!(live.len(), 1, "{out}");
    let meta = read_meta(&live[0]).unwrap();
    assert_eq!(meta.compaction.sources.len(), 3);
    assert!(meta.rimir.is_none(), "cold: none writes plain blocks");
    // The merged block, alone in a directory, for the tools.
    let merged = tmp.path().join("merged");
    std::fs::create_dir_all(merged.join("wal")).unwrap();
    std::fs::rename(&live[0], merged.join(&meta.ulid)).unwrap();
    let rimir_dump = |d: &Path| {
        stdout(
            Command::new(workspace_bin("rimir"))
                .args(["tsdb", "dump"])
                .arg(d),
        )
    };
    assert_eq!(rimir_dump(&merged), rimir_dump(&replica));
    let analyze = stdout(
        Command::new("promtool")
            .args(["tsdb", "analyze"])
            .arg(&merged)
            .arg(&meta.ulid),
    );
    assert!(
        analyze.contains(&format!("Block ID: {}", meta.ulid)),
        "{analyze}"
    );
    let promtool_dump = stdout(Command::new("promtool").args(["tsdb", "dump"]).arg(&merged));
    assert_eq!(promtool_dump, rimir_dump(&replica));
    // The next run deletes the three marked sources (deletion delay 0).
    stdout(&mut compactor(&cfg));
    let left: Vec<_> = std::fs::read_dir(&tenant)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && e.file_name() != "markers")
        .collect();
    assert!(left.is_empty(), "sources not deleted: {left:?}");
}

#[test]
fn gzip_cold_blocks_are_smaller_and_decompress_to_what_promtool_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let tenant = bucket.join(TENANT);
    let input = data(40, 0, 2 * H, 15_000);
    for _ in 0..2 {
        write_block(&tenant, input.clone(), &BlockOptions::default()).unwrap();
    }
    let cfg = config(tmp.path(), &fs_bucket(&bucket), "gzip", "");
    let out = stdout(&mut compactor(&cfg));
    let field = |name: &str| -> u64 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {out}"))
    };
    assert!(
        field("bytes_stored") * 10 < field("bytes_plain") * 8,
        "gzip saves < 20%: {out}"
    );
    let live = live_blocks(&tenant);
    assert_eq!(live.len(), 1);
    assert_eq!(
        read_meta(&live[0]).unwrap().rimir.unwrap().compression,
        "gzip"
    );
    // rimir reads the compressed block directly …
    assert!(read_all(&live) == sorted(input.clone()));
    // … and `rimir tsdb decompress` gives promtool a plain block.
    let only = tmp.path().join("only");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::rename(&live[0], only.join(live[0].file_name().unwrap())).unwrap();
    let plain = tmp.path().join("plain");
    run_ok(
        Command::new(workspace_bin("rimir"))
            .args(["tsdb", "decompress"])
            .arg(&only)
            .arg(&plain),
    );
    // Each file is a multi-member gzip stream (one member per frame) that the standard tool
    // decompresses to exactly the plain file.
    let id = live[0].file_name().unwrap();
    for rel in ["index", "chunks/000001"] {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(only.join(id).join(rel))
            .output()
            .unwrap();
        assert!(out.status.success(), "gzip -dc {rel}: {out:?}");
        assert!(
            out.stdout == std::fs::read(plain.join(id).join(rel)).unwrap(),
            "gzip -dc {rel} differs from rimir tsdb decompress"
        );
    }
    std::fs::create_dir_all(plain.join("wal")).unwrap();
    let theirs = stdout(Command::new("promtool").args(["tsdb", "dump"]).arg(&plain));
    let ours = stdout(
        Command::new(workspace_bin("rimir"))
            .args(["tsdb", "dump"])
            .arg(&only),
    );
    assert_eq!(theirs, ours);
    assert_eq!(theirs.lines().count(), 40 * 480);
}

#[test]
fn job_too_big_for_the_data_dir_is_skipped_with_a_message_and_others_run() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    for _ in 0..2 {
        write_block(
            &bucket.join("big"),
            data(300, 0, 2 * H, 15_000),
            &BlockOptions::default(),
        )
        .unwrap();
        write_block(
            &bucket.join("small"),
            data(2, 0, 2 * H, 60_000),
            &BlockOptions::default(),
        )
        .unwrap();
    }
    let cfg = config(
        tmp.path(),
        &fs_bucket(&bucket),
        "gzip",
        "  max_data_dir_bytes: 100000\n",
    );
    let out = stdout(&mut compactor(&cfg));
    assert!(out.contains("jobs=1") && out.contains("skipped=1"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("skipped:"))
        .expect("a skipped line");
    assert!(
        line.contains("tenant big") && line.contains("needs") && line.contains("available"),
        "{line}"
    );
    assert_eq!(live_blocks(&bucket.join("small")).len(), 1);
    assert_eq!(live_blocks(&bucket.join("big")).len(), 2);
}

#[test]
fn sigkill_at_random_moments_never_loses_or_duplicates_data() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let tenant = bucket.join(TENANT);
    let input = data(20, 0, 24 * H, 60_000);
    // Twelve 2h windows, each from two replicas: 24 blocks that end as one 24h block.
    for w in 0..12 {
        for _ in 0..2 {
            write_block(
                &tenant,
                window(&input, w * 2 * H, (w + 1) * 2 * H),
                &BlockOptions::default(),
            )
            .unwrap();
        }
    }
    let want = sorted(input.clone());
    let cfg = config(
        tmp.path(),
        &fs_bucket(&bucket),
        "gzip",
        "  partial_block_deletion_delay: 0s\n",
    );
    let mut rng = rand::rng();
    for i in 0..20 {
        let mut child = compactor(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..600)));
        let _ = child.kill();
        let _ = child.wait();
        let live = live_blocks(&tenant);
        let got = read_all(&live);
        // Overlapping live blocks may hold the same samples until the next run merges them;
        // what readers see after merging must be exactly the input.
        let merged: Data = got
            .into_iter()
            .map(|(l, mut s)| {
                s.dedup_by_key(|x| x.0);
                (l, s)
            })
            .collect();
        assert!(merged == want, "data changed after kill {i}");
    }
    stdout(&mut compactor(&cfg));
    stdout(&mut compactor(&cfg));
    let live = live_blocks(&tenant);
    assert_eq!(live.len(), 1, "one 24h block in the end: {live:?}");
    let meta = read_meta(&live[0]).unwrap();
    assert_eq!(
        meta.stats.num_samples,
        (20 * 24 * 60) as u64,
        "no duplicate samples"
    );
    assert!(read_all(&live) == want);
    // Partial uploads, as the bucket shows them: objects under a block prefix without
    // meta.json (a killed write's temporary file is not an object of the bucket).
    let partials: Vec<String> = rt_list(&bucket)
        .into_iter()
        .filter(|k| k.matches('/').count() >= 2)
        .filter_map(|k| k.split('/').nth(1).map(String::from))
        .filter(|id| id != "markers" && !tenant.join(id).join("meta.json").exists())
        .collect();
    assert!(partials.is_empty(), "partial uploads left: {partials:?}");
}

#[test]
fn compactor_merges_replicas_in_s3() {
    let moto = MotoServer::shared();
    let bucket_name = "rimir-compactor-e2e";
    let client = moto.s3_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        client
            .create_bucket()
            .bucket(bucket_name)
            .send()
            .await
            .unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let input = data(10, 0, 2 * H, 30_000);
    let store =
        rimir_objstore::S3Store::new(&moto.s3_config(bucket_name), &moto.sdk_config()).unwrap();
    for _ in 0..3 {
        let local = tmp.path().join("local");
        let m = write_block(&local, input.clone(), &BlockOptions::default()).unwrap();
        rt.block_on(rimir_objstore::upload_block(
            &store,
            TENANT,
            &local.join(&m.ulid),
        ))
        .unwrap();
    }
    let s3 = format!(
        "blocks_storage:\n  backend: s3\n  s3:\n    bucket_name: {bucket_name}\n    region: us-east-1\n    endpoint: {}\n    force_path_style: true\n",
        moto.endpoint()
    );
    let cfg = config(tmp.path(), &s3, "gzip", "");
    let mut cmd = compactor(&cfg);
    for (k, v) in child_env() {
        cmd.env(k, v);
    }
    let out = stdout(&mut cmd);
    assert!(out.contains("jobs=1"), "{out}");
    let blocks = rt
        .block_on(rimir_objstore::list_blocks(&store, TENANT))
        .unwrap();
    assert_eq!(blocks.len(), 4);
    let mut live = Vec::new();
    for b in &blocks {
        let mark = format!("{TENANT}/{b}/deletion-mark.json");
        if rt
            .block_on(rimir_objstore::ObjectStore::head(&store, &mark))
            .unwrap()
            .is_none()
        {
            live.push(b.clone());
        }
    }
    assert_eq!(live.len(), 1);
    let dl = tmp.path().join("dl");
    rt.block_on(rimir_objstore::download_block(
        &store,
        TENANT,
        &live[0],
        &dl.join(&live[0]),
    ))
    .unwrap();
    assert!(read_all(&[dl.join(&live[0])]) == sorted(input.clone()));
    let idx = rt
        .block_on(rimir::compactor::read_bucket_index(&store, TENANT))
        .unwrap();
    assert_eq!(idx, live);

    // A querier reads the gzip block in place: ranged GETs of its frames, no download.
    let args = vec![
        "--target=querier".to_string(),
        "--blocks-storage.backend=s3".into(),
        format!("--blocks-storage.s3.bucket-name={bucket_name}"),
        format!("--blocks-storage.s3.endpoint={}", moto.endpoint()),
        "--blocks-storage.s3.region=us-east-1".into(),
    ];
    let querier = Rimir::start_with_env(&args, None, tmp.path(), "querier", &child_env());
    querier.wait_ready();
    let (code, body) = get(&format!(
        "{}/prometheus/api/v1/query?query=node_cpu_seconds_total%7Bcpu%3D%223%22%7D%5B3h%5D&time=7200",
        querier.url
    ));
    assert_eq!(code, 200, "{body}\n{}", querier.log_text());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<(i64, f64)> = v["data"]["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|p| {
            (
                (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                p[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got, input[3].1,
        "the compacted series from the compressed block"
    );
    let (_, metrics) = get(&format!("{}/metrics", querier.url));
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("rimir_querier_bucket_block_downloads_total"), 0.0);
    assert!(value("rimir_querier_bucket_range_requests_total") > 0.0);
    assert!(value("rimir_querier_frame_cache_misses_total") > 0.0);
}
