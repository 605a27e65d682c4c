//! Parsing with an error position: `promql-parser` reports what went wrong but not where, so the
//! position is located as the start of the first token after the longest prefix that parses.

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use rimir_tsdb::labels::{METRIC_NAME, MatchType, Matcher};

use crate::queryable::QueryError;

/// Longest query for which the error position is searched (the search parses every prefix).
const MAX_LOCATE_LEN: usize = 4096;

/// Parses `query`; errors are `bad_data` in Prometheus' form `line:col: parse error: message`.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    register_functions();
    match promql_parser::parser::parse(query) {
        Ok(e) => Ok(e),
        Err(msg) => {
            // Unbalanced input is reported at its end, as Prometheus does.
            let at = if msg.contains("unclosed") || msg.contains("end of input") {
                query.trim_end().len()
            } else {
                locate(query)
            };
            let (line, col) = line_col(query, at);
            Err(QueryError::BadData(format!(
                "{line}:{col}: parse error: {msg}"
            )))
        }
    }
}

/// Teaches the parser the 2.42 functions it no longer knows by their old names.
fn register_functions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use promql_parser::parser::value::ValueType;
        // Ignored error: only a name clash with a built-in, which would make this a no-op.
        let _ = promql_parser::parser::register_extra_functions(vec![
            promql_parser::parser::Function::new(
                "holt_winters",
                vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
                0,
                ValueType::Vector,
                false,
            ),
        ]);
    });
}

/// Byte offset of the likely error: the first token after the longest prefix that parses on its
/// own, or the end of the input when no prefix does.
fn locate(query: &str) -> usize {
    let trimmed_end = query.trim_end().len();
    if query.len() > MAX_LOCATE_LEN {
        return trimmed_end;
    }
    let mut best: Option<usize> = None;
    let bytes = query.as_bytes();
    for (i, _) in query.char_indices().skip(1) {
        let prev = bytes[i - 1];
        let cur = bytes[i];
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':';
        if word(prev) && word(cur) {
            continue;
        }
        if promql_parser::parser::parse(&query[..i]).is_ok() {
            best = Some(i);
        }
    }
    match best {
        Some(end) => {
            let rest = &query[end..];
            end + (rest.len() - rest.trim_start().len())
        }
        None => trimmed_end,
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(query: &str, at: usize) -> (usize, usize) {
    let before = &query[..at.min(query.len())];
    let line = before.matches('\n').count() + 1;
    let col_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[col_start..].chars().count() + 1)
}

/// Converts a parsed selector's matchers (name included) into ours.
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::BadData(
            "\"or\" inside label matchers is not supported by PromQL 2.42".into(),
        ));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(METRIC_NAME, name.clone()));
    }
    for m in &vs.matchers.matchers {
        let kind = match m.op {
            MatchOp::Equal => MatchType::Equal,
            MatchOp::NotEqual => MatchType::NotEqual,
            MatchOp::Re(_) => MatchType::Regex,
            MatchOp::NotRe(_) => MatchType::NotRegex,
        };
        // Go accepts some patterns Rust's regex rejects (a `{` that starts no repetition); the
        // parser has already rewritten those into an equivalent anchored pattern.
        let matcher =
            Matcher::new(kind, m.name.clone(), m.value.clone()).or_else(|e| match &m.op {
                MatchOp::Re(re) | MatchOp::NotRe(re) => {
                    Matcher::new(kind, m.name.clone(), re.as_str())
                }
                _ => Err(e),
            });
        out.push(matcher.map_err(|e| QueryError::BadData(e.to_string()))?);
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err(QueryError::BadData(
            "vector selector must contain at least one non-empty matcher".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_carry_line_and_column() {
        let err = parse("foo bar").unwrap_err();
        let QueryError::BadData(msg) = err else {
            panic!("not bad data")
        };
        assert!(msg.starts_with("1:5: parse error:"), "{msg}");
        let QueryError::BadData(msg) = parse("sum(rate(x[5m])").unwrap_err() else {
            panic!("not bad data")
        };
        assert!(msg.starts_with("1:16: parse error:"), "{msg}");
        assert!(parse("sum by (job) (rate(x[5m]))").is_ok());
    }
}
