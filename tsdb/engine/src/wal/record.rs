//! The records the head logs — series definitions and samples — and their byte encoding, which
//! follows Prometheus' `tsdb/record` package (types 1 and 2) so the layouts can be compared.

use crate::encoding::{Decbuf, DecodeError, Encbuf};
use crate::labels::{Label, Labels};

/// Record type byte of a series record.
pub const SERIES_TYPE: u8 = 1;
/// Record type byte of a samples record.
pub const SAMPLES_TYPE: u8 = 2;

/// A series definition: the head's reference for a series and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefSeries {
    /// The head's reference of the series, used by sample records.
    pub series_ref: u64,
    /// The series' labels.
    pub labels: Labels,
}

/// One sample of the series with reference `series_ref`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefSample {
    /// Reference of the series, defined by an earlier series record.
    pub series_ref: u64,
    /// Timestamp in milliseconds.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One logical WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// New series (type 1).
    Series(Vec<RefSeries>),
    /// Samples of known series (type 2).
    Samples(Vec<RefSample>),
}

impl Record {
    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Series(s) => encode_series(s, out),
            Record::Samples(s) => encode_samples(s, out),
        }
    }

    /// Decodes one record; `Ok(None)` for a record type this version does not know (skipped,
    /// as Prometheus' readers skip record types they do not use).
    pub fn decode(b: &[u8]) -> Result<Option<Record>, DecodeError> {
        let mut d = Decbuf::new(b);
        match d.byte()? {
            SERIES_TYPE => {
                let mut out = Vec::new();
                while d.remaining() > 0 {
                    let series_ref = d.be64()?;
                    let n = d.uvarint_usize(d.remaining(), "label count")?;
                    let mut labels = Vec::with_capacity(n);
                    for _ in 0..n {
                        let name = d.uvarint_str()?.to_owned();
                        let value = d.uvarint_str()?.to_owned();
                        labels.push(Label { name, value });
                    }
                    if !labels.windows(2).all(|w| w[0].name < w[1].name) {
                        return Err(d.error("series labels not sorted by unique name"));
                    }
                    out.push(RefSeries {
                        series_ref,
                        labels: Labels::from_sorted(labels),
                    });
                }
                Ok(Some(Record::Series(out)))
            }
            SAMPLES_TYPE => {
                let mut out = Vec::new();
                if d.remaining() == 0 {
                    return Ok(Some(Record::Samples(out)));
                }
                let base_ref = d.be64()?;
                let base_t = d.be64()? as i64;
                while d.remaining() > 0 {
                    let dref = d.varint()?;
                    let dt = d.varint()?;
                    let v = f64::from_bits(d.be64()?);
                    out.push(RefSample {
                        series_ref: (base_ref as i64).wrapping_add(dref) as u64,
                        t: base_t.wrapping_add(dt),
                        v,
                    });
                }
                Ok(Some(Record::Samples(out)))
            }
            _ => Ok(None),
        }
    }
}

/// Appends a series record: type, then per series its 8-byte reference, the label count and
/// the length-prefixed names and values.
pub fn encode_series(series: &[RefSeries], out: &mut Vec<u8>) {
    let mut e = Encbuf {
        buf: std::mem::take(out),
    };
    e.put_byte(SERIES_TYPE);
    for s in series {
        e.put_be64(s.series_ref);
        e.put_uvarint(s.labels.len() as u64);
        for l in s.labels.iter() {
            e.put_uvarint_str(&l.name);
            e.put_uvarint_str(&l.value);
        }
    }
    *out = e.buf;
}

/// Appends a samples record: type, the first sample's reference and timestamp as 8-byte bases,
/// then per sample the signed varint deltas of reference and timestamp to the bases and the
/// value's 8 bytes.
pub fn encode_samples(samples: &[RefSample], out: &mut Vec<u8>) {
    let mut e = Encbuf {
        buf: std::mem::take(out),
    };
    e.put_byte(SAMPLES_TYPE);
    if let Some(first) = samples.first() {
        e.buf.reserve(16 + samples.len() * 12);
        e.put_be64(first.series_ref);
        e.put_be64(first.t as u64);
        for s in samples {
            e.put_varint((s.series_ref as i64).wrapping_sub(first.series_ref as i64));
            e.put_varint(s.t.wrapping_sub(first.t));
            e.put_be64(s.v.to_bits());
        }
    }
    *out = e.buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_samples_round_trip_bit_exactly() {
        let series = Record::Series(vec![
            RefSeries {
                series_ref: 7,
                labels: Labels::from_pairs([("__name__", "up"), ("job", "node")]),
            },
            RefSeries {
                series_ref: 1 << 40,
                labels: Labels::default(),
            },
        ]);
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let samples = Record::Samples(vec![
            RefSample {
                series_ref: 7,
                t: 1000,
                v: 1.5,
            },
            RefSample {
                series_ref: 3,
                t: 999,
                v: stale,
            },
            RefSample {
                series_ref: 1 << 40,
                t: -5,
                v: f64::NEG_INFINITY,
            },
        ]);
        for r in [series, samples, Record::Samples(vec![])] {
            let mut b = Vec::new();
            r.encode(&mut b);
            let back = Record::decode(&b).unwrap().unwrap();
            match (&r, &back) {
                (Record::Samples(a), Record::Samples(b)) => {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(b) {
                        assert_eq!(
                            (x.series_ref, x.t, x.v.to_bits()),
                            (y.series_ref, y.t, y.v.to_bits())
                        );
                    }
                }
                _ => assert_eq!(r, back),
            }
        }
    }

    #[test]
    fn samples_cost_about_ten_bytes_each() {
        let s: Vec<RefSample> = (0..1000)
            .map(|i| RefSample {
                series_ref: i,
                t: 1_700_000_000_000,
                v: 1.0,
            })
            .collect();
        let mut b = Vec::new();
        encode_samples(&s, &mut b);
        assert!(b.len() <= 17 + 1000 * 12, "{}", b.len());
    }

    #[test]
    fn truncated_record_reports_offset() {
        let mut b = Vec::new();
        encode_samples(
            &[RefSample {
                series_ref: 1,
                t: 2,
                v: 3.0,
            }],
            &mut b,
        );
        let e = Record::decode(&b[..b.len() - 3]).unwrap_err();
        assert_eq!(e.offset, b.len() - 8);
        assert_eq!(Record::decode(&[9, 1, 2]).unwrap(), None);
    }
}
