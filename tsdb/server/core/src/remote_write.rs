//! Prometheus remote-write 1.0 messages: prost types for clients, and a zero-copy decoder for the
//! push path that borrows every label name and value from the request body.
//!
//! Wire schema (prometheus/prompb): `WriteRequest{repeated TimeSeries timeseries = 1; repeated
//! MetricMetadata metadata = 3}`, `TimeSeries{repeated Label labels = 1; repeated Sample samples
//! = 2; exemplars = 3; histograms = 4}`, `Label{string name = 1; string value = 2}`,
//! `Sample{double value = 1; int64 timestamp = 2}`, `MetricMetadata{MetricType type = 1; string
//! metric_family_name = 2; string help = 4; string unit = 5}`.
//!
//! rimir does not store exemplars or native histograms yet. The decoder counts them per series
//! ([`WriteRequestRef::unstored`]) so that the distributor refuses them by name instead of
//! answering 200 for data it dropped, and it notices the top-level fields of a remote-write 2.0
//! `io.prometheus.write.v2.Request` (`symbols = 4`, `timeseries = 5`) sent as 1.0
//! ([`WriteRequestRef::v2_fields`]). [`negotiate`] reads the `Content-Type` header.

use std::ops::Range;

use thiserror::Error;

use rimir_tsdb::encoding::uvarint;
use rimir_tsdb::series::Sample;

/// A remote-write request (owned, for clients and tests).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    /// Metric metadata (Prometheus sends it in requests of its own, every minute by default).
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

pub use rimir_tsdb::metadata::MetricMetadata;

/// Metric metadata borrowed from a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataRef<'a> {
    /// `MetricType` code (see [`MetricMetadata`]).
    pub kind: i32,
    /// Metric family name.
    pub name: &'a str,
    /// HELP text.
    pub help: &'a str,
    /// UNIT.
    pub unit: &'a str,
}

impl MetadataRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> MetricMetadata {
        MetricMetadata {
            r#type: self.kind,
            metric_family_name: self.name.to_string(),
            help: self.help.to_string(),
            unit: self.unit.to_string(),
        }
    }
}

impl WriteRequest {
    /// The protobuf encoding (uncompressed).
    pub fn encode_to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// One series of a [`WriteRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Labels, sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PbSample>,
    /// Exemplars (rimir refuses them: not stored yet).
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    /// Native histogram samples (rimir refuses them: not stored yet).
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<HistogramSample>,
}

/// An exemplar: a sample of a trace, with its own labels (`trace_id`, …).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    /// The exemplar's labels.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Value.
    #[prost(double, tag = "2")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// A native histogram sample, with the fields of prompb's `Histogram` that place and size it:
/// its integer count, sum, schema and timestamp. Its buckets (fields 6 to 14) are not modelled:
/// rimir refuses histograms, and this type exists so that clients and tests can send them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramSample {
    /// Observation count (`count_int`, the integer-histogram variant of the `count` oneof).
    #[prost(uint64, tag = "1")]
    pub count_int: u64,
    /// Sum of observations.
    #[prost(double, tag = "3")]
    pub sum: f64,
    /// Resolution of the exponential buckets (-4 to 8).
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// The remote-write message a `Content-Type` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// `prometheus.WriteRequest`: remote-write 1.0, the one rimir decodes.
    V1,
    /// `io.prometheus.write.v2.Request`: remote-write 2.0, which rimir does not decode yet.
    V2,
}

/// A `Content-Type` that no remote-write receiver accepts, or one rimir does not decode; the
/// push is answered 415 with this message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContentTypeError {
    /// Not `application/x-protobuf`.
    #[error(
        "unsupported Content-Type {0:?}: remote-write bodies are application/x-protobuf (snappy-compressed)"
    )]
    NotProtobuf(String),
    /// A `proto=` parameter naming no remote-write message.
    #[error("unsupported remote-write message {0:?} in Content-Type: use prometheus.WriteRequest")]
    UnknownMessage(String),
    /// Remote-write 2.0, not decoded yet.
    #[error(
        "remote-write 2.0 (io.prometheus.write.v2.Request) is not supported yet: nothing was stored; send remote-write 1.0 (Prometheus: protobuf_message: prometheus.WriteRequest, the default)"
    )]
    V2Unsupported,
}

