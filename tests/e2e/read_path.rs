//! The read path as Grafana and promtool use it: `rimir --target=all` answers the Prometheus
//! API from ingester data and shipped blocks together (continuous, no duplicate points), keeps
//! tenants apart on every route, and answers bad PromQL with `bad_data`.

use std::process::Command;

use rimir_e2e::rimir::{Rimir, get, now_ms, post, snappy, write_request};
use rimir_e2e::run_ok;

fn start(tmp: &std::path::Path, multitenant: bool) -> Rimir {
    let r = Rimir::start(
        &[
            "--target=all".into(),
            format!("--auth.multitenancy-enabled={multitenant}"),
            format!(
                "--blocks-storage.filesystem.dir={}",
                tmp.join("bucket").display()
            ),
            format!("--blocks-storage.tsdb.dir={}", tmp.join("tsdb").display()),
        ],
        None,
        tmp,
        "rimir",
    );
    r.wait_ready();
    r
}

fn get_with(url: &str, tenant: Option<&str>) -> (u16, serde_json::Value) {
    let agent = rimir_e2e::rimir::agent();
    let mut req = agent.get(url);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let mut resp = req.call().expect("request");
    let code = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn query_spans_flushed_blocks_and_ingester_data_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let rimir = start(tmp.path(), true);
    let t = now_ms() / 1000 * 1000;
    // The head accepts samples of its current 2h block range only: stay inside it.
    let base = (t - 190_000).max(t - t % 7_200_000);
    let n = ((t - base) / 1000).max(4);
    let old: Vec<(i64, f64)> = (0..n / 2).map(|i| (base + i * 1000, i as f64)).collect();
    let new: Vec<(i64, f64)> = (n / 2..n).map(|i| (base + i * 1000, i as f64)).collect();
    let series = |name: &str, s: &[(i64, f64)]| {
        snappy(&write_request(&[(
            vec![("__name__", name.to_string()), ("job", "node".to_string())],
            s.to_vec(),
        )]))
    };
    let push = |tenant: &str, body: Vec<u8>| {
        let (code, msg) = rimir.push(Some(tenant), &body);
        assert_eq!(code, 200, "{msg}");
    };
    push("team-a", series("requests_total", &old));
    push("team-b", series("secret_total", &old));
    let (code, msg) = post(&format!("{}/ingester/flush", rimir.url), &[], b"");
    assert_eq!(code, 200, "{msg}");
    push("team-a", series("requests_total", &new));

    // Raw samples through a range selector: exactly what was pushed, once each.
    let url = format!(
        "{}/prometheus/api/v1/query?query={}&time={}",
        rimir.url,
        enc("requests_total[1h]"),
        (base + n * 1000) / 1000 + 1
    );
    let (code, body) = get_with(&url, Some("team-a"));
    assert_eq!(code, 200, "{body}");
    let values = body["data"]["result"][0]["values"]
        .as_array()
        .expect("one series")
        .clone();
    let got: Vec<(i64, f64)> = values
        .iter()
        .map(|v| {
            (
                (v[0].as_f64().unwrap() * 1000.0) as i64,
                v[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, f64)> = old.iter().chain(&new).copied().collect();
    assert_eq!(got, want);
    // A range query across the flush boundary is continuous.
    let url = format!(
        "{}/prometheus/api/v1/query_range?query={}&start={}&end={}&step=1",
        rimir.url,
        enc("requests_total"),
        base / 1000,
        (base + (n - 1) * 1000) / 1000
    );
    let (_, body) = get_with(&url, Some("team-a"));
    let points = body["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(points.len() as i64, n, "{body}");
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p[1].as_str().unwrap(), i.to_string());
    }

    // Tenant isolation on every route.
    let q = |path: &str, tenant: &str| {
        get_with(
            &format!("{}/prometheus/api/v1/{path}", rimir.url),
            Some(tenant),
        )
        .1
        .to_string()
    };
    assert!(!q(&format!("query?query={}", enc("secret_total")), "team-a").contains("secret_total"));
    assert!(
        q(
            &format!(
                "query?query={}&time={}",
                enc("secret_total[1h]"),
                (base + n * 1000) / 1000 + 1
            ),
            "team-b"
        )
        .contains("secret_total")
    );
    assert!(
        !q("labels", "team-a").contains("secret")
            && !q("label/__name__/values", "team-a").contains("secret")
    );
    assert!(
        !q(
            &format!("series?match[]={}", enc("{job=\"node\"}")),
            "team-a"
        )
        .contains("secret_total")
    );
    assert!(q("label/__name__/values", "team-b").contains("secret_total"));
    assert_eq!(
        get(&format!("{}/prometheus/api/v1/labels", rimir.url)).0,
        401,
        "no tenant"
    );

    // Bad PromQL names the position.
    let (code, body) = get_with(
        &format!(
            "{}/prometheus/api/v1/query?query={}",
            rimir.url,
            enc("sum(rate(x[5m])")
        ),
        Some("team-a"),
    );
    assert_eq!(code, 400);
    assert_eq!(body["errorType"], "bad_data", "{body}");
}

#[test]
fn promtool_queries_rimir() {
    let tmp = tempfile::tempdir().unwrap();
    let rimir = start(tmp.path(), false);
    let t = now_ms() / 1000 * 1000;
    let body = snappy(&write_request(&[(
        vec![
            ("__name__", "node_load1".to_string()),
            ("instance", "a:9100".to_string()),
        ],
        (0..20)
            .map(|i| (t - 19_000 + i * 1000, 0.5 + i as f64))
            .collect(),
    )]));
    assert_eq!(rimir.push(None, &body).0, 200);
    let base = format!("{}/prometheus", rimir.url);
    let out = run_ok(
        Command::new("promtool")
            .args(["query", "instant", &base, "node_load1"])
            .arg(format!("--time={}", t / 1000)),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node_load1{instance=\"a:9100\"} => 19.5"),
        "{text}"
    );
    let out = run_ok(Command::new("promtool").args([
        "query",
        "range",
        "--start",
        &((t - 10_000) / 1000).to_string(),
        "--end",
        &(t / 1000).to_string(),
        "--step",
        "5s",
        &base,
        "sum(node_load1)",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" @[").count(), 3, "{text}");
    let out =
        run_ok(Command::new("promtool").args(["query", "series", "--match", "node_load1", &base]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance=\"a:9100\""));
    let out = run_ok(Command::new("promtool").args(["query", "labels", &base, "instance"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a:9100"));
}
