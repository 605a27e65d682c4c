//! The `rimir` binary as a user runs it: version, flags in Mimir's one-dash spelling, the
//! configuration it resolves, and the errors it gives for bad flags, config files and tool
//! commands. (Building this test also builds `target/<profile>/rimir`, which the end-to-end
//! tests under `tests/` start.)

use std::process::{Command, Output};

fn rimir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rimir"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the rimir binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_is_the_crate_version() {
    let o = rimir(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("rimir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn one_dash_flags_resolve_as_mimir_spells_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("blocks");
    let data = data.to_str().expect("utf-8 path");
    let o = rimir(&[
        "-target=ingester",
        &format!("-blocks-storage.filesystem.dir={data}"),
        "-server.http-listen-port=18080",
        "-print.config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&stdout(&o)).expect("printed config is YAML");
    assert_eq!(yaml["target"].as_str(), Some("ingester"), "{yaml:?}");
    assert_eq!(
        yaml["server"]["http_listen_port"].as_u64(),
        Some(18080),
        "{yaml:?}"
    );
    assert_eq!(
        yaml["blocks_storage"]["filesystem"]["dir"].as_str(),
        Some(data),
        "{yaml:?}"
    );
}

#[test]
fn an_unknown_target_is_refused_and_the_valid_ones_listed() {
    let o = rimir(&["--target=ingestor", "--print.config"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("ingestor"), "{err}");
    assert!(
        err.contains("ingester") && err.contains("distributor"),
        "{err}"
    );
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rimir.yaml");
    std::fs::write(&file, "target: all\nlimits:\n  ingestion_rat: 5\n").expect("write config");
    let o = rimir(&[
        &format!("--config.file={}", file.display()),
        "--print.config",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("ingestion_rat"), "{err}");
    assert!(err.contains("rimir.yaml"), "{err}");
}

#[test]
fn tsdb_tools_list_an_empty_directory_and_name_an_unknown_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = rimir(&["tsdb", "list", dir.path().to_str().expect("utf-8 path")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = rimir(&["tsdb", "explode"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("explode"), "{}", stderr(&o));
}