/// Reads a push's `Content-Type` header as the remote-write spec defines it:
/// `application/x-protobuf` with an optional `proto=` parameter (`prometheus.WriteRequest` when
/// absent). Returns the message for 1.0; 2.0 and anything else is a [`ContentTypeError`].
pub fn negotiate(content_type: Option<&str>) -> Result<Message, ContentTypeError> {
    let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Message::V1); // Old senders omit the header; their bodies are 1.0.
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(ContentTypeError::NotProtobuf(ct.to_string()));
    }
    let mut message = Message::V1;
    for param in parts {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        message = match v.trim().trim_matches('"') {
            "prometheus.WriteRequest" => Message::V1,
            "io.prometheus.write.v2.Request" => Message::V2,
            other => return Err(ContentTypeError::UnknownMessage(other.to_string())),
        };
    }
    match message {
        Message::V1 => Ok(Message::V1),
        Message::V2 => Err(ContentTypeError::V2Unsupported),
    }
}

/// What a series of a request carried that rimir does not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unstored {
    /// Index of the series in the request ([`WriteRequestRef::series`]).
    pub series: usize,
    /// Native histogram samples.
    pub histograms: usize,
    /// Exemplars.
    pub exemplars: usize,
}

/// A label pair.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A float sample.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbSample {
    /// Value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The protobuf body could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("malformed or truncated {what} at byte offset {offset}")]
pub struct ProtoError {
    /// Offset in the decompressed body.
    pub offset: usize,
    /// What was malformed.
    pub what: &'static str,
}

pub use rimir_tsdb::labels::LabelRef;

/// A decoded request: every series' labels and samples in two flat arrays, so decoding costs
/// no allocation per label or per series beyond amortised vector growth.
#[derive(Debug, Default, Clone)]
pub struct WriteRequestRef<'a> {
    labels: Vec<LabelRef<'a>>,
    samples: Vec<Sample>,
    series: Vec<(Range<u32>, Range<u32>)>,
    metadata: Vec<MetadataRef<'a>>,
    unstored: Vec<Unstored>,
    v2_fields: usize,
}

impl<'a> WriteRequestRef<'a> {
    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there are no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Total number of samples.
    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// Series `i`: its labels (in request order) and samples.
    pub fn series(&self, i: usize) -> (&[LabelRef<'a>], &[Sample]) {
        let (l, s) = &self.series[i];
        (
            &self.labels[l.start as usize..l.end as usize],
            &self.samples[s.start as usize..s.end as usize],
        )
    }

    /// Every series in request order.
    pub fn iter(&self) -> impl Iterator<Item = (&[LabelRef<'a>], &[Sample])> + '_ {
        (0..self.series.len()).map(|i| self.series(i))
    }

    /// The metric metadata of the request, in request order.
    pub fn metadata(&self) -> &[MetadataRef<'a>] {
        &self.metadata
    }

    /// The series that carried histograms or exemplars, which are not stored, in request order.
    pub fn unstored(&self) -> &[Unstored] {
        &self.unstored
    }

    /// How many top-level fields of a remote-write 2.0 request (`symbols`, `timeseries`) the body
    /// held: a 2.0 body sent as 1.0 decodes to no series and must not be acknowledged.
    pub fn v2_fields(&self) -> usize {
        self.v2_fields
    }

    /// Decodes a remote-write `WriteRequest` without copying strings.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtoError> {
        let mut out = WriteRequestRef::default();
        let mut r = Reader { b: body, pos: 0 };
        while !r.done() {
            let (field, wt) = r.key()?;
            if field == 1 && wt == WT_LEN {
                let (start, end) = r.len_delimited("TimeSeries")?;
                out.decode_series(body, start, end)?;
            } else if field == 3 && wt == WT_LEN {
                let (start, end) = r.len_delimited("MetricMetadata")?;
                out.metadata.push(decode_metadata(body, start, end)?);
            } else {
                if field == 4 || field == 5 {
                    out.v2_fields += 1;
                }
                r.skip(wt)?;
            }
        }
        Ok(out)
    }

    fn decode_series(
        &mut self,
        body: &'a [u8],
        start: usize,
        end: usize,
    ) -> Result<(), ProtoError> {
        let l0 = self.labels.len() as u32;
        let s0 = self.samples.len() as u32;
        let (mut histograms, mut exemplars) = (0, 0);
        let mut r = Reader {
            b: &body[..end],
            pos: start,
        };
        while !r.done() {
            let (field, wt) = r.key()?;
            match (field, wt) {
                (1, WT_LEN) => {
                    let (ls, le) = r.len_delimited("Label")?;
                    self.labels.push(decode_label(body, ls, le)?);
                }
                (2, WT_LEN) => {
                    let (ss, se) = r.len_delimited("Sample")?;
                    self.samples.push(decode_sample(body, ss, se)?);
                }
                (3, WT_LEN) => {
                    r.len_delimited("Exemplar")?;
                    exemplars += 1;
                }
                (4, WT_LEN) => {
                    r.len_delimited("Histogram")?;
                    histograms += 1;
                }
                _ => r.skip(wt)?,
            }
        }
        if histograms + exemplars > 0 {
            self.unstored.push(Unstored {
                series: self.series.len(),
                histograms,
                exemplars,
            });
        }
        self.series
            .push((l0..self.labels.len() as u32, s0..self.samples.len() as u32));
        Ok(())
    }
}

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

fn decode_label(body: &[u8], start: usize, end: usize) -> Result<LabelRef<'_>, ProtoError> {
    let mut r = Reader {
        b: &body[..end],
        pos: start,
    };
    let (mut name, mut value) = ("", "");
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WT_LEN) => name = r.str("label name")?,
            (2, WT_LEN) => value = r.str("label value")?,
            _ => r.skip(wt)?,
        }
    }
    Ok(LabelRef { name, value })
}

