//! ADS responses that share the snapshot's encoded resources, and the gRPC codec that writes them.
//!
//! envoy-types' `DiscoveryResponse` and `DeltaDiscoveryResponse` own their resources (`Any.value`
//! is a `Vec<u8>`), so every stream sending a resource would copy it first. The responses here
//! hold the snapshot's [`Entry`]s instead (reference-counted, encoded once per resource version)
//! and [`AdsCodec`] writes them straight into the gRPC frame: the bytes on the wire are exactly
//! those prost writes for the envoy-types messages (tests compare them), and a stream's queue
//! holds pointers, not copies.

use super::served::{Entry, Name};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A state-of-the-world response (`envoy.service.discovery.v3.DiscoveryResponse`).
#[derive(Clone, Debug, Default)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Entry>>,
    pub type_url: String,
    pub nonce: String,
}

/// A delta response (`envoy.service.discovery.v3.DeltaDiscoveryResponse`).
#[derive(Clone, Debug, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<Entry>>,
    pub type_url: String,
    pub removed_resources: Vec<Name>,
    pub nonce: String,
}

/// A message written by hand, field by field in tag order, as prost writes the envoy-types message.
pub trait WireMessage {
    fn encoded_len(&self) -> usize;
    fn encode_raw(&self, buf: &mut impl BufMut);

    /// The encoding, for tests and benchmarks.
    fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_raw(&mut out);
        out
    }
}

/// Length of a length-delimited field with `len` bytes of content.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A proto3 string or bytes field: absent when empty.
fn scalar_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn put_scalar(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    if !bytes.is_empty() {
        put_delimited(tag, bytes, buf);
    }
}

fn put_delimited(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// `google.protobuf.Any`: type_url = 1, value = 2.
fn any_len(entry: &Entry) -> usize {
    let any = &entry.resource.resource;
    scalar_len(1, any.type_url.as_bytes()) + scalar_len(2, &any.value)
}

fn put_any(tag: u32, entry: &Entry, buf: &mut impl BufMut) {
    let any = &entry.resource.resource;
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(any_len(entry) as u64, buf);
    put_scalar(1, any.type_url.as_bytes(), buf);
    put_scalar(2, &any.value, buf);
}

/// `envoy.service.discovery.v3.Resource`: version = 1, resource = 2, name = 3.
fn resource_len(entry: &Entry) -> usize {
    scalar_len(3, entry.name.as_bytes())
        + scalar_len(1, entry.resource.version.as_bytes())
        + delimited_len(2, any_len(entry))
}

/// Bytes `entry` adds to a [`DeltaResponse`]: how pushes are split into parts.
pub(super) fn delta_resource_len(entry: &Entry) -> usize {
    delimited_len(2, resource_len(entry))
}

impl WireMessage for SotwResponse {
    // version_info = 1, resources = 2 (Any), type_url = 4, nonce = 5.
    fn encoded_len(&self) -> usize {
        scalar_len(1, self.version_info.as_bytes())
            + self.resources.iter().map(|e| delimited_len(2, any_len(e))).sum::<usize>()
            + scalar_len(4, self.type_url.as_bytes())
            + scalar_len(5, self.nonce.as_bytes())
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_scalar(1, self.version_info.as_bytes(), buf);
        for entry in &self.resources {
            put_any(2, entry, buf);
        }
        put_scalar(4, self.type_url.as_bytes(), buf);
        put_scalar(5, self.nonce.as_bytes(), buf);
    }
}

impl WireMessage for DeltaResponse {
    // system_version_info = 1, resources = 2, type_url = 4, nonce = 5, removed_resources = 6.
    fn encoded_len(&self) -> usize {
        scalar_len(1, self.system_version_info.as_bytes())
            + self.resources.iter().map(|e| delta_resource_len(e)).sum::<usize>()
            + scalar_len(4, self.type_url.as_bytes())
            + self.removed_resources.iter().map(|n| delimited_len(6, n.len())).sum::<usize>()
            + scalar_len(5, self.nonce.as_bytes())
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_scalar(1, self.system_version_info.as_bytes(), buf);
        for entry in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(resource_len(entry) as u64, buf);
            put_scalar(1, entry.resource.version.as_bytes(), buf);
            put_any(2, entry, buf);
            put_scalar(3, entry.name.as_bytes(), buf);
        }
        put_scalar(4, self.type_url.as_bytes(), buf);
        put_scalar(5, self.nonce.as_bytes(), buf);
        for name in &self.removed_resources {
            // Repeated strings are written even when empty.
            put_delimited(6, name.as_bytes(), buf);
        }
    }
}

