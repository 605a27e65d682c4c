//! Structural validation of custom resources against their CRD's `openAPIV3Schema`: `type`,
//! `required`, `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`.
//! CEL rules (`x-kubernetes-validations`) and `pattern` are not evaluated. Schema `default`s
//! are filled in before validation, as the real server does.

use serde_json::Value;

use super::errors::ApiError;
use super::registry::ResourceType;

/// Checks a custom resource against the schema of its storage version; built-ins pass.
pub fn validate_object(rt: &ResourceType, obj: &Value, name: &str) -> Result<(), ApiError> {
    if !rt.custom {
        return Ok(());
    }
    let Some(schema) = rt.schema(rt.storage_version()) else {
        return Ok(());
    };
    let mut causes = Vec::new();
    check(schema, obj, "", &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, &rt.group, name, &causes))
    }
}

/// Fills in the `default`s of a custom resource's schema for absent fields (recursively, also
/// inside defaulted values); built-ins are left alone.
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    if !rt.custom {
        return;
    }
    if let Some(schema) = rt.schema(rt.storage_version()) {
        default_into(schema, obj, true);
    }
}

fn default_into(schema: &Value, v: &mut Value, root: bool) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if root && k == "metadata" {
                        continue;
                    }
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        default_into(s, child, false);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for child in m.values_mut() {
                    default_into(s, child, false);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for e in a.iter_mut() {
                    default_into(items, e, false);
                }
            }
        }
        _ => {}
    }
}

/// The checks of the built-in workload types that catch real controller bugs: StatefulSets and
/// Deployments need a selector matching their pod template's labels and containers with a name
/// and an image.
pub fn validate_builtin(rt: &ResourceType, obj: &Value, name: &str) -> Result<(), ApiError> {
    if !(rt.group == "apps" && matches!(rt.plural.as_str(), "statefulsets" | "deployments")) {
        return Ok(());
    }
    let mut causes = Vec::new();
    let selector = obj.pointer("/spec/selector");
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_expressions {
        causes.push((
            "spec.selector".to_string(),
            "Required value: empty selector is invalid for deployment"
                .replace("deployment", &rt.singular),
        ));
    }
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    if let Some(m) = match_labels
        && m.iter()
            .any(|(k, v)| labels.and_then(|l| l.get(k)) != Some(v))
    {
        let shown = labels
            .map(|l| Value::Object(l.clone()).to_string())
            .unwrap_or_else(|| "null".into());
        causes.push((
            "spec.template.metadata.labels".to_string(),
            format!("Invalid value: {shown}: `selector` does not match template `labels`"),
        ));
    }
    match obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
    {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                for f in ["name", "image"] {
                    if c.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push((
                            format!("spec.template.spec.containers[{i}].{f}"),
                            "Required value".to_string(),
                        ));
                    }
                }
            }
        }
        _ => causes.push((
            "spec.template.spec.containers".to_string(),
            "Required value".to_string(),
        )),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, &rt.group, name, &causes))
    }
}

/// Rejects updates of fields Kubernetes makes immutable on the built-in types served here:
/// a StatefulSet's spec other than replicas, ordinals, template, updateStrategy,
/// persistentVolumeClaimRetentionPolicy and minReadySeconds; a Deployment's selector; a
/// Service's clusterIP once set; a ConfigMap's or Secret's data once `immutable: true`.
pub fn immutable_fields(
    rt: &ResourceType,
    old: &Value,
    new: &Value,
    name: &str,
) -> Result<(), ApiError> {
    let at = |v: &Value, p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
    let cause = match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "statefulsets") => {
            let strip = |v: &Value| {
                let mut spec = at(v, "/spec");
                if let Value::Object(m) = &mut spec {
                    for f in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        m.remove(f);
                    }
                }
                spec
            };
            (strip(old) != strip(new)).then(|| ("spec".to_string(), "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".to_string()))
        }
        ("apps", "deployments") => {
            (at(old, "/spec/selector") != at(new, "/spec/selector")).then(|| {
                (
                    "spec.selector".to_string(),
                    "Invalid value: field is immutable".to_string(),
                )
            })
        }
        ("", "services") => {
            let before = at(old, "/spec/clusterIP");
            let after = at(new, "/spec/clusterIP");
            (before.as_str().is_some_and(|s| !s.is_empty()) && after != before && !after.is_null())
                .then(|| {
                    (
                        "spec.clusterIP".to_string(),
                        "Invalid value: field is immutable".to_string(),
                    )
                })
        }
        ("", "configmaps" | "secrets") => (old.get("immutable") == Some(&Value::Bool(true))
            && (old.get("data") != new.get("data")
                || old.get("binaryData") != new.get("binaryData")
                || new.get("immutable") != old.get("immutable")))
        .then(|| {
            (
                "data".to_string(),
                "Forbidden: field is immutable when `immutable` is set".to_string(),
            )
        }),
        _ => None,
    };
    match cause {
        Some(c) => Err(ApiError::invalid(&rt.kind, &rt.group, name, &[c])),
        None => Ok(()),
    }
}

