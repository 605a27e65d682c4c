//! The operator and the TSDB agree: the `rimir.yaml` that `rimir-operator render` puts in the
//! ConfigMap for the sample MimirCluster is accepted by the real `rimir` binary, with the bucket,
//! ring and compression the spec asks for; and the README's configuration example is valid.

use std::process::Command;

use rimir_e2e::{run_ok, workspace_bin};

#[test]
fn rendered_rimir_yaml_is_accepted_by_rimir() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = run_ok(
        Command::new(workspace_bin("rimir-operator"))
            .args(["render", "-f"])
            .arg(format!("{root}/config/samples/mimircluster.yaml")),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rendered = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc);
        let Ok(v) = v else { continue };
        if v["kind"] == "ConfigMap" {
            rendered = v["data"]["rimir.yaml"].as_str().map(String::from);
        }
    }
    let rendered = rendered.expect("a ConfigMap with rimir.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rimir.yaml");
    std::fs::write(&path, &rendered).unwrap();
    let out = run_ok(
        Command::new(workspace_bin("rimir"))
            .arg(format!("--config.file={}", path.display()))
            .arg("--print.config"),
    );
    let effective: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let sample: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/config/samples/mimircluster.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(effective["blocks_storage"]["backend"], "s3");
    assert_eq!(
        effective["blocks_storage"]["s3"]["bucket_name"],
        sample["spec"]["storage"]["bucketName"]
    );
    assert_eq!(effective["compression"]["cold"], "gzip");
    let members = effective["ingester"]["ring"]["join_members"][0]
        .as_str()
        .unwrap();
    assert!(
        members.starts_with("dns+") && members.ends_with(":9095"),
        "{members}"
    );
}

use serde::Deserialize as _;

#[test]
fn readme_config_example_is_accepted_by_rimir() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = &readme[readme
        .find("## Configuration")
        .expect("a Configuration section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").unwrap()];
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rimir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = run_ok(
        Command::new(workspace_bin("rimir"))
            .arg(format!("--config.file={}", path.display()))
            .arg("--print.config"),
    );
    let effective: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["compactor"]["deletion_delay"], "12h");
    assert_eq!(
        effective["blocks_storage"]["s3"]["bucket_name"],
        "my-metrics"
    );
    // A typo is refused, naming the key.
    std::fs::write(&path, format!("{yaml}compactr: {{}}\n")).unwrap();
    let out = Command::new(workspace_bin("rimir"))
        .arg(format!("--config.file={}", path.display()))
        .arg("--print.config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("compactr"));
}
