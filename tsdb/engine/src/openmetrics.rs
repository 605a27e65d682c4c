//! A parser for the OpenMetrics text input of `tsdb create-blocks-from openmetrics`: samples with
//! explicit timestamps (seconds), `# TYPE`/`# HELP`/`# UNIT` metadata, and the closing `# EOF`.

use thiserror::Error;

use crate::labels::{Labels, METRIC_NAME};

/// A line of the input could not be parsed.
#[derive(Debug, Error, PartialEq)]
#[error("openmetrics line {line}: {what}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct OmSample {
    /// The series, metric name included as `__name__`.
    pub labels: Labels,
    /// Timestamp in milliseconds.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// Parses a whole OpenMetrics exposition; every sample must carry a timestamp, as promtool requires.
pub fn parse(text: &str) -> Result<Vec<OmSample>, ParseError> {
    let mut out = Vec::new();
    let mut saw_eof = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |what: String| ParseError { line, what };
        if saw_eof {
            if raw.trim().is_empty() {
                continue;
            }
            return Err(err("data after # EOF".into()));
        }
        if raw.is_empty() {
            continue;
        }
        if let Some(rest) = raw.strip_prefix('#') {
            if rest.trim() == "EOF" {
                saw_eof = true;
            }
            continue;
        }
        out.push(parse_sample(raw).map_err(err)?);
    }
    if !saw_eof {
        return Err(ParseError {
            line: text.lines().count(),
            what: "missing # EOF at end of input".into(),
        });
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<OmSample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("expected a metric name followed by a value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut pairs: Vec<(String, String)> = vec![(METRIC_NAME.into(), name.into())];
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_label_block(r, &mut pairs)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("missing sample value")?;
    let v = parse_value(value).ok_or_else(|| format!("invalid sample value {value:?}"))?;
    let ts = fields
        .next()
        .ok_or("missing timestamp: every sample needs one to be written to a block")?;
    let secs: f64 = ts
        .parse()
        .map_err(|_| format!("invalid timestamp {ts:?}"))?;
    if let Some(extra) = fields.next()
        && !extra.starts_with('#')
    {
        return Err(format!("unexpected text {extra:?} after the timestamp"));
    }
    let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("duplicate label name {:?}", w[0]));
    }
    Ok(OmSample {
        labels: Labels::from_pairs(pairs),
        t: (secs * 1000.0).round() as i64,
        v,
    })
}

/// Parses `name="value",...}` and returns what follows the closing brace.
fn parse_label_block<'a>(
    mut s: &'a str,
    pairs: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let eq = s.find('=').ok_or("unterminated label set")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        let r = s[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value must be quoted"))?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, '\\')) => value.push('\\'),
                    other => {
                        return Err(format!(
                            "invalid escape {:?} in value of label {name}",
                            other.map(|(_, c)| c)
                        ));
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        pairs.push((name.to_string(), value));
        s = &r[end + 1..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Whether `s` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Whether `s` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_escapes_and_special_values() {
        let s = parse(
            "# HELP x h\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"\\n\"} 3.5 1700000000.5\n\
             up NaN 1700000001\nup +Inf 1700000002\n# EOF\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels.get("b"), Some("q\"\n"));
        assert_eq!(s[0].labels.get("__name__"), Some("x_total"));
        assert_eq!(s[0].t, 1_700_000_000_500);
        assert!(s[1].v.is_nan());
        assert_eq!(s[2].v, f64::INFINITY);
    }

    #[test]
    fn rejects_missing_timestamp_eof_and_bad_names_with_line_numbers() {
        assert_eq!(parse("up 1\n# EOF\n").unwrap_err().line, 1);
        assert!(parse("up 1 1\n").unwrap_err().what.contains("EOF"));
        let e = parse("up 1 1\n0bad 1 1\n# EOF\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("0bad"));
        assert!(
            parse("up{a=\"1\",a=\"2\"} 1 1\n# EOF\n")
                .unwrap_err()
                .what
                .contains("duplicate")
        );
    }
}
