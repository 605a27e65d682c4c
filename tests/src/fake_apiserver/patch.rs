//! Patch formats and the field sets behind server-side apply.
//!
//! - JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are exact.
//! - Strategic merge patch is simplified: a merge patch in which lists whose elements are all
//!   objects with a `name` (containers, env, ports, volumes, …) are merged element-wise by
//!   `name`; every other list is replaced; `$`-directives (`$patch`, `$setElementOrder/…`,
//!   `$retainKeys`) are dropped, except `$patch: delete` on a named list element, which removes it.
//! - Field sets (managedFields `fieldsV1`) track leaves of maps only: a list is one atomic field,
//!   owned as a whole (real SSA would key `containers` by name).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A field path of map keys (`["spec", "replicas"]`).
pub type FieldPath = Vec<String>;

/// A set of owned field paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// Applies an RFC 6902 JSON patch given as a JSON array. As in Kubernetes, a `test` for
/// `null` succeeds on a missing path (kube-rs' finalizer helper relies on it to add the first
/// finalizer). On error `doc` may be partly patched: callers patch a copy.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    for op in ops.0.iter() {
        if let json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(doc, std::slice::from_ref(op))
            .map_err(|e| format!("JSON patch failed: {e}"))?;
    }
    Ok(())
}

fn named_list(v: &[Value]) -> bool {
    v.iter()
        .all(|e| e.get("name").is_some_and(Value::is_string))
}

