//! Just enough of the protobuf wire format to read `envoy.config.core.v3.Metadata`.
//!
//! The Wasm build reads a cluster's metadata in one property read (`xds.cluster_metadata`), which
//! Envoy serializes as protobuf. Pulling in a protobuf runtime for four message types
//! (`Metadata`, `Struct`, `Value`, `ListValue`) would cost more Wasm size than this reader.
#![forbid(unsafe_code)]

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed protobuf: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A decoded `google.protobuf.Value`, borrowing strings from the input.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Number(f64),
    String(&'a str),
    Bool(bool),
    Struct(Vec<(&'a str, Value<'a>)>),
    List(Vec<Value<'a>>),
}

impl<'a> Value<'a> {
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Looks up a field of a decoded `Struct`.
pub fn field<'v, 'a>(fields: &'v [(&'a str, Value<'a>)], name: &str) -> Option<&'v Value<'a>> {
    fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(DecodeError("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError("length"))?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            _ => return Err(DecodeError("unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError("string is not UTF-8"))
}

/// A map entry (`key` = 1, `value` = 2) whose key is a string.
fn map_entry(bytes: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = ("", &[][..]);
    while let Some((number, field)) = r.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = utf8(b)?,
            (2, Field::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

/// How deeply structs and lists may nest. The loader's metadata nests three levels (struct, list
/// of SANs, SAN struct); the limit keeps a hostile or broken blob from exhausting the stack of
/// an Envoy worker (a few bytes per level are enough to nest a thousand levels).
pub const MAX_DEPTH: usize = 32;

/// `google.protobuf.Struct`: `map<string, Value> fields = 1`.
pub fn decode_struct(bytes: &[u8]) -> Result<Vec<(&str, Value<'_>)>, DecodeError> {
    decode_struct_at(bytes, 0)
}

fn decode_struct_at(bytes: &[u8], depth: usize) -> Result<Vec<(&str, Value<'_>)>, DecodeError> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError("structs and lists nest too deeply"));
    }
    let mut r = Reader { buf: bytes };
    let mut fields = Vec::new();
    while let Some((number, field)) = r.next()? {
        if let (1, Field::Bytes(entry)) = (number, field) {
            let (key, value) = map_entry(entry)?;
            fields.push((key, decode_value_at(value, depth + 1)?));
        }
    }
    Ok(fields)
}

/// `google.protobuf.Value`: a oneof of null (1), number (2), string (3), bool (4), struct (5) and
/// list (6). An empty message is a null.
pub fn decode_value(bytes: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_value_at(bytes, 0)
}

fn decode_value_at(bytes: &[u8], depth: usize) -> Result<Value<'_>, DecodeError> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError("structs and lists nest too deeply"));
    }
    let mut r = Reader { buf: bytes };
    let mut value = Value::Null;
    while let Some((number, field)) = r.next()? {
        value = match (number, field) {
            (1, Field::Varint(_)) => Value::Null,
            (2, Field::Fixed64(bits)) => Value::Number(f64::from_bits(bits)),
            (3, Field::Bytes(b)) => Value::String(utf8(b)?),
            (4, Field::Varint(v)) => Value::Bool(v != 0),
            (5, Field::Bytes(b)) => Value::Struct(decode_struct_at(b, depth + 1)?),
            (6, Field::Bytes(b)) => {
                let mut list = Reader { buf: b };
                let mut values = Vec::new();
                while let Some((number, field)) = list.next()? {
                    if let (1, Field::Bytes(item)) = (number, field) {
                        values.push(decode_value_at(item, depth + 1)?);
                    }
                }
                Value::List(values)
            }
            _ => return Err(DecodeError("unexpected Value field")),
        };
    }
    Ok(value)
}

/// The serialized `Struct` under `filter_metadata[namespace]` of an `envoy.config.core.v3.Metadata`
/// (`map<string, Struct> filter_metadata = 1`), if present.
pub fn filter_metadata<'a>(
    metadata: &'a [u8],
    namespace: &str,
) -> Result<Option<&'a [u8]>, DecodeError> {
    let mut r = Reader { buf: metadata };
    while let Some((number, field)) = r.next()? {
        if let (1, Field::Bytes(entry)) = (number, field) {
            let (key, value) = map_entry(entry)?;
            if key == namespace {
                return Ok(Some(value));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod encode {
    //! A protobuf writer for building test inputs.

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    pub fn bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    pub enum V<'a> {
        S(&'a str),
        Struct(Vec<(&'a str, V<'a>)>),
        List(Vec<V<'a>>),
        Bool(bool),
    }

    pub fn value(v: &V<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            V::S(s) => bytes_field(&mut out, 3, s.as_bytes()),
            V::Bool(b) => {
                varint(&mut out, 4 << 3);
                varint(&mut out, u64::from(*b));
            }
            V::Struct(fields) => bytes_field(&mut out, 5, &structure(fields)),
            V::List(items) => {
                let mut list = Vec::new();
                for item in items {
                    bytes_field(&mut list, 1, &value(item));
                }
                bytes_field(&mut out, 6, &list);
            }
        }
        out
    }

    pub fn structure(fields: &[(&str, V<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in fields {
            let mut entry = Vec::new();
            bytes_field(&mut entry, 1, k.as_bytes());
            bytes_field(&mut entry, 2, &value(v));
            bytes_field(&mut out, 1, &entry);
        }
        out
    }

    /// `Metadata{filter_metadata: {namespace: Struct}}`.
    pub fn metadata(namespaces: &[(&str, Vec<(&str, V<'_>)>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ns, fields) in namespaces {
            let mut entry = Vec::new();
            bytes_field(&mut entry, 1, ns.as_bytes());
            bytes_field(&mut entry, 2, &structure(fields));
            bytes_field(&mut out, 1, &entry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{metadata, V};
    use super::*;

    #[test]
    fn reads_nested_struct_and_list_values() {
        let md = metadata(&[
            ("other", vec![("x", V::S("y"))]),
            (
                "backendtls",
                vec![
                    ("policy", V::S("default/p")),
                    ("flag", V::Bool(true)),
                    ("sans", V::List(vec![V::Struct(vec![("type", V::S("URI"))])])),
                ],
            ),
        ]);
        let ns = filter_metadata(&md, "backendtls").unwrap().unwrap();
        let fields = decode_struct(ns).unwrap();
        assert_eq!(field(&fields, "policy").and_then(Value::as_str), Some("default/p"));
        assert_eq!(field(&fields, "flag"), Some(&Value::Bool(true)));
        match field(&fields, "sans") {
            Some(Value::List(items)) => {
                assert_eq!(items, &vec![Value::Struct(vec![("type", Value::String("URI"))])])
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(filter_metadata(&md, "missing").unwrap(), None);
    }

    #[test]
    fn rejects_truncated_input() {
        let md = metadata(&[("backendtls", vec![("policy", V::S("default/p"))])]);
        assert!(filter_metadata(&md[..md.len() - 3], "backendtls").is_err());
        assert!(decode_value(&[0x1a, 0x05, b'a']).is_err());
        assert!(decode_value(&[0xff; 11]).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        // A list in a list in ...: a few bytes per level.
        let nested = |levels: usize| {
            let mut value = encode::value(&V::S("x"));
            for _ in 0..levels {
                let mut list = Vec::new();
                encode::bytes_field(&mut list, 1, &value);
                value = Vec::new();
                encode::bytes_field(&mut value, 6, &list);
            }
            value
        };
        assert!(decode_value(&nested(MAX_DEPTH - 1)).is_ok());
        let too_deep = Err(DecodeError("structs and lists nest too deeply"));
        assert_eq!(decode_value(&nested(MAX_DEPTH)), too_deep);
        assert_eq!(decode_value(&nested(5_000)), too_deep);
    }

    #[test]
    fn number_values_decode() {
        let mut out = vec![2 << 3 | 1];
        out.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        assert_eq!(decode_value(&out).unwrap(), Value::Number(1.5));
    }
}
