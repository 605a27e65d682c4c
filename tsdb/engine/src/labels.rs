//! Label sets identifying series, and the label matchers that select them.

use std::fmt;

use regex::Regex;
use thiserror::Error;

/// The label holding a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label name.
    pub name: String,
    /// Label value.
    pub value: String,
}

/// A label pair borrowed from elsewhere (a request body, a [`Labels`]): the write path looks
/// series up and stores them without building owned strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelRef<'a> {
    /// Name.
    pub name: &'a str,
    /// Value.
    pub value: &'a str,
}

/// A series' label set, sorted by name, names unique.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from pairs in any order; empty values are dropped as in Prometheus.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .filter(|l| !l.value.is_empty())
            .collect();
        v.sort();
        v.dedup_by(|a, b| a.name == b.name);
        Self(v)
    }

    /// Copies borrowed labels that are already sorted by name with unique names.
    pub fn from_refs(labels: &[LabelRef<'_>]) -> Self {
        Self::from_sorted(
            labels
                .iter()
                .map(|l| Label {
                    name: l.name.to_owned(),
                    value: l.value.to_owned(),
                })
                .collect(),
        )
    }

    /// The labels borrowed, in order.
    pub fn refs(&self) -> Vec<LabelRef<'_>> {
        self.0
            .iter()
            .map(|l| LabelRef {
                name: &l.name,
                value: &l.value,
            })
            .collect()
    }

    /// Wraps labels that are already sorted by name with unique names.
    pub fn from_sorted(labels: Vec<Label>) -> Self {
        debug_assert!(labels.windows(2).all(|w| w[0].name < w[1].name));
        Self(labels)
    }

    /// The value of label `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The labels, sorted by name.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a slice.
    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// Consumes the set into its sorted labels.
    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// A stable 64-bit hash of the label set (FNV-1a over names and values with separators),
    /// identical across processes and versions: used for sharding and series references.
    pub fn stable_hash(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        for l in &self.0 {
            for b in l
                .name
                .bytes()
                .chain([0xff])
                .chain(l.value.bytes())
                .chain([0xff])
            {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        }
        h
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `{__name__="up", job="x"}` with Go-quoted values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_labels(
            f,
            self.0.iter().map(|l| (l.name.as_str(), l.value.as_str())),
        )
    }
}

/// Borrowed labels shown like [`Labels`]: `{__name__="up", job="x"}`.
#[derive(Debug, Clone, Copy)]
pub struct DisplayRefs<'a>(pub &'a [LabelRef<'a>]);

impl fmt::Display for DisplayRefs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_labels(f, self.0.iter().map(|l| (l.name, l.value)))
    }
}

fn write_labels<'a>(
    f: &mut fmt::Formatter<'_>,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    f.write_str("{")?;
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{name}=")?;
        write_go_quoted(f, value)?;
    }
    f.write_str("}")
}

/// Writes `s` quoted as Go's `strconv.Quote` does.
pub fn write_go_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\x07' => f.write_str("\\a")?,
            '\x08' => f.write_str("\\b")?,
            '\x0c' => f.write_str("\\f")?,
            '\x0b' => f.write_str("\\v")?,
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(f, "\\x{:02x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, fully anchored.
    Regex,
    /// `!~`, fully anchored.
    NotRegex,
}

/// A matcher could not be built.
#[derive(Debug, Error)]
pub enum MatcherError {
    /// The regular expression does not compile.
    #[error("invalid regular expression {pattern:?} for label {name}: {source}")]
    InvalidRegex {
        /// The label the matcher is on.
        name: String,
        /// The pattern as given.
        pattern: String,
        /// Why it did not compile.
        source: Box<regex::Error>,
    },
}

/// A label matcher with Prometheus semantics: a missing label matches as the empty value,
/// and regular expressions are anchored at both ends.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub kind: MatchType,
    /// Value or pattern as given.
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher, compiling regular expressions anchored as `^(?s:pattern)$`.
    pub fn new(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let re = match kind {
            MatchType::Regex | MatchType::NotRegex => {
                Some(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    MatcherError::InvalidRegex {
                        name: name.clone(),
                        pattern: value.clone(),
                        source: Box::new(e),
                    }
                })?)
            }
            _ => None,
        };
        Ok(Self {
            name,
            kind,
            value,
            re,
        })
    }

    /// `name="value"`.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: MatchType::Equal,
            value: value.into(),
            re: None,
        }
    }

    /// Whether the label value `v` (empty when the label is absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.kind {
            MatchType::Equal => v == self.value,
            MatchType::NotEqual => v != self.value,
            MatchType::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchType::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// Whether the matcher matches the empty value, i.e. also series without the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// Whether `labels` satisfy this matcher.
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.kind {
            MatchType::Equal => "=",
            MatchType::NotEqual => "!=",
            MatchType::Regex => "=~",
            MatchType::NotRegex => "!~",
        };
        write!(f, "{}{}", self.name, op)?;
        write_go_quoted(f, &self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sort_and_format_like_prometheus() {
        let l = Labels::from_pairs([("job", "a\"b"), ("__name__", "up"), ("empty", "")]);
        assert_eq!(l.to_string(), r#"{__name__="up", job="a\"b"}"#);
        assert_eq!(l.get("job"), Some("a\"b"));
        assert_eq!(l.get("empty"), None);
    }

    #[test]
    fn regex_matchers_are_fully_anchored() {
        let m = Matcher::new(MatchType::Regex, "job", "api|web").unwrap();
        assert!(m.matches("api"));
        assert!(!m.matches("apiserver"));
        assert!(!m.matches_empty());
        let m = Matcher::new(MatchType::NotRegex, "job", "a.*").unwrap();
        assert!(m.matches(""));
        assert!(!m.matches("abc"));
        assert!(Matcher::new(MatchType::Regex, "job", "(").is_err());
    }

    #[test]
    fn stable_hash_separates_names_from_values() {
        let a = Labels::from_pairs([("ab", "c")]);
        let b = Labels::from_pairs([("a", "bc")]);
        assert_ne!(a.stable_hash(), b.stable_hash());
        assert_eq!(
            a.stable_hash(),
            Labels::from_pairs([("ab", "c")]).stable_hash()
        );
    }
}
