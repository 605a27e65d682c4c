//! `meta.k8s.io/v1` Table output (what `kubectl get` asks for): Name, the CRD's
//! `additionalPrinterColumns` (or Age for built-ins), evaluated with a JSONPath subset:
//! `.a.b`, `.a[0]`, `.a[*]` and `.a[?(@.k=="v")].b`.

use serde_json::{Value, json};

use super::clock;
use super::registry::ResourceType;

/// Evaluates a simple JSONPath, returning every match.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            cur = cur.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_bracket_end(r) else {
                return Vec::new();
            };
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .collect();
            } else if let Ok(i) = inner.parse::<i64>() {
                cur = cur
                    .into_iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?)
                    })
                    .collect();
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                let Some((lhs, rhs)) = filter.split_once("==") else {
                    return Vec::new();
                };
                let field = lhs.trim().trim_start_matches('@');
                let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .filter(|e| {
                        json_path(e, field).first().is_some_and(|x| match x {
                            Value::String(s) => s == want,
                            other => {
                                let text = other.to_string();
                                text == want
                            }
                        })
                    })
                    .collect();
            } else {
                let key = inner.trim_matches(|c| c == '"' || c == '\'');
                cur = cur.into_iter().filter_map(|v| v.get(key)).collect();
            }
        } else {
            return Vec::new();
        }
    }
    cur
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ']') if depth == 0 => return Some(i),
            (None, ']') => depth -= 1,
            _ => {}
        }
    }
    None
}

fn age(obj: &Value, field: &Value) -> Value {
    let _ = obj;
    match field.as_str().and_then(clock::parse_rfc3339) {
        Some(t) => json!(clock::human_duration(clock::now_secs() - t)),
        None => json!("<unknown>"),
    }
}

fn cell(obj: &Value, ty: &str, path: &str) -> Value {
    let found = json_path(obj, path);
    if found.is_empty() {
        return Value::Null;
    }
    if ty == "date" {
        return age(obj, found[0]);
    }
    if found.len() == 1 {
        return match found[0] {
            Value::Object(_) | Value::Array(_) => json!(found[0].to_string()),
            v => v.clone(),
        };
    }
    let parts: Vec<String> = found
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    json!(parts.join(","))
}

/// Builds the Table for a list of objects (or one object).
pub fn to_table(rt: &ResourceType, objects: &[Value], rv: u64) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."
    })];
    let custom_cols = !rt.printer_columns.is_empty();
    for c in &rt.printer_columns {
        columns.push(json!({
            "name": c.name, "type": c.type_, "format": "", "priority": c.priority, "description": c.description
        }));
    }
    if !custom_cols {
        columns.push(json!({
            "name": "Age", "type": "string", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created."
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            if custom_cols {
                for c in &rt.printer_columns {
                    cells.push(cell(o, &c.type_, &c.json_path));
                }
            } else {
                cells.push(age(
                    o,
                    o.pointer("/metadata/creationTimestamp")
                        .unwrap_or(&Value::Null),
                ));
            }
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_default(),
                }
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_apiserver::registry::PrinterColumn;

    #[test]
    fn json_path_supports_filters_indexes_and_wildcards() {
        let obj = json!({"status": {"conditions": [
            {"type": "Progressing", "status": "False"},
            {"type": "Ready", "status": "True"}
        ], "n": 3}});
        let ready = json_path(&obj, r#".status.conditions[?(@.type=="Ready")].status"#);
        assert_eq!(ready, vec![&json!("True")]);
        assert_eq!(
            json_path(&obj, ".status.conditions[0].type"),
            vec![&json!("Progressing")]
        );
        assert_eq!(json_path(&obj, ".status.conditions[*].type").len(), 2);
        assert_eq!(json_path(&obj, "{.status.n}"), vec![&json!(3)]);
        assert!(json_path(&obj, ".status.missing").is_empty());
    }

    #[test]
    fn table_uses_printer_columns() {
        let rt = ResourceType {
            group: "example.io".into(),
            versions: vec!["v1".into()],
            kind: "Widget".into(),
            plural: "widgets".into(),
            singular: "widget".into(),
            namespaced: true,
            short_names: vec![],
            categories: vec![],
            status_subresource: true,
            printer_columns: vec![
                PrinterColumn {
                    name: "Phase".into(),
                    type_: "string".into(),
                    json_path: ".status.phase".into(),
                    description: String::new(),
                    priority: 0,
                },
                PrinterColumn {
                    name: "Age".into(),
                    type_: "date".into(),
                    json_path: ".metadata.creationTimestamp".into(),
                    description: String::new(),
                    priority: 0,
                },
            ],
            schemas: vec![],
            custom: true,
        };
        let created = clock::format_rfc3339(clock::now_secs() - 30);
        let obj = json!({"metadata": {"name": "w", "creationTimestamp": created}, "status": {"phase": "Ready"}});
        let t = to_table(&rt, &[obj], 7);
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 3);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "w");
        assert_eq!(cells[1], "Ready");
        let age = cells[2].as_str().unwrap();
        assert!(age.ends_with('s') && age.len() <= 3, "{age}");
    }
}