/// Checks the shape of `metadata` fields the server interprets, for every type: labels and
/// annotations are maps of strings, finalizers a list of strings, owner references complete.
pub fn validate_metadata(rt: &ResourceType, obj: &Value, name: &str) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if k.is_empty() || !v.is_string() {
                        causes.push((
                            format!("metadata.{field}.{k}"),
                            "Invalid value: must be a non-empty key with a string value"
                                .to_string(),
                        ));
                    }
                }
            }
            Some(_) => causes.push((
                format!("metadata.{field}"),
                "Invalid value: must be a map of strings".to_string(),
            )),
        }
    }
    match meta.get("finalizers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(|f| f.as_str().is_some_and(|s| !s.is_empty())) => {}
        Some(_) => causes.push((
            "metadata.finalizers".to_string(),
            "Invalid value: must be a list of non-empty strings".to_string(),
        )),
    }
    match meta.get("ownerReferences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, r) in a.iter().enumerate() {
                for f in ["apiVersion", "kind", "name", "uid"] {
                    if r.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push((
                            format!("metadata.ownerReferences[{i}].{f}"),
                            "Required value".to_string(),
                        ));
                    }
                }
            }
        }
        Some(_) => causes.push((
            "metadata.ownerReferences".to_string(),
            "Invalid value: must be a list".to_string(),
        )),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, &rt.group, name, &causes))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check(schema: &Value, v: &Value, path: &str, causes: &mut Vec<(String, String)>) {
    // Kubernetes prunes nulls of non-nullable fields rather than rejecting them.
    if v.is_null() {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let ok = got == want
            || (want == "number" && got == "integer")
            || (int_or_string && (got == "integer" || got == "string"));
        if !ok {
            causes.push((
                path.to_string(),
                format!(
                    "Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push((
            path.to_string(),
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            causes.push((
                path.to_string(),
                format!(
                    "Invalid value: {v}: {path} in body should be greater than or equal to {min}"
                ),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            causes.push((
                path.to_string(),
                format!("Invalid value: {v}: {path} in body should be less than or equal to {max}"),
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push((
                path.to_string(),
                format!("Invalid value: {v}: {path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push((
                path.to_string(),
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
    }
    match v {
        Value::Object(m) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if m.get(r).is_none_or(Value::is_null) {
                        causes.push((join(path, r), "Required value".to_string()));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, child) in m {
                // Object metadata is validated by the server itself, not by the CRD schema.
                if path.is_empty() && matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    check(s, child, &join(path, k), causes);
                } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object())
                {
                    check(s, child, &join(path, k), causes);
                }
            }
        }
        Value::Array(a) => {
            let n = a.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                causes.push((
                    path.to_string(),
                    format!("Invalid value: {n}: {path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                causes.push((
                    path.to_string(),
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(items) = schema.get("items") {
                for (i, e) in a.iter().enumerate() {
                    check(items, e, &format!("{path}[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widget_type() -> ResourceType {
        let crd = json!({
            "metadata": {"name": "widgets.example.io"},
            "spec": {"group": "example.io", "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "policy": {"type": "string", "default": "Retain"},
                        "volume": {"type": "object", "default": {}, "properties": {
                            "size": {"type": "string", "default": "50Gi"}}},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "q": {"x-kubernetes-int-or-string": true}
                    }}}
                }}}]}
        });
        super::super::registry::crd_to_type(&crd).unwrap()
    }

    #[test]
    fn schema_violations_are_reported_per_field() {
        let t = widget_type();
        let ok = json!({"metadata": {"name": "w"}, "spec": {"size": 3, "mode": "a", "q": "1Gi"}});
        assert!(validate_object(&t, &ok, "w").is_ok());
        let bad = json!({"metadata": {"name": "w"}, "spec": {"mode": "c", "q": 5}});
        let err = validate_object(&t, &bad, "w").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("spec.size: Required value"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("spec.mode: Unsupported value: \"c\""),
            "{}",
            err.message
        );
        let wrong_type = json!({"spec": {"size": "big"}});
        let err = validate_object(&t, &wrong_type, "w").unwrap_err();
        assert!(
            err.message.contains("must be of type integer"),
            "{}",
            err.message
        );
        let too_big = json!({"spec": {"size": 11}});
        assert!(validate_object(&t, &too_big, "w").is_err());
    }

    #[test]
    fn schema_defaults_fill_absent_fields_recursively() {
        let t = widget_type();
        let mut obj = json!({"metadata": {"name": "w"}, "spec": {"size": 1, "volume": {}}});
        apply_defaults(&t, &mut obj);
        assert_eq!(obj["spec"]["policy"], "Retain");
        assert_eq!(obj["spec"]["volume"]["size"], "50Gi");
        let mut absent = json!({"spec": {"size": 1}});
        apply_defaults(&t, &mut absent);
        assert_eq!(absent["spec"]["volume"], json!({"size": "50Gi"}));
        let mut kept = json!({"spec": {"policy": "Delete"}});
        apply_defaults(&t, &mut kept);
        assert_eq!(kept["spec"]["policy"], "Delete");
    }

    #[test]
    fn malformed_metadata_is_invalid() {
        let t = widget_type();
        let ok = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["x/y"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"}]}});
        assert!(validate_metadata(&t, &ok, "w").is_ok());
        for bad in [
            json!({"metadata": {"labels": "x"}}),
            json!({"metadata": {"annotations": {"a": 1}}}),
            json!({"metadata": {"finalizers": "x"}}),
            json!({"metadata": {"ownerReferences": [{"kind": "ConfigMap"}]}}),
        ] {
            assert_eq!(
                validate_metadata(&t, &bad, "w").unwrap_err().code,
                422,
                "{bad}"
            );
        }
    }
}
