//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and field selectors
//! (`path=value`, `path!=value` on any dotted field path, e.g. `metadata.name`).

use serde_json::Value;

/// A selector string that could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unable to parse {kind} selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// `label` or `field`.
    pub kind: &'static str,
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label or field selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    /// Parses a label selector.
    pub fn parse_labels(s: &str) -> Result<Selector, SelectorError> {
        let err = |reason: &str| SelectorError {
            kind: "label",
            selector: s.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(open) = part.find('(') {
                let head = part[..open].trim();
                let Some(list) = part[open + 1..].strip_suffix(')') else {
                    return Err(err("missing closing parenthesis"));
                };
                let values: Vec<String> = list
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let mut words = head.split_whitespace();
                let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(err("expected `key in (values)` or `key notin (values)`"));
                };
                match op {
                    "in" => Requirement::In(key.to_string(), values),
                    "notin" => Requirement::NotIn(key.to_string(), values),
                    _ => return Err(err("unknown set operator")),
                }
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Eq(k, _)
                | Requirement::NotEq(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(err(&format!("invalid label key {key:?}")));
            }
            reqs.push(req);
        }
        Ok(Selector { reqs })
    }

    /// Parses a field selector (only `=`, `==` and `!=`).
    pub fn parse_fields(s: &str) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().to_string(), v.trim().to_string())
            } else {
                return Err(SelectorError {
                    kind: "field",
                    selector: s.to_string(),
                    reason: format!("{part:?} is not `field=value` or `field!=value`"),
                });
            };
            reqs.push(req);
        }
        Ok(Selector { reqs })
    }

    /// Whether the selector has no requirements (matches everything).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `lookup(key)` satisfies every requirement.
    fn matches_with(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::NotEq(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => !lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }

    /// Matches against `metadata.labels` of an object.
    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches_with(|k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// Matches against dotted field paths of an object (`metadata.name`, `spec.nodeName`);
    /// absent fields compare as the empty string, as Kubernetes does.
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches_with(|k| {
            let mut cur = obj;
            for part in k.split('.') {
                match cur.get(part) {
                    Some(v) => cur = v,
                    None => return Some(String::new()),
                }
            }
            Some(match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_supports_equality_sets_and_existence() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier in (front)",
            "",
        ];
        for s in yes {
            assert!(
                Selector::parse_labels(s).unwrap().matches_labels(&obj),
                "{s}"
            );
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "tier notin (front,x)",
            "missing",
            "!app",
        ];
        for s in no {
            assert!(
                !Selector::parse_labels(s).unwrap().matches_labels(&obj),
                "{s}"
            );
        }
    }

    #[test]
    fn malformed_label_selector_is_an_error() {
        assert!(Selector::parse_labels("app in (web").is_err());
        assert!(Selector::parse_labels("app foo (web)").is_err());
        assert!(Selector::parse_labels("a b").is_err());
    }

    #[test]
    fn field_selector_matches_metadata_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        let s = Selector::parse_fields("metadata.name=a,metadata.namespace!=other").unwrap();
        assert!(s.matches_fields(&obj));
        assert!(
            !Selector::parse_fields("metadata.name=b")
                .unwrap()
                .matches_fields(&obj)
        );
        assert!(Selector::parse_fields("metadata.name").is_err());
    }
}
