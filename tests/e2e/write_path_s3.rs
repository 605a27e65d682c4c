//! `rimir --target=all` with the `s3` backend against a moto server: a pushed and flushed block
//! lands as `<tenant>/<ULID>/{meta.json,index,chunks/…}` and is listed as a complete block.

use rimir_e2e::moto::{MotoServer, child_env};
use rimir_e2e::rimir::{Rimir, now_ms, snappy, write_request};
use rimir_objstore::{ObjectStore, S3Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_block_lands_under_tenant_and_ulid_in_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("rimir-blocks").await;
    let tmp = tempfile::tempdir().unwrap();
    let rimir = Rimir::start_with_env(
        &[
            "--target=all".into(),
            "--auth.multitenancy-enabled=true".into(),
            "--blocks-storage.backend=s3".into(),
            "--blocks-storage.s3.bucket-name=rimir-blocks".into(),
            format!("--blocks-storage.s3.endpoint={}", moto.endpoint()),
            "--blocks-storage.s3.region=us-east-1".into(),
            format!(
                "--blocks-storage.tsdb.dir={}",
                tmp.path().join("tsdb").display()
            ),
        ],
        None,
        tmp.path(),
        "rimir",
        &child_env(),
    );
    tokio::task::spawn_blocking(move || {
        rimir.wait_ready();
        let t = now_ms();
        let body = write_request(&[(
            vec![("__name__", "up".to_string()), ("job", "s3".to_string())],
            (0..5).map(|i| (t - 5000 + i * 1000, 1.0)).collect(),
        )]);
        let (code, msg) = rimir.push(Some("tenant-1"), &snappy(&body));
        assert_eq!(code, 200, "{msg}");
        rimir.flush();
    })
    .await
    .unwrap();

    let store = S3Store::new(&moto.s3_config("rimir-blocks"), &moto.sdk_config()).unwrap();
    let blocks = rimir_objstore::list_blocks(&store, "tenant-1")
        .await
        .unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let ulid = &blocks[0];
    assert_eq!(ulid.len(), 26, "a ULID: {ulid}");
    let keys: Vec<String> = store
        .list(&format!("tenant-1/{ulid}/"), false)
        .await
        .unwrap()
        .iter()
        .map(|e| e.key().to_string())
        .collect();
    for want in ["meta.json", "index", "chunks/000001"] {
        assert!(
            keys.contains(&format!("tenant-1/{ulid}/{want}")),
            "{want} missing from {keys:?}"
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(
        &rimir_objstore::read_meta_json(&store, "tenant-1", ulid)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["stats"]["numSamples"], 5);
}
