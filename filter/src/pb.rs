//! The cluster's `envoy.config.core.v3.Metadata` as the Wasm build reads it: one property read
//! (`xds.cluster_metadata`), which Envoy serializes as protobuf, decoded with prost and
//! prost-types (`google.protobuf.Struct`). The dynamic module reads metadata values by key through
//! its ABI and needs no protobuf at all.
//!
//! This was a hand-written decoder for the four message types; prost costs the Wasm module about
//! 18 KB (5 %, filter/README.md "Hand-written code or libraries"), too little to keep our own.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use prost::Message as _;
pub use prost_types::value::Kind;
pub use prost_types::{Struct, Value};

/// Why the metadata could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Truncated, a wrong wire type, a string not UTF-8, or nested deeper than prost's recursion
    /// limit (100: a hostile blob cannot exhaust an Envoy worker's stack).
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// `envoy.config.core.v3.Metadata`; field 2, `typed_filter_metadata`, is skipped as unknown.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(map = "string, message", tag = "1")]
    pub filter_metadata: HashMap<String, Struct>,
}

/// The `Struct` under `filter_metadata[namespace]` of a serialized `Metadata`, if present.
pub fn filter_metadata(metadata: &[u8], namespace: &str) -> Result<Option<Struct>, DecodeError> {
    Ok(Metadata::decode(metadata)?.filter_metadata.remove(namespace))
}

/// A bare serialized `google.protobuf.Value`.
pub fn decode_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    Ok(Value::decode(bytes)?)
}

/// A string field of a `Struct`.
pub fn string<'s>(fields: &'s Struct, key: &str) -> Option<&'s str> {
    match fields.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod encode {
    //! Test inputs: `Metadata` from a compact description.
    use super::{Kind, Metadata, Struct, Value};
    use prost::Message as _;

    pub enum V<'a> {
        S(&'a str),
        Struct(Vec<(&'a str, V<'a>)>),
        List(Vec<V<'a>>),
        Bool(bool),
    }

    pub fn value(v: &V<'_>) -> Value {
        let kind = match v {
            V::S(s) => Kind::StringValue((*s).to_owned()),
            V::Bool(b) => Kind::BoolValue(*b),
            V::Struct(fields) => Kind::StructValue(structure(fields)),
            V::List(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value).collect(),
            }),
        };
        Value { kind: Some(kind) }
    }

    pub fn structure(fields: &[(&str, V<'_>)]) -> Struct {
        Struct { fields: fields.iter().map(|(k, v)| ((*k).to_owned(), value(v))).collect() }
    }

    /// `Metadata{filter_metadata: {namespace: Struct}}`, serialized.
    pub fn metadata(namespaces: &[(&str, Vec<(&str, V<'_>)>)]) -> Vec<u8> {
        let filter_metadata =
            namespaces.iter().map(|(ns, fields)| ((*ns).to_owned(), structure(fields))).collect();
        Metadata { filter_metadata }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::encode::{metadata, value, V};
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
        let fields = filter_metadata(&md, "backendtls").unwrap().unwrap();
        assert_eq!(string(&fields, "policy"), Some("default/p"));
        assert_eq!(string(&fields, "flag"), None);
        let sans = value(&V::List(vec![V::Struct(vec![("type", V::S("URI"))])]));
        assert_eq!(fields.fields.get("sans"), Some(&sans));
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
        // A list in a list in ...: a few bytes per level, written by hand (a deep `Value` would
        // overflow the test's own stack when dropped).
        let field = |number: u32, bytes: &[u8]| {
            let mut out = Vec::new();
            prost::encoding::encode_key(
                number,
                prost::encoding::WireType::LengthDelimited,
                &mut out,
            );
            prost::encoding::encode_varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
            out
        };
        let nested = |levels: usize| {
            let mut v = prost::Message::encode_to_vec(&value(&V::S("x")));
            for _ in 0..levels {
                v = field(6, &field(1, &v));
            }
            v
        };
        assert!(decode_value(&nested(40)).is_ok());
        assert!(decode_value(&nested(5_000)).is_err());
    }

    #[test]
    fn number_values_decode() {
        let mut out = vec![2 << 3 | 1];
        out.extend_from_slice(&1.5f64.to_bits().to_le_bytes());
        assert_eq!(decode_value(&out).unwrap().kind, Some(Kind::NumberValue(1.5)));
    }
}