/// Decodes requests with prost and writes [`WireMessage`] responses.
pub struct AdsCodec<Resp, Req>(PhantomData<fn() -> (Resp, Req)>);

impl<Resp, Req> Default for AdsCodec<Resp, Req> {
    fn default() -> Self {
        AdsCodec(PhantomData)
    }
}

/// The two request/response pairs of the ADS service.
pub type SotwCodec = AdsCodec<SotwResponse, DiscoveryRequest>;
pub type DeltaCodec = AdsCodec<DeltaResponse, DeltaDiscoveryRequest>;

impl<Resp, Req> Codec for AdsCodec<Resp, Req>
where
    Resp: WireMessage + Send + 'static,
    Req: Message + Default + Send + 'static,
{
    type Encode = Resp;
    type Decode = Req;
    type Encoder = ResponseEncoder<Resp>;
    type Decoder = RequestDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

pub struct ResponseEncoder<T>(PhantomData<fn() -> T>);

impl<T: WireMessage> Encoder for ResponseEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_raw(dst);
        Ok(())
    }
}

pub struct RequestDecoder<T>(PhantomData<fn() -> T>);

impl<T: Message + Default> Decoder for RequestDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        let message =
            T::decode(buf).map_err(|e| Status::internal(format!("malformed request: {e}")))?;
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::served::Entry;
    use crate::xds::snapshot::{EncodedAny, PackedResource};
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;

    fn entry(name: &str, version: &str, type_url: &str, value: &[u8]) -> Arc<Entry> {
        Arc::new(Entry {
            name: name.into(),
            resource: Arc::new(PackedResource {
                version: version.into(),
                resource: EncodedAny { type_url: type_url.into(), value: value.to_vec().into() },
            }),
            secrets: Arc::new([]),
        })
    }

    fn entries() -> Vec<Arc<Entry>> {
        vec![
            entry("a", "1", "type.googleapis.com/x.Y", b"\x0a\x01a"),
            entry("", "", "", b""),
            entry("long", &"v".repeat(200), "t", &vec![7u8; 300]),
        ]
    }

    fn any(e: &Entry) -> Any {
        e.resource.resource.to_any()
    }

    /// Byte for byte what prost writes for the envoy-types messages.
    #[test]
    fn responses_encode_exactly_like_the_envoy_types_messages() {
        let delta = DeltaResponse {
            system_version_info: "12".into(),
            resources: entries(),
            type_url: "type.googleapis.com/x.Y".into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "3".into(),
        };
        let expected = DeltaDiscoveryResponse {
            system_version_info: "12".into(),
            resources: entries()
                .iter()
                .map(|e| Resource {
                    name: e.name.to_string(),
                    version: e.resource.version.clone(),
                    resource: Some(any(e)),
                    ..Default::default()
                })
                .collect(),
            type_url: "type.googleapis.com/x.Y".into(),
            removed_resources: vec!["gone".into(), "".into()],
            nonce: "3".into(),
            ..Default::default()
        };
        assert_eq!(delta.encode_to_vec(), expected.encode_to_vec());
        assert_eq!(delta.encoded_len(), expected.encoded_len());
        assert_eq!(DeltaResponse::default().encode_to_vec(), Vec::<u8>::new());

        let sotw = SotwResponse {
            version_info: "4".into(),
            resources: entries(),
            type_url: "t".into(),
            nonce: "9".into(),
        };
        let expected = DiscoveryResponse {
            version_info: "4".into(),
            resources: entries().iter().map(|e| any(e)).collect(),
            type_url: "t".into(),
            nonce: "9".into(),
            ..Default::default()
        };
        assert_eq!(sotw.encode_to_vec(), expected.encode_to_vec());
        assert_eq!(sotw.encoded_len(), expected.encoded_len());
    }
}
