//! The layering `tsdb/` promises (docs/architecture.md, each crate's `lib.rs`):
//!
//! - the storage engine (`rimir-tsdb`) pulls in no async runtime and no network crate, and the
//!   query engine (`rimir-promql`) no HTTP, gRPC or AWS crate — read off `cargo tree`;
//! - inside every crate under `tsdb/`, no file imports another that imports it back, directly or
//!   around a loop — read off the `crate::`, `super::` and `self::` paths of the sources.
//!
//! A re-export (`pub use`) hands a name on and is not counted as an import, so a module's face
//! (`mod.rs`, `lib.rs`) may re-export its children while the children use one another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// Names of the packages in `cargo tree -p PACKAGE -e normal`, one per line.
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn forbidden_in(package: &str, forbidden: &[&str]) -> Vec<String> {
    let deps = normal_dependencies(package);
    assert!(
        deps.iter().any(|d| d == package),
        "cargo tree did not list {package} itself: {deps:?}"
    );
    let mut found: Vec<String> = deps
        .into_iter()
        .filter(|d| {
            forbidden.iter().any(|f| {
                if f.ends_with('-') {
                    d.starts_with(f)
                } else {
                    d == f
                }
            })
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn storage_engine_depends_on_no_runtime_or_network_crate() {
    let found = forbidden_in(
        "rimir-tsdb",
        &["tokio", "hyper", "h2", "axum", "tonic", "reqwest", "aws-"],
    );
    assert!(found.is_empty(), "rimir-tsdb depends on {found:?}");
}

#[test]
fn query_engine_depends_on_no_http_grpc_or_aws_crate() {
    let found = forbidden_in("rimir-promql", &["hyper", "h2", "axum", "tonic", "aws-"]);
    assert!(found.is_empty(), "rimir-promql depends on {found:?}");
}

#[test]
fn the_server_does_depend_on_the_network_crates_this_test_looks_for() {
    // Guards the two tests above against a `cargo tree` output they would misread.
    let found = forbidden_in("rimir", &["tokio", "axum", "tonic", "aws-"]);
    for name in ["tokio", "axum", "tonic"] {
        assert!(
            found.iter().any(|f| f == name),
            "rimir without {name}: {found:?}"
        );
    }
}

/// One crate's source files, each under its module path (`["head", "slab"]`).
fn module_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.first().is_some_and(|p| p == "bin") {
            continue; // binaries are their own crates
        }
        if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
            parts.pop();
        }
        modules.insert(parts, file);
    }
    modules
}

/// The code of a file without its comments, its re-exports and its inline test module.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("pub use ") || trimmed.starts_with("pub(crate) use ") {
            // Skip the whole (possibly multi-line) re-export.
            let mut stmt = line.to_string();
            while !stmt.contains(';') {
                match lines.next() {
                    Some(l) => stmt.push_str(l),
                    None => break,
                }
            }
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Every module path a file's code names through `crate::`, `super::` or `self::`, including
/// the members of a `use a::{b, c::d}` group.
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(start) {
            let at = from + pos;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let mut base: Vec<String> = match start {
                "crate::" => Vec::new(),
                "self::" => here.to_vec(),
                _ => here[..here.len().saturating_sub(1)].to_vec(),
            };
            // Further `super::` steps.
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            collect_tree(rest, base, &mut paths);
        }
    }
    paths
}

/// Parse `a::b::{c, d::e}` (at the start of `text`) into full paths from `base`.
fn collect_tree(text: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = base;
    let mut rest = text;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                // Split the group at its top-level commas.
                let mut depth = 0;
                let mut item = String::new();
                for c in inner.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            collect_tree(item.trim(), path.clone(), out);
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                collect_tree(item.trim(), path.clone(), out);
                return;
            }
            break;
        }
        path.push(ident.clone());
        rest = &rest[ident.len()..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out.push(path);
}

/// The file a path resolves to: the longest prefix of it that is a module of the crate.
fn resolve<'a>(
    path: &[String],
    modules: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a [String]> {
    (0..=path.len())
        .rev()
        .map(|n| &path[..n])
        .find(|prefix| modules.contains_key(*prefix))
        .map(|p| modules.get_key_value(p).expect("present").0.as_slice())
}

/// A loop of files that import each other, if the graph has one.
fn find_circle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).expect("on stack");
                    let mut circle = stack[from..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = module_files(src);
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read source");
        let mut targets = BTreeSet::new();
        for path in named_paths(&code_of(&text), module) {
            if let Some(target) = resolve(&path, &modules)
                && target != module.as_slice()
            {
                targets.insert(target.to_vec());
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The crates under `tsdb/`: every folder with a `Cargo.toml` and a `src/`, fuzz crates aside.
fn tsdb_crates(tsdb: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            out.push(dir.to_path_buf());
        }
        for e in std::fs::read_dir(dir).expect("read tsdb/").flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() && name != "src" && name != "fuzz" && name != "tests" && name != "target"
            {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(tsdb, &mut out);
    out.sort();
    out
}

#[test]
fn no_file_under_tsdb_imports_one_that_imports_it_back() {
    let tsdb = workspace_root().join("tsdb");
    let crates = tsdb_crates(&tsdb);
    let names: Vec<String> = crates
        .iter()
        .map(|c| c.strip_prefix(&tsdb).unwrap().display().to_string())
        .collect();
    for must in [
        "engine",
        "promql",
        "objstore",
        "server",
        "server/core",
        "server/distributor",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "tsdb/{must} not found in {names:?}"
        );
    }
    for (krate, dir) in names.iter().zip(&crates) {
        let src = dir.join("src");
        let graph = import_graph(&src);
        assert!(!graph.is_empty(), "{krate}: no modules found under {src:?}");
        if let Some(circle) = find_circle(&graph) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            panic!(
                "tsdb/{krate}: files import each other in a circle: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn the_roles_are_built_on_the_core_and_never_on_one_another() {
    let roles = [
        "rimir-distributor",
        "rimir-ingester",
        "rimir-querier",
        "rimir-compactor",
    ];
    for role in roles {
        let deps = normal_dependencies(role);
        assert!(deps.iter().any(|d| d == "rimir-core"), "{role}: {deps:?}");
        let others: Vec<&&str> = roles
            .iter()
            .filter(|r| **r != role && deps.iter().any(|d| d == **r))
            .collect();
        assert!(others.is_empty(), "{role} depends on {others:?}");
    }
    let mut below_roles = roles.to_vec();
    below_roles.push("aws-");
    let core = forbidden_in("rimir-core", &below_roles);
    assert!(core.is_empty(), "rimir-core depends on {core:?}");
}

#[test]
fn the_circle_finder_sees_a_circle_through_a_group_import() {
    // The detector itself, on a made-up crate: a -> b through `use crate::{x, b::f}`, b -> a.
    let dir = std::env::temp_dir().join(format!("rimir-layering-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).expect("mkdir");
    std::fs::write(
        dir.join("lib.rs"),
        "pub mod a;\npub mod b;\npub use a::A;\n",
    )
    .expect("write");
    std::fs::write(dir.join("a.rs"), "use crate::{b::f, x};\npub struct A;\n").expect("write");
    std::fs::write(
        dir.join("b/mod.rs"),
        "pub fn f() { let _ = super::a::A; }\n",
    )
    .expect("write");
    let graph = import_graph(&dir);
    let circle = find_circle(&graph).expect("a <-> b is a circle");
    assert!(circle.contains(&vec!["a".to_string()]), "{circle:?}");
    assert!(circle.contains(&vec!["b".to_string()]), "{circle:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