fn decode_metadata(body: &[u8], start: usize, end: usize) -> Result<MetadataRef<'_>, ProtoError> {
    let mut r = Reader {
        b: &body[..end],
        pos: start,
    };
    let mut m = MetadataRef {
        kind: 0,
        name: "",
        help: "",
        unit: "",
    };
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WT_VARINT) => m.kind = r.varint("metadata type")? as i32,
            (2, WT_LEN) => m.name = r.str("metadata metric name")?,
            (4, WT_LEN) => m.help = r.str("metadata help")?,
            (5, WT_LEN) => m.unit = r.str("metadata unit")?,
            _ => r.skip(wt)?,
        }
    }
    Ok(m)
}

fn decode_sample(body: &[u8], start: usize, end: usize) -> Result<Sample, ProtoError> {
    let mut r = Reader {
        b: &body[..end],
        pos: start,
    };
    let (mut t, mut v) = (0i64, 0f64);
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WT_I64) => v = f64::from_bits(r.fixed64("sample value")?),
            (2, WT_VARINT) => t = r.varint("sample timestamp")? as i64,
            _ => r.skip(wt)?,
        }
    }
    Ok((t, v))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn err(&self, what: &'static str) -> ProtoError {
        ProtoError {
            offset: self.pos,
            what,
        }
    }

    #[inline]
    fn varint(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        // Keys and lengths are nearly always one byte.
        if let Some(&b) = self.b.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let (v, n) = uvarint(&self.b[self.pos..]).ok_or_else(|| self.err(what))?;
        self.pos += n;
        Ok(v)
    }

    fn key(&mut self) -> Result<(u64, u8), ProtoError> {
        let k = self.varint("field key")?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn fixed64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        let bytes = self
            .b
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| self.err(what))?;
        self.pos += 8;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(a))
    }

    fn len_delimited(&mut self, what: &'static str) -> Result<(usize, usize), ProtoError> {
        let at = self.pos;
        let n = self.varint(what)?;
        let start = self.pos;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or(ProtoError { offset: at, what })?;
        self.pos = end;
        Ok((start, end))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, ProtoError> {
        let at = self.pos;
        let (s, e) = self.len_delimited(what)?;
        std::str::from_utf8(&self.b[s..e]).map_err(|_| ProtoError {
            offset: at,
            what: if what.starts_with("metadata") {
                "metadata string (invalid UTF-8)"
            } else {
                "label (invalid UTF-8)"
            },
        })
    }

    fn skip(&mut self, wt: u8) -> Result<(), ProtoError> {
        match wt {
            WT_VARINT => {
                self.varint("varint field")?;
            }
            WT_I64 => {
                self.fixed64("fixed64 field")?;
            }
            WT_LEN => {
                self.len_delimited("length-delimited field")?;
            }
            WT_I32 => {
                if self.pos + 4 > self.b.len() {
                    return Err(self.err("fixed32 field"));
                }
                self.pos += 4;
            }
            _ => return Err(self.err("field key (unknown wire type)")),
        }
        Ok(())
    }
}

