//! Crash-test driver for the head and its WAL: opens a head on a directory and appends batches
//! forever, printing `ack <t>` after every acknowledged append (every series got a sample at
//! timestamp `t`) and `truncating <t>` before each truncation of samples older than `t`. `tests/crash_consistency.rs` kills
//! it with SIGKILL at random moments and checks that every acknowledged sample survived.
//!
//! Usage: `rimir-walstress DIR [SERIES] [TRUNCATE_EVERY]` (defaults 50 and 0 = never).

use std::io::Write;
use std::path::PathBuf;

use rimir_tsdb::head::{Head, HeadOptions};
use rimir_tsdb::labels::Labels;
use rimir_tsdb::wal::{PAGE_SIZE, WalOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir =
        PathBuf::from(args.next().ok_or_else(|| {
            anyhow::anyhow!("usage: rimir-walstress DIR [SERIES] [TRUNCATE_EVERY]")
        })?);
    let series: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let truncate_every: i64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let opts = HeadOptions {
        // Small segments so that runs cross segment boundaries.
        wal: WalOptions {
            segment_size: 4 * PAGE_SIZE,
            ..Default::default()
        },
        ..Default::default()
    };
    let (head, report) = Head::open(&dir, opts)?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "replayed series={} samples={} corruption={}",
        report.series,
        report.samples,
        report
            .corruption
            .map_or_else(|| "none".into(), |c| c.to_string())
    )?;
    let labels: Vec<Labels> = (0..series)
        .map(|i| Labels::from_pairs([("__name__", "walstress".to_string()), ("i", i.to_string())]))
        .collect();
    let mut t = head.max_time().map_or(1, |m| m + 1);
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<(Labels, Vec<(i64, f64)>)> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), vec![(t, (t as f64) * 0.5 + i as f64)]))
            .collect();
        let summary = head.append(&batch)?;
        anyhow::ensure!(
            summary.rejected.is_empty(),
            "append at {t} rejected: {:?}",
            summary.rejected
        );
        writeln!(out, "ack {t}")?;
        out.flush()?;
        if truncate_every > 0 && t % truncate_every == 0 {
            // Announced before it starts: once truncation begins, older samples may go.
            let cut = t - truncate_every / 2;
            writeln!(out, "truncating {cut}")?;
            out.flush()?;
            head.truncate_before(cut)?;
        }
        t += 1;
    }
}
