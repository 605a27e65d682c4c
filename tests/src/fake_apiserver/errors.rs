//! API errors and their `kind: Status` wire form, with the codes and reasons a real API server
//! uses (clients such as kube-rs and kubectl branch on `reason`).

use serde_json::{Value, json};

/// A failed API request: HTTP code, Kubernetes `reason`, and a message naming the object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, …).
    pub reason: &'static str,
    /// Human readable message.
    pub message: String,
    /// `details` of the Status (`name`, `group`, `kind`, `causes`).
    pub details: Option<Value>,
}

fn details(group: &str, resource: &str, name: &str) -> Option<Value> {
    Some(json!({"name": name, "group": group, "kind": resource}))
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    /// 404 NotFound for `resource.group "name"`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(group, resource)),
            details: details(group, resource, name),
        }
    }

    /// 404 NotFound for a URL that names no served resource.
    pub fn no_route(path: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
            details: None,
        }
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(group, resource)),
            details: details(group, resource, name),
        }
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, resource)
            ),
            details: details(group, resource, name),
        }
    }

    /// 409 Conflict of server-side apply field ownership.
    pub fn apply_conflict(
        group: &str,
        resource: &str,
        name: &str,
        conflicts: &[String],
    ) -> ApiError {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| json!({"reason": "FieldManagerConflict", "message": c}))
            .collect();
        let mut d = details(group, resource, name).unwrap_or_default();
        d["causes"] = Value::Array(causes);
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                conflicts.join(", ")
            ),
            details: Some(d),
        }
    }

    /// 422 Invalid with one message per offending field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> ApiError {
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "{} \"{name}\" is invalid: {}",
                qualified(group, kind),
                list.join(", ")
            ),
            details: Some(
                json!({"name": name, "group": group, "kind": kind, "causes": causes_json}),
            ),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
            details: None,
        }
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
            details: None,
        }
    }

    /// 410 Gone / Expired for a resourceVersion older than the retained history.
    pub fn expired(rv: u64, oldest: u64) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv} ({oldest})"),
            details: None,
        }
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The `kind: Status` object of this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_names_the_object() {
        let s = ApiError::not_found("apps", "statefulsets", "web").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "statefulsets.apps \"web\" not found");
        assert_eq!(s["details"]["name"], "web");
    }

    #[test]
    fn invalid_status_lists_causes() {
        let e = ApiError::invalid(
            "Widget",
            "example.io",
            "w",
            &[("spec.size".into(), "Required value".into())],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Widget.example.io \"w\" is invalid: spec.size: Required value"
        );
        assert_eq!(e.to_status()["details"]["causes"][0]["field"], "spec.size");
    }
}