/// Appends one `TimeSeries` (field 1 of `WriteRequest`) to `out`, protobuf-encoded: the
/// distributor re-encodes each ingester's share of a request this way without building owned
/// messages.
pub fn encode_series(out: &mut Vec<u8>, labels: &[LabelRef<'_>], samples: &[Sample]) {
    let label_len = |l: &LabelRef<'_>| {
        field_len(l.name.len()) + usize::from(!l.value.is_empty()) * field_len(l.value.len())
    };
    let sample_len = |&(t, v): &Sample| {
        usize::from(v.to_bits() != 0) * 9 + usize::from(t != 0) * (1 + varint_len(t as u64))
    };
    let body: usize = labels
        .iter()
        .map(|l| field_len(label_len(l)))
        .sum::<usize>()
        + samples
            .iter()
            .map(|s| field_len(sample_len(s)))
            .sum::<usize>();
    out.push(0x0a);
    put_varint(out, body as u64);
    for l in labels {
        out.push(0x0a);
        put_varint(out, label_len(l) as u64);
        out.push(0x0a);
        put_varint(out, l.name.len() as u64);
        out.extend_from_slice(l.name.as_bytes());
        if !l.value.is_empty() {
            out.push(0x12);
            put_varint(out, l.value.len() as u64);
            out.extend_from_slice(l.value.as_bytes());
        }
    }
    for s in samples {
        out.push(0x12);
        put_varint(out, sample_len(s) as u64);
        let (t, v) = *s;
        if v.to_bits() != 0 {
            out.push(0x09);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        if t != 0 {
            out.push(0x10);
            put_varint(out, t as u64);
        }
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn req() -> WriteRequest {
        WriteRequest {
            timeseries: vec![
                TimeSeries {
                    labels: vec![
                        Label {
                            name: "__name__".into(),
                            value: "up".into(),
                        },
                        Label {
                            name: "job".into(),
                            value: "node".into(),
                        },
                    ],
                    samples: vec![
                        PbSample {
                            value: 1.0,
                            timestamp: 1000,
                        },
                        PbSample {
                            value: 0.0,
                            timestamp: -5,
                        },
                    ],
                    ..Default::default()
                },
                TimeSeries {
                    labels: vec![Label {
                        name: "__name__".into(),
                        value: "x".into(),
                    }],
                    samples: vec![],
                    ..Default::default()
                },
            ],
            metadata: vec![],
        }
    }

    #[test]
    fn metadata_is_decoded_borrowed() {
        let mut w = req();
        w.metadata = vec![
            MetricMetadata {
                r#type: 1,
                metric_family_name: "http_requests_total".into(),
                help: "Requests served.".into(),
                unit: "".into(),
            },
            MetricMetadata {
                r#type: 3,
                metric_family_name: "latency_seconds".into(),
                help: "".into(),
                unit: "seconds".into(),
            },
        ];
        let bytes = w.encode_to_vec();
        let r = WriteRequestRef::decode(&bytes).unwrap();
        assert_eq!(r.len(), 2);
        let m: Vec<MetricMetadata> = r.metadata().iter().map(|m| m.to_owned()).collect();
        assert_eq!(m, w.metadata);
        // Truncated inside a metadata message: an error naming it, never a panic.
        let only_meta = WriteRequest {
            timeseries: vec![],
            metadata: w.metadata.clone(),
        }
        .encode_to_vec();
        let e = WriteRequestRef::decode(&only_meta[..only_meta.len() - 2]).unwrap_err();
        assert!(
            e.to_string().contains("metadata") || e.what.contains("Metadata"),
            "{e}"
        );
    }

    #[test]
    fn zero_copy_decode_matches_prost() {
        let bytes = req().encode_to_vec();
        let r = WriteRequestRef::decode(&bytes).unwrap();
        assert_eq!(r.len(), 2);
        let (l, s) = r.series(0);
        assert_eq!(
            l[1],
            LabelRef {
                name: "job",
                value: "node"
            }
        );
        assert_eq!(s, &[(1000, 1.0), (-5, 0.0)]);
        assert_eq!(r.series(1).1.len(), 0);
        assert_eq!(r.num_samples(), 2);
    }

    #[test]
    fn encode_series_round_trips_through_prost() {
        let bytes = req().encode_to_vec();
        let r = WriteRequestRef::decode(&bytes).unwrap();
        let mut out = Vec::new();
        for (l, s) in r.iter() {
            encode_series(&mut out, l, s);
        }
        assert_eq!(WriteRequest::decode(out.as_slice()).unwrap(), req());
        assert_eq!(out, bytes);
    }

    #[test]
    fn truncated_body_reports_offset() {
        let bytes = req().encode_to_vec();
        for cut in 1..bytes.len() {
            // Every strict prefix that ends inside a message must fail, never panic.
            let _ = WriteRequestRef::decode(&bytes[..cut]);
        }
        let err = WriteRequestRef::decode(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.offset <= bytes.len(), "{err}");
        assert!(WriteRequestRef::decode(&[0x0a, 0x05, 0x01]).is_err());
        assert!(WriteRequestRef::decode(&[0x0f]).is_err());
    }
}
