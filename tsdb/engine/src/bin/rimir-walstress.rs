//! Crash-test driver for the head and its WAL: opens a head on a directory and appends batches
//! forever, printing `ack <t>` after every acknowledged append (every series got a sample at
//! timestamp `t`) and `truncating <t>` before each truncation of samples older than `t`. `tests/crash_consistency.rs` kills
//! it with SIGKILL at random moments and checks that every acknowledged sample survived.
//!
//! With `THREADS > 1` every timestamp's batch is split between that many threads appending at
//! once, so acknowledgements rest on fsyncs other appenders performed (group commit); `ack <t>`
//! is printed once every thread's append of `t` returned.
//!
//! Usage: `rimir-walstress DIR [SERIES] [TRUNCATE_EVERY] [THREADS]` (defaults 50, 0 = never, 1).

use std::io::Write;
use std::path::PathBuf;

use rimir_tsdb::head::{Head, HeadOptions};
use rimir_tsdb::labels::{Labels, Matcher};
use rimir_tsdb::wal::{PAGE_SIZE, WalOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: rimir-walstress DIR [SERIES] [TRUNCATE_EVERY] [THREADS]")
    })?);
    let series: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let truncate_every: i64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let threads: usize = args.next().map_or(Ok(1), |s| s.parse())?.max(1);
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
    // Resume after the newest timestamp every series has: with several threads a kill can
    // land between their appends of one timestamp, and the series that missed it must get it
    // (series that have it take it again as an identical duplicate).
    let stored = head.select(
        &[Matcher::equal("__name__", "walstress")],
        i64::MIN,
        i64::MAX,
    );
    let mut t = if stored.len() < series {
        1
    } else {
        stored
            .iter()
            .filter_map(|s| s.samples.last().map(|x| x.0))
            .min()
            .map_or(1, |m| m + 1)
    };
    let mut out = std::io::stdout().lock();
    loop {
        let append = |k: usize| -> anyhow::Result<()> {
            let batch: Vec<(Labels, Vec<(i64, f64)>)> = labels
                .iter()
                .enumerate()
                .filter(|(i, _)| i % threads == k)
                .map(|(i, l)| (l.clone(), vec![(t, (t as f64) * 0.5 + i as f64)]))
                .collect();
            let summary = head.append(&batch)?;
            anyhow::ensure!(
                summary.rejected.is_empty(),
                "append at {t} rejected: {:?}",
                summary.rejected
            );
            Ok(())
        };
        if threads == 1 {
            append(0)?;
        } else {
            std::thread::scope(|scope| -> anyhow::Result<()> {
                let handles: Vec<_> = (0..threads)
                    .map(|k| scope.spawn(move || append(k)))
                    .collect();
                for h in handles {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("appender thread panicked"))??;
                }
                Ok(())
            })?;
        }
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
