//! Crash consistency of the head's WAL: a process appending through the head is killed with
//! SIGKILL at random moments, and after every kill each acknowledged sample must be replayed; a
//! deliberately damaged WAL tail is reported (segment and offset) and everything before it kept.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use rimir_tsdb::head::{Head, HeadOptions};
use rimir_tsdb::labels::{Labels, Matcher};

const SERIES: usize = 20;

/// Kills the child on drop so a failing test leaves no process behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks that every series has exactly the samples `floor..=last` (value `t/2 + i`) or more
/// recent unacknowledged ones, by replaying the WAL in this process.
fn verify(dir: &Path, floor: i64, last: i64) {
    let (head, _report) = Head::open(dir, HeadOptions::default()).unwrap();
    for i in 0..SERIES {
        let got = head.select(&[Matcher::equal("i", i.to_string())], floor, last);
        let samples = got.first().map(|s| s.samples.clone()).unwrap_or_default();
        let want: Vec<(i64, f64)> = (floor..=last)
            .map(|t| (t, t as f64 * 0.5 + i as f64))
            .collect();
        assert_eq!(
            samples.len(),
            want.len(),
            "series {i}: acknowledged samples {floor}..={last} missing after SIGKILL"
        );
        assert_eq!(samples, want, "series {i}");
    }
}

#[test]
fn sigkilled_appender_loses_no_acknowledged_sample() {
    sigkill_repeatedly(1);
}

/// Four threads append each timestamp's series at once, so appends interleave in the WAL and
/// share syncs (group commit); every sample acknowledged to all of them must be replayed.
#[test]
fn sigkilled_concurrent_appenders_lose_no_acknowledged_sample() {
    sigkill_repeatedly(4);
}

fn sigkill_repeatedly(threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rimir-walstress"));
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut floor = 1i64;
    let mut last_ack: Option<i64> = None;
    let mut kills = 0;
    let mut acks_total = 0;
    while kills < 12 {
        let mut child = Killed(
            Command::new(&bin)
                .arg(dir.path())
                .arg(SERIES.to_string())
                .arg("150")
                .arg(threads.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(80..700)));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "walstress exited on its own: {status}");
        kills += 1;
        for line in reader.join().unwrap() {
            if let Some(t) = line.strip_prefix("ack ") {
                let t: i64 = t.parse().unwrap();
                assert!(last_ack.is_none_or(|l| t > l), "timestamps must increase");
                last_ack = Some(t);
                acks_total += 1;
            } else if let Some(c) = line.strip_prefix("truncating ") {
                floor = floor.max(c.parse().unwrap());
            }
        }
        if let Some(last) = last_ack {
            verify(dir.path(), floor, last);
        }
    }
    eprintln!(
        "{kills} SIGKILLs, {acks_total} acknowledged appends, last {last_ack:?}, in {:?}",
        started.elapsed()
    );
    assert!(
        acks_total > 100,
        "too little progress to prove anything: {acks_total} acks"
    );
    assert!(
        floor > 1,
        "no truncation ran: checkpoints were not exercised"
    );
}

fn labels(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "walstress".to_string()), ("i", i.to_string())])
}

/// Writes 100 acknowledged appends and returns (last segment path, its length before the last
/// append) — the offset where the last append's record starts.
fn write_wal(dir: &Path) -> (PathBuf, u64) {
    let (head, _) = Head::open(dir, HeadOptions::default()).unwrap();
    let wal = dir.join("wal");
    let mut before_last = 0;
    for t in 1..=100i64 {
        if t == 100 {
            before_last = fs::metadata(last_segment(&wal)).unwrap().len();
        }
        let batch: Vec<_> = (0..SERIES)
            .map(|i| (labels(i), vec![(t, t as f64 * 0.5 + i as f64)]))
            .collect();
        head.append(&batch).unwrap();
    }
    (last_segment(&wal), before_last)
}

fn last_segment(wal: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 8)
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn truncated_wal_tail_is_reported_and_everything_before_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, last_record) = write_wal(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last record in the middle, as a crash during its write would.
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let (head, report) = Head::open(dir.path(), HeadOptions::default()).unwrap();
    let c = report.corruption.expect("torn tail reported");
    assert_eq!(c.path, seg);
    assert_eq!(
        c.segment,
        seg.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    );
    assert_eq!(c.offset, last_record, "{c}");
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        last_record,
        "tail truncated away"
    );
    drop(head);
    verify(dir.path(), 1, 99);
}

#[test]
fn flipped_byte_in_wal_tail_is_reported_and_everything_before_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, last_record) = write_wal(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let at = last_record as usize + 12;
    bytes[at] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    // The stress binary opening it reports the damage with segment and offset.
    let out = Command::new(env!("CARGO_BIN_EXE_rimir-walstress"))
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(out);
    let mut first = String::new();
    BufReader::new(child.0.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    drop(child);
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        first.contains(&format!("segment {name}"))
            && first.contains(&format!("at offset {last_record}")),
        "{first}"
    );
    assert!(first.contains("checksum mismatch"), "{first}");
    // The binary appended after the repair; everything up to 99 is intact.
    verify(dir.path(), 1, 99);
}
