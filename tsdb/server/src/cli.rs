//! `rimir tsdb …`: block tools mirroring promtool's, so users and tests can check interop.
//!
//! `create-blocks-from openmetrics IN OUT`, `dump DIR`, `list DIR`, `analyze DIR`,
//! `decompress DIR OUT` (plain copies of cold-compressed blocks). Output formats
//! follow promtool 2.42 (`dump` prints `labels value timestamp` lines like `promtool tsdb dump`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use thiserror::Error;

use rimir_tsdb::block::{Block, BlockError, BlockMeta, BlockOptions, list_block_dirs, write_block};
use rimir_tsdb::labels::{Labels, MatchType, Matcher};
use rimir_tsdb::openmetrics;
use rimir_tsdb::series::{Sample, merge_samples};

/// Default block range of `create-blocks-from`: 2h, as promtool.
pub const BLOCK_RANGE_MS: i64 = 2 * 3600 * 1000;

/// A `rimir tsdb` command failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// Reading an input file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The OpenMetrics input is malformed.
    #[error("parse {path}: {source}")]
    OpenMetrics {
        /// The input file.
        path: PathBuf,
        /// What is wrong.
        source: openmetrics::ParseError,
    },
    /// A block could not be read or written.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The `--match` selector is not a valid series selector.
    #[error("invalid --match selector {selector:?}: {reason}")]
    Selector {
        /// The selector as given.
        selector: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Writing to standard output failed.
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
}

/// The `rimir tsdb` command line.
#[derive(Debug, Parser)]
#[command(
    name = "rimir tsdb",
    about = "Inspect and create Prometheus TSDB blocks"
)]
pub struct TsdbArgs {
    #[command(subcommand)]
    command: TsdbCommand,
}

