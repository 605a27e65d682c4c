//! Vector-style remote-write clients against `rimir --target=all` with multitenancy: the GET
//! healthcheck passes, gzip and zstd bodies are accepted, and each `X-Scope-OrgID` tenant's
//! blocks land under its own prefix in the bucket; SIGTERM then stops the process cleanly. Also
//! the allocator set-up every `rimir` process starts with.

use std::io::Write;

use rimir_e2e::rimir::{Rimir, bucket_blocks, get, now_ms, post, promtool_dump, write_request};

#[test]
fn healthcheck_gzip_zstd_and_tenant_prefixes() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let mut rimir = Rimir::start(
        &[
            "--target=all".into(),
            "--auth.multitenancy-enabled=true".into(),
            format!("--blocks-storage.filesystem.dir={}", bucket.display()),
            format!(
                "--blocks-storage.tsdb.dir={}",
                tmp.path().join("tsdb").display()
            ),
        ],
        None,
        tmp.path(),
        "rimir",
    );
    rimir.wait_ready();
    let push_url = format!("{}/api/v1/push", rimir.url);

    assert_eq!(
        get(&push_url).0,
        200,
        "Vector's default healthcheck GETs the push URL"
    );

    let t = now_ms();
    let series = |tenant: &str| {
        write_request(&[(
            vec![
                ("__name__", "vector_events_total".to_string()),
                ("tenant", tenant.to_string()),
            ],
            (0..10).map(|i| (t - 10_000 + i * 1000, i as f64)).collect(),
        )])
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&series("team-a")).unwrap();
    let gz = gz.finish().unwrap();
    let zs = zstd::stream::encode_all(series("team-b").as_slice(), 3).unwrap();

    let (code, msg) = post(
        &push_url,
        &[("Content-Encoding", "gzip"), ("X-Scope-OrgID", "team-a")],
        &gz,
    );
    assert_eq!(code, 200, "{msg}");
    let (code, msg) = post(
        &push_url,
        &[("Content-Encoding", "zstd"), ("X-Scope-OrgID", "team-b")],
        &zs,
    );
    assert_eq!(code, 200, "{msg}");
    let (code, msg) = post(&push_url, &[("Content-Encoding", "zstd")], &zs);
    assert_eq!(
        (code, msg.as_str()),
        (401, "no org id: the X-Scope-OrgID header is required\n")
    );

    rimir.flush();
    for tenant in ["team-a", "team-b"] {
        let blocks = bucket_blocks(&bucket, tenant);
        assert_eq!(blocks.len(), 1, "{tenant}: {blocks:?}");
        let dump = promtool_dump(&bucket.join(tenant));
        assert_eq!(dump.len(), 10, "{tenant}: {dump:?}");
        assert!(
            dump.iter()
                .all(|l| l.contains(&format!("tenant=\"{tenant}\"")))
        );
    }
    assert!(bucket_blocks(&bucket, "anonymous").is_empty());

    // SIGTERM stops it cleanly (exit status 0).
    rimir.terminate();
}

/// The binary limits glibc's allocator to two arenas by re-executing itself (same process id)
/// unless the environment already chose a limit, which it keeps.
#[test]
fn rimir_runs_with_two_malloc_arenas_unless_told_otherwise() {
    let environ = |pid: u32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    let args = |name: &str| {
        vec![
            "--target=ingester".to_string(),
            format!(
                "--blocks-storage.filesystem.dir={}",
                tmp.path().join("bucket").display()
            ),
            format!(
                "--blocks-storage.tsdb.dir={}",
                tmp.path().join(name).display()
            ),
        ]
    };
    let default = Rimir::start(&args("a"), None, tmp.path(), "a");
    let chosen = Rimir::start_with_env(
        &args("b"),
        None,
        tmp.path(),
        "b",
        &[("MALLOC_ARENA_MAX", "4")],
    );
    default.wait_ready();
    chosen.wait_ready();
    // What the test itself runs with wins, when it sets one.
    let expected = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into());
    let env_a = environ(default.pid().unwrap());
    assert!(
        env_a.contains(&format!("MALLOC_ARENA_MAX={expected}")),
        "{env_a:?}"
    );
    let env_b = environ(chosen.pid().unwrap());
    assert!(
        env_b.contains(&"MALLOC_ARENA_MAX=4".to_string()),
        "{env_b:?}"
    );
    assert!(!env_b.contains(&"MALLOC_ARENA_MAX=2".to_string()));
}
