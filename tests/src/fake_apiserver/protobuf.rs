//! Decoding of the few protobuf request bodies kubectl's imperative commands send
//! (`kubectl create namespace|configmap|secret|serviceaccount`): the `k8s\0` envelope
//! (`runtime.Unknown`), `ObjectMeta` (name, generateName, namespace, labels, annotations,
//! finalizers) and the data of ConfigMaps and Secrets. Anything else is refused.

use serde_json::{Map, Value, json};

/// A protobuf body that cannot be turned into JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtobufError {
    /// The bytes are not a valid protobuf message.
    #[error("malformed protobuf at byte {offset}: {what}")]
    Malformed {
        /// Byte offset within the message being decoded.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// The body does not start with the `k8s\0` magic.
    #[error("protobuf body lacks the k8s envelope")]
    NoEnvelope,
    /// A kind this decoder does not know.
    #[error("protobuf decoding of kind {0:?} is not supported; send JSON")]
    Unsupported(String),
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Iterates over `(field number, value)` of one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(ProtobufError::Malformed {
                offset: self.pos,
                what: "truncated varint",
            })?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ProtobufError::Malformed {
            offset: self.pos,
            what: "varint longer than 10 bytes",
        })
    }

    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.pos + n > self.buf.len() {
                    return Err(ProtobufError::Malformed {
                        offset: self.pos,
                        what: "truncated fixed-width field",
                    });
                }
                self.pos += n;
                Field::Varint(0)
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed {
                        offset: self.pos,
                        what: "length overflows",
                    })?;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or(ProtobufError::Malformed {
                        offset: self.pos,
                        what: "length past the end",
                    })?;
                let bytes = &self.buf[self.pos..end];
                self.pos = end;
                Field::Bytes(bytes)
            }
            _ => {
                return Err(ProtobufError::Malformed {
                    offset: self.pos,
                    what: "unsupported wire type",
                });
            }
        };
        Ok(Some((number, field)))
    }
}

fn string(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

/// Standard base64 with padding, as JSON carries `[]byte`.
pub fn base64(b: &[u8]) -> Value {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    Value::String(out)
}

/// One `map<string, X>` entry: key = 1, value = 2.
fn map_entry(b: &[u8], value: fn(&[u8]) -> Value) -> Result<(String, Value), ProtobufError> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), value(&[]));
    while let Some((n, f)) = r.next_field()? {
        match (n, f) {
            (1, Field::Bytes(b)) => k = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) => v = value(b),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_entry(
    obj: &mut Map<String, Value>,
    field: &str,
    b: &[u8],
    value: fn(&[u8]) -> Value,
) -> Result<(), ProtobufError> {
    let (k, v) = map_entry(b, value)?;
    if let Value::Object(m) = obj.entry(field).or_insert_with(|| json!({})) {
        m.insert(k, v);
    }
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((n, f)) = r.next_field()? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => {
                m.insert("name".into(), string(b));
            }
            2 => {
                m.insert("generateName".into(), string(b));
            }
            3 => {
                m.insert("namespace".into(), string(b));
            }
            11 => insert_entry(&mut m, "labels", b, string)?,
            12 => insert_entry(&mut m, "annotations", b, string)?,
            14 => {
                if let Value::Array(a) = m.entry("finalizers").or_insert_with(|| json!([])) {
                    a.push(string(b));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

/// Decodes a `k8s\0`-enveloped protobuf body into the JSON object it describes.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let payload = body
        .strip_prefix(b"k8s\0")
        .ok_or(ProtobufError::NoEnvelope)?;
    let mut r = Reader::new(payload);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, f)) = r.next_field()? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next_field()? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => {
                            api_version = String::from_utf8_lossy(b).into_owned()
                        }
                        (2, Field::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    if !matches!(
        kind.as_str(),
        "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
    ) || api_version != "v1"
    {
        return Err(ProtobufError::Unsupported(format!("{api_version}/{kind}")));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let mut r = Reader::new(raw);
    while let Some((n, f)) = r.next_field()? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(b)) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            ("ConfigMap", 2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, string)?,
            ("ConfigMap", 3, Field::Bytes(b)) => insert_entry(&mut obj, "binaryData", b, base64)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Field::Bytes(b)) => insert_entry(&mut obj, "data", b, base64)?,
            ("Secret", 3, Field::Bytes(b)) => {
                obj.insert("type".into(), string(b));
            }
            ("Secret", 4, Field::Bytes(b)) => insert_entry(&mut obj, "stringData", b, string)?,
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        field(&mut e, 1, k.as_bytes());
        field(&mut e, 2, v);
        e
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, b"v1");
        field(&mut tm, 2, kind.as_bytes());
        let mut body = b"k8s\0".to_vec();
        field(&mut body, 1, &tm);
        field(&mut body, 2, raw);
        field(&mut body, 4, b"application/vnd.kubernetes.protobuf");
        body
    }

    #[test]
    fn decodes_a_secret_with_metadata_and_binary_data() {
        let mut meta = Vec::new();
        field(&mut meta, 1, b"creds");
        field(&mut meta, 11, &entry("app", b"web"));
        let mut raw = Vec::new();
        field(&mut raw, 1, &meta);
        field(&mut raw, 2, &entry("key", b"hello"));
        field(&mut raw, 3, b"Opaque");
        let v = decode(&envelope("Secret", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "creds", "labels": {"app": "web"}}, "data": {"key": "aGVsbG8="}})
        );
    }

    #[test]
    fn base64_pads_like_the_standard_alphabet() {
        assert_eq!(base64(b""), json!(""));
        assert_eq!(base64(b"f"), json!("Zg=="));
        assert_eq!(base64(b"fo"), json!("Zm8="));
        assert_eq!(base64(b"foo"), json!("Zm9v"));
    }

    #[test]
    fn truncated_or_unknown_bodies_are_errors() {
        let mut raw = Vec::new();
        field(&mut raw, 1, b"\x0a\x03abc");
        let mut body = envelope("Namespace", &raw);
        assert!(decode(&body).is_ok());
        body.truncate(body.len() - 3);
        assert!(matches!(
            decode(&body),
            Err(ProtobufError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&envelope("Deployment", &raw)),
            Err(ProtobufError::Unsupported(_))
        ));
        assert_eq!(decode(b"{}"), Err(ProtobufError::NoEnvelope));
    }
}