#[derive(Debug, Subcommand)]
enum TsdbCommand {
    /// Create blocks from an input format.
    #[command(name = "create-blocks-from")]
    CreateBlocksFrom {
        #[command(subcommand)]
        from: CreateFrom,
    },
    /// Print every sample of the blocks in DIR as `labels value timestamp` lines.
    Dump {
        /// Directory holding blocks.
        dir: PathBuf,
        /// Series selector, e.g. `up{job="node"}`.
        #[arg(long = "match")]
        selector: Option<String>,
        /// Minimum timestamp (ms) to dump.
        #[arg(long = "min-time", default_value_t = i64::MIN, allow_negative_numbers = true)]
        min_time: i64,
        /// Maximum timestamp (ms) to dump.
        #[arg(long = "max-time", default_value_t = i64::MAX, allow_negative_numbers = true)]
        max_time: i64,
    },
    /// List the blocks in DIR.
    List {
        /// Directory holding blocks.
        dir: PathBuf,
    },
    /// Write plain Prometheus copies of the (possibly cold-compressed) blocks in DIR to OUT.
    Decompress {
        /// Directory holding blocks.
        dir: PathBuf,
        /// Output directory.
        out: PathBuf,
    },
    /// Summarise the blocks in DIR: sizes, bytes per sample, label cardinalities.
    Analyze {
        /// Directory holding blocks.
        dir: PathBuf,
        /// How many entries of each top list to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum CreateFrom {
    /// From an OpenMetrics text file with timestamps (ends with `# EOF`).
    Openmetrics {
        /// Input file.
        input: PathBuf,
        /// Output directory for the blocks.
        #[arg(default_value = "data")]
        output: PathBuf,
    },
}

/// Runs `rimir tsdb` with `args` (the words after `tsdb`), writing to standard output.
pub fn run(args: &[String]) -> Result<(), CliError> {
    let parsed = match TsdbArgs::try_parse_from(
        std::iter::once("rimir tsdb".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(p) => p,
        Err(e) => e.exit(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match parsed.command {
        TsdbCommand::CreateBlocksFrom {
            from: CreateFrom::Openmetrics { input, output },
        } => {
            for m in create_blocks_from_openmetrics(&input, &output)? {
                writeln!(out, "BLOCK ULID {} {} {}", m.ulid, m.min_time, m.max_time)?;
            }
        }
        TsdbCommand::Dump {
            dir,
            selector,
            min_time,
            max_time,
        } => {
            let matchers = match selector {
                Some(s) => parse_selector(&s)?,
                None => vec![],
            };
            dump(&dir, &matchers, min_time, max_time, &mut out)?;
        }
        TsdbCommand::List { dir } => list(&dir, &mut out)?,
        TsdbCommand::Decompress { dir, out: dst } => {
            std::fs::create_dir_all(&dst).map_err(|source| CliError::Read {
                path: dst.clone(),
                source,
            })?;
            for d in list_block_dirs(&dir)? {
                let p = rimir_tsdb::block::decompress_block_to(&d, &dst)?;
                writeln!(out, "{}", p.display())?;
            }
        }
        TsdbCommand::Analyze { dir, limit } => analyze(&dir, limit, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

/// Parses a series selector such as `up{job=~"a.*"}` into matchers.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, CliError> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{self, Expr};
    let err = |reason: String| CliError::Selector {
        selector: s.to_string(),
        reason,
    };
    let expr = parser::parse(s).map_err(err)?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(err("not a series selector".into()));
    };
    let mut out = Vec::new();
    if let Some(name) = vs.name {
        out.push(Matcher::equal(rimir_tsdb::labels::METRIC_NAME, name));
    }
    for m in vs.matchers.matchers {
        let kind = match m.op {
            MatchOp::Equal => MatchType::Equal,
            MatchOp::NotEqual => MatchType::NotEqual,
            MatchOp::Re(_) => MatchType::Regex,
            MatchOp::NotRe(_) => MatchType::NotRegex,
        };
        out.push(Matcher::new(kind, m.name, m.value).map_err(|e| err(e.to_string()))?);
    }
    Ok(out)
}

/// Builds 2h-aligned blocks from an OpenMetrics file, as `promtool tsdb create-blocks-from`.
pub fn create_blocks_from_openmetrics(
    input: &Path,
    output: &Path,
) -> Result<Vec<BlockMeta>, CliError> {
    let text = std::fs::read_to_string(input).map_err(|source| CliError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let samples = openmetrics::parse(&text).map_err(|source| CliError::OpenMetrics {
        path: input.to_path_buf(),
        source,
    })?;
    let mut windows: BTreeMap<i64, HashMap<Labels, Vec<Sample>>> = BTreeMap::new();
    for s in samples {
        let w = s.t.div_euclid(BLOCK_RANGE_MS) * BLOCK_RANGE_MS;
        windows
            .entry(w)
            .or_default()
            .entry(s.labels)
            .or_default()
            .push((s.t, s.v));
    }
    std::fs::create_dir_all(output).map_err(|source| CliError::Read {
        path: output.to_path_buf(),
        source,
    })?;
    let mut metas = Vec::new();
    for (_, series) in windows {
        let series = series
            .into_iter()
            .map(|(l, mut s)| {
                s.sort_by_key(|x| x.0);
                s.dedup_by_key(|x| x.0);
                (l, s)
            })
            .collect();
        let opts = BlockOptions {
            source: "rimir-cli".into(),
            ..BlockOptions::default()
        };
        metas.push(write_block(output, series, &opts)?);
    }
    Ok(metas)
}

fn open_blocks(dir: &Path) -> Result<Vec<Block>, CliError> {
    let mut blocks = Vec::new();
    for d in list_block_dirs(dir)? {
        blocks.push(Block::open(&d)?);
    }
    Ok(blocks)
}

/// Writes every sample of the matching series in `[mint, maxt]` of the blocks in `dir`, series
/// merged across blocks in label order, as `promtool tsdb dump` does.
pub fn dump(
    dir: &Path,
    matchers: &[Matcher],
    mint: i64,
    maxt: i64,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let all = Matcher::new(MatchType::Regex, "", ".*").expect("static regex");
    let matchers: Vec<Matcher> = if matchers.is_empty() {
        vec![all]
    } else {
        matchers.to_vec()
    };
    let mut merged: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
    for b in open_blocks(dir)? {
        b.for_each_series(&matchers, mint, maxt, |s| {
            merged.entry(s.labels).or_default().push(s.samples);
            Ok(())
        })?;
    }
    let mut line = String::new();
    for (labels, parts) in merged {
        let refs: Vec<&[Sample]> = parts.iter().map(|p| p.as_slice()).collect();
        let lbls = labels.to_string();
        for (t, v) in merge_samples(&refs) {
            line.clear();
            let _ = write!(line, "{lbls} {} {t}", format_go_g(v));
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn list(dir: &Path, out: &mut impl Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{:<26} {:<14} {:<14} {:<10} {:>12} {:>10} {:>10} {:>12}",
        "BLOCK ULID",
        "MIN TIME",
        "MAX TIME",
        "DURATION",
        "NUM SAMPLES",
        "NUM CHUNKS",
        "NUM SERIES",
        "SIZE"
    )?;
    for d in list_block_dirs(dir)? {
        let m = rimir_tsdb::block::read_meta(&d)?;
        writeln!(
            out,
            "{:<26} {:<14} {:<14} {:<10} {:>12} {:>10} {:>10} {:>12}",
            m.ulid,
            m.min_time,
            m.max_time,
            format_duration_ms(m.max_time - m.min_time),
            m.stats.num_samples,
            m.stats.num_chunks,
            m.stats.num_series,
            rimir_tsdb::block::dir_bytes(&d)
        )?;
    }
    Ok(())
}

fn analyze(dir: &Path, limit: usize, out: &mut impl Write) -> Result<(), CliError> {
    for b in open_blocks(dir)? {
        let m = b.meta();
        let index_bytes = b.index().file_size();
        let chunk_bytes = b.chunk_reader().total_bytes();
        writeln!(out, "Block ID: {}", m.ulid)?;
        writeln!(
            out,
            "Duration: {}",
            format_duration_ms(m.max_time - m.min_time)
        )?;
        writeln!(out, "Series: {}", m.stats.num_series)?;
        writeln!(out, "Samples: {}", m.stats.num_samples)?;
        writeln!(out, "Chunks: {}", m.stats.num_chunks)?;
        writeln!(out, "Chunk bytes: {chunk_bytes}")?;
        writeln!(out, "Index bytes: {index_bytes}")?;
        let per = |bytes: u64| {
            if m.stats.num_samples == 0 {
                0.0
            } else {
                bytes as f64 / m.stats.num_samples as f64
            }
        };
        writeln!(out, "Bytes/sample (chunks): {:.3}", per(chunk_bytes))?;
        writeln!(
            out,
            "Bytes/sample (chunks+index): {:.3}",
            per(chunk_bytes + index_bytes)
        )?;
        let mut cards = Vec::new();
        for name in b.label_names()? {
            let n = b.label_values(&name)?.len();
            cards.push((n, name));
        }
        cards.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        writeln!(out, "\nHighest cardinality labels:")?;
        for (n, name) in cards.iter().take(limit) {
            writeln!(out, "{n} {name}")?;
        }
        let mut metrics = Vec::new();
        for v in b.label_values(rimir_tsdb::labels::METRIC_NAME)? {
            let n = b
                .index()
                .postings(rimir_tsdb::labels::METRIC_NAME, &v)
                .map_err(BlockError::from)?
                .len();
            metrics.push((n, v));
        }
        metrics.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        writeln!(out, "\nHighest cardinality metric names:")?;
        for (n, name) in metrics.iter().take(limit) {
            writeln!(out, "{n} {name}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Formats milliseconds like Go's `time.Duration.String` (`2h0m0s`, `1m30s`, `1.5s`).
pub fn format_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = ms < 0;
    let ms = ms.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    if ms < 1000 {
        return format!("{sign}{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let s = (ms % 60_000) as f64 / 1000.0;
    let secs = format_go_g(s);
    if h > 0 {
        format!("{sign}{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{sign}{m}m{secs}s")
    } else {
        format!("{sign}{secs}s")
    }
}

/// Formats a float exactly as Go's `fmt` `%g` verb does (shortest round-trip digits, exponent
/// form when the exponent is below -4 or at least 6, `+Inf`, `-Inf`, `NaN`).
pub fn format_go_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v == 0.0 {
        return format!("{sign}0");
    }
    let e = format!("{:e}", v.abs());
    let (mant, exp) = e.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let nd = digits.len() as i32;
    if !(-4..6).contains(&exp) {
        let mut s = format!("{sign}{}", &digits[..1]);
        if nd > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
        return s;
    }
    let dp = exp + 1;
    if dp <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-dp) as usize))
    } else if dp >= nd {
        format!("{sign}{digits}{}", "0".repeat((dp - nd) as usize))
    } else {
        format!(
            "{sign}{}.{}",
            &digits[..dp as usize],
            &digits[dp as usize..]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_g_formatting_matches_go() {
        let cases = [
            (1.0, "1"),
            (0.5, "0.5"),
            (100000.0, "100000"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (-2.5, "-2.5"),
            (1e21, "1e+21"),
            (123.456, "123.456"),
            (1.7e308, "1.7e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (-0.0, "-0"),
        ];
        for (v, want) in cases {
            assert_eq!(format_go_g(v), want, "{v}");
        }
        assert_eq!(format_go_g(f64::from_bits(0x7ff0000000000002)), "NaN");
    }

    #[test]
    fn durations_format_like_go() {
        assert_eq!(format_duration_ms(7_200_000), "2h0m0s");
        assert_eq!(format_duration_ms(90_500), "1m30.5s");
        assert_eq!(format_duration_ms(15), "15ms");
    }

    #[test]
    fn selector_parses_into_matchers() {
        let m = parse_selector(r#"up{job=~"a.*",x!="y"}"#).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].to_string(), r#"__name__="up""#);
        assert!(parse_selector("sum(up)").is_err());
    }
}
