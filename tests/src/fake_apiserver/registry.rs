//! Which resources the fake API server serves: the built-in types it knows, plus the ones that
//! CustomResourceDefinitions stored in it declare.

use serde_json::{Value, json};

/// One printer column of a resource (`additionalPrinterColumns` of a CRD).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type of the cell (`string`, `integer`, `date`, …).
    pub type_: String,
    /// Simple JSONPath evaluated against the object.
    pub json_path: String,
    /// Description shown by `kubectl explain`-like tools.
    pub description: String,
    /// Priority: 0 columns are shown by default, others only with `-o wide`.
    pub priority: i64,
}

/// A resource type served by the fake API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// Served versions; the first is the preferred (storage) version.
    pub versions: Vec<String>,
    /// Kind of the objects.
    pub kind: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names for `kubectl get`.
    pub short_names: Vec<String>,
    /// Categories (`all`, …).
    pub categories: Vec<String>,
    /// Whether `status` is a subresource (changes only through `/status`).
    pub status_subresource: bool,
    /// Printer columns for Table output (CRDs only; built-ins show Name and Age).
    pub printer_columns: Vec<PrinterColumn>,
    /// OpenAPI v3 schema per version (CRDs only), used for `required`/`enum`/`type` checks.
    pub schemas: Vec<(String, Value)>,
    /// True when this type comes from a CustomResourceDefinition.
    pub custom: bool,
}

impl ResourceType {
    /// `group/version` string for `apiVersion` of the given version.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The storage (preferred) version.
    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// Whether the given version is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Schema of the given version, if the CRD declared one.
    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }

    /// The `APIResource` entries (resource and subresources) for discovery.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if self.kind == "Namespace" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        status: true,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        status: false,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        short: &["svc"],
        status: true,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        status: false,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        status: false,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        status: false,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        status: true,
    },
    Builtin {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        namespaced: true,
        short: &["pvc"],
        status: true,
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        namespaced: true,
        short: &["sts"],
        status: true,
    },
    Builtin {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        status: true,
    },
    Builtin {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        namespaced: true,
        short: &["pdb"],
        status: true,
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &[],
        status: false,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        short: &[],
        status: false,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        status: true,
    },
];

/// The built-in resource types.
pub fn builtin_types() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.to_string(),
            versions: vec![b.version.to_string()],
            kind: b.kind.to_string(),
            plural: b.plural.to_string(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status_subresource: b.status,
            printer_columns: Vec::new(),
            schemas: Vec::new(),
            custom: false,
        })
        .collect()
}

/// Why a CustomResourceDefinition cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CrdError {
    /// A required field of the CRD is missing or has the wrong type.
    #[error("CustomResourceDefinition {crd}: {field} is required")]
    Missing {
        /// CRD name.
        crd: String,
        /// JSON path of the missing field.
        field: &'static str,
    },
    /// `metadata.name` is not `<plural>.<group>`.
    #[error(
        "CustomResourceDefinition {crd}: metadata.name must be spec.names.plural+\".\"+spec.group ({expected})"
    )]
    NameMismatch {
        /// CRD name.
        crd: String,
        /// The name it must have.
        expected: String,
    },
    /// `spec.scope` is neither `Namespaced` nor `Cluster`.
    #[error("CustomResourceDefinition {crd}: spec.scope {scope:?} must be Namespaced or Cluster")]
    Scope {
        /// CRD name.
        crd: String,
        /// The given scope.
        scope: String,
    },
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Reads a CustomResourceDefinition object into the resource type it declares.
pub fn crd_to_type(crd: &Value) -> Result<ResourceType, CrdError> {
    let name = str_at(crd, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let missing = |field| CrdError::Missing {
        crd: name.clone(),
        field,
    };
    let group = str_at(crd, &["spec", "group"]).ok_or_else(|| missing("spec.group"))?;
    let names = crd
        .pointer("/spec/names")
        .ok_or_else(|| missing("spec.names"))?;
    let plural = str_at(names, &["plural"]).ok_or_else(|| missing("spec.names.plural"))?;
    let kind = str_at(names, &["kind"]).ok_or_else(|| missing("spec.names.kind"))?;
    let expected = format!("{plural}.{group}");
    if name != expected {
        return Err(CrdError::NameMismatch {
            crd: name,
            expected,
        });
    }
    let scope = str_at(crd, &["spec", "scope"]).unwrap_or("Namespaced");
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(CrdError::Scope {
                crd: name,
                scope: other.to_string(),
            });
        }
    };
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| missing("spec.versions"))?;
    // The storage version is preferred; then the other served versions in declared order.
    let mut served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .collect();
    served.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
    let mut out = ResourceType {
        group: group.to_string(),
        versions: Vec::new(),
        kind: kind.to_string(),
        plural: plural.to_string(),
        singular: str_at(names, &["singular"])
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        namespaced,
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        status_subresource: false,
        printer_columns: Vec::new(),
        schemas: Vec::new(),
        custom: true,
    };
    for (i, v) in served.iter().enumerate() {
        let Some(vname) = v.get("name").and_then(Value::as_str) else {
            return Err(missing("spec.versions[].name"));
        };
        out.versions.push(vname.to_string());
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            out.schemas.push((vname.to_string(), schema.clone()));
        }
        // Subresources and printer columns of the preferred version describe the type.
        if i == 0 {
            out.status_subresource = v.pointer("/subresources/status").is_some();
            if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
                out.printer_columns = cols
                    .iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: c.get("name")?.as_str()?.to_string(),
                            type_: c
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("string")
                                .to_string(),
                            json_path: c.get("jsonPath")?.as_str()?.to_string(),
                            description: c
                                .get("description")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        })
                    })
                    .collect();
            }
        }
    }
    if out.versions.is_empty() {
        return Err(missing("spec.versions[].served"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_with_status_and_short_names_becomes_a_namespaced_type() {
        let crd = json!({
            "metadata": {"name": "widgets.example.io"},
            "spec": {
                "group": "example.io",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]}
                ]
            }
        });
        let t = crd_to_type(&crd).unwrap();
        assert_eq!(t.versions, vec!["v1", "v1beta1"]);
        assert!(t.namespaced && t.status_subresource && t.custom);
        assert_eq!(t.short_names, vec!["wd"]);
        assert_eq!(t.singular, "widget");
        assert_eq!(t.printer_columns[0].json_path, ".status.phase");
        assert_eq!(t.discovery_entries().len(), 2);
    }

    #[test]
    fn crd_name_must_match_plural_and_group() {
        let crd = json!({
            "metadata": {"name": "wrong.example.io"},
            "spec": {"group": "example.io", "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        assert!(matches!(
            crd_to_type(&crd),
            Err(CrdError::NameMismatch { .. })
        ));
    }
}