/// Applies a (simplified, see the module doc) strategic merge patch.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = strip_directives(patch);
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(d) = doc else { return };
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        match pv {
            Value::Null => {
                d.remove(k);
            }
            Value::Object(_) => strategic_merge(d.entry(k.clone()).or_insert(Value::Null), pv),
            Value::Array(pa) => match d.get_mut(k) {
                Some(Value::Array(da)) if named_list(pa) && named_list(da) => {
                    for pe in pa {
                        let name = pe.get("name").cloned();
                        let pos = da.iter().position(|de| de.get("name") == name.as_ref());
                        let delete = pe.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (pos, delete) {
                            (Some(i), true) => {
                                da.remove(i);
                            }
                            (Some(i), false) => strategic_merge(&mut da[i], pe),
                            (None, true) => {}
                            (None, false) => da.push(strip_directives(pe)),
                        }
                    }
                }
                _ => {
                    d.insert(k.clone(), strip_directives(pv));
                }
            },
            other => {
                d.insert(k.clone(), other.clone());
            }
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Deep merge for apply: maps merge recursively, anything else (lists, scalars) replaces;
/// `null` in the applied config is ignored.
pub fn deep_merge(doc: &mut Value, applied: &Value) {
    match (doc, applied) {
        (Value::Object(d), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                match d.get_mut(k) {
                    Some(dv) if dv.is_object() && av.is_object() => deep_merge(dv, av),
                    _ => {
                        d.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (doc, applied) => *doc = applied.clone(),
    }
}

/// Top-level and metadata fields the server owns; they never appear in field sets.
fn excluded(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Leaf paths of maps in `v` (a non-empty map is not a leaf; lists, scalars and `{}` are).
pub fn leaf_paths(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() || path.is_empty() => {
                for (k, child) in m {
                    if child.is_null() {
                        continue;
                    }
                    path.push(k.clone());
                    if !excluded(path) {
                        walk(child, path, out);
                    }
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Paths whose value differs between `old` and `new` (present in `new`), and paths removed.
pub fn changed_paths(old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    fn walk(
        old: Option<&Value>,
        new: Option<&Value>,
        path: &mut FieldPath,
        set: &mut FieldSet,
        removed: &mut FieldSet,
    ) {
        if !path.is_empty() && excluded(path) {
            return;
        }
        match (old, new) {
            (Some(Value::Object(o)), Some(Value::Object(n)))
                if !n.is_empty() || path.is_empty() =>
            {
                let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                for k in keys {
                    path.push(k.clone());
                    walk(o.get(k), n.get(k), path, set, removed);
                    path.pop();
                }
            }
            (_, None) | (_, Some(Value::Null)) => {
                if old.is_some_and(|v| !v.is_null()) {
                    removed.insert(path.clone());
                }
            }
            (o, Some(n)) => {
                if o != Some(n) {
                    if let Value::Object(m) = n
                        && !m.is_empty()
                    {
                        for leaf in leaf_paths(n) {
                            let mut p = path.clone();
                            p.extend(leaf);
                            set.insert(p);
                        }
                    } else {
                        set.insert(path.clone());
                    }
                }
            }
        }
    }
    let mut set = FieldSet::new();
    let mut removed = FieldSet::new();
    walk(
        Some(old),
        Some(new),
        &mut Vec::new(),
        &mut set,
        &mut removed,
    );
    (set, removed)
}

/// Whether one path is a prefix of (or equal to) the other.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Value at a path, if present.
pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    Some(cur)
}

/// Removes the value at a path, then any map on the way that became empty.
pub fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if parents.is_empty() {
        if let Value::Object(m) = v {
            m.remove(last);
        }
        return;
    }
    let Some(Value::Object(parent)) = v.pointer_mut(&pointer(parents)) else {
        return;
    };
    parent.remove(last);
    if parent.is_empty() {
        remove_path(v, parents);
    }
}

fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Encodes a field set as managedFields `fieldsV1` (`{"f:spec":{"f:replicas":{}}}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for p in path {
            let entry = cur
                .entry(format!("f:{p}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = entry else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

/// Decodes `fieldsV1`; only `f:` keys are understood (`k:`/`v:`/`i:` entries become their
/// parent list as a whole).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Value::Object(m) = v else { return };
        let mut had_child = false;
        for (k, child) in m {
            if let Some(name) = k.strip_prefix("f:") {
                had_child = true;
                path.push(name.to_string());
                walk(child, path, out);
                path.pop();
            }
        }
        if !had_child && !path.is_empty() {
            out.insert(path.clone());
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Renders a path as `.spec.replicas` for conflict messages.
pub fn display_path(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> FieldPath {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_test_failure_is_an_error() {
        let mut doc = json!({"metadata": {"finalizers": ["x"]}});
        let bad = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["y"]}]);
        assert!(json_patch(&mut doc, &bad).is_err());
        let good = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
        json_patch(&mut doc, &good).unwrap();
        assert_eq!(doc, json!({"metadata": {"finalizers": []}}));
        assert!(json_patch(&mut doc, &json!({"op": "x"})).is_err());
    }

    #[test]
    fn json_patch_test_for_null_accepts_a_missing_path() {
        let mut doc = json!({"metadata": {"name": "a"}});
        let add_first = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                               {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        json_patch(&mut doc, &add_first).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["f"]));
        assert!(
            json_patch(&mut doc, &add_first).is_err(),
            "the path exists now and is not null"
        );
    }

    #[test]
    fn strategic_merge_merges_named_lists_by_name() {
        let mut doc = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut doc,
            &json!({"$setElementOrder/containers": [], "spec": {"containers": [
                {"name": "b", "image": "z"}, {"name": "c", "image": "w"}, {"name": "a", "$patch": "delete"}
            ]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}})
        );
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let obj = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "labels": {"a": "b"}},
                         "spec": {"replicas": 1, "list": [1], "empty": {}}});
        let set = leaf_paths(&obj);
        let expected: FieldSet = [
            p("metadata.labels.a"),
            p("spec.replicas"),
            p("spec.list"),
            p("spec.empty"),
        ]
        .into();
        assert_eq!(set, expected);
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn changed_paths_reports_set_and_removed_leaves() {
        let old = json!({"spec": {"a": 1, "b": 2, "m": {"x": 1}}});
        let new = json!({"spec": {"a": 1, "b": 3, "n": {"y": 1}}});
        let (set, removed) = changed_paths(&old, &new);
        assert_eq!(set, [p("spec.b"), p("spec.n.y")].into());
        assert_eq!(removed, [p("spec.m")].into());
    }

    #[test]
    fn remove_path_prunes_empty_parents() {
        let mut v = json!({"spec": {"m": {"x": 1}, "k": 2}});
        remove_path(&mut v, &p("spec.m.x"));
        assert_eq!(v, json!({"spec": {"k": 2}}));
    }
}
