//! Envoy resources as Envoy's own JSON (snake_case field names, `@type` on Any), through the
//! protobuf descriptors of envoy-types. Used by `render`, `bootstrap` and golden files.

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::sync::LazyLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTORS).expect("envoy-types ships a valid descriptor set")
});

/// The JSON form of any Envoy message this crate builds.
pub fn to_json<T: Message + Name>(message: &T) -> serde_json::Value {
    let descriptor = POOL
        .get_message_by_name(&T::full_name())
        .unwrap_or_else(|| panic!("{} is in envoy-types' descriptors", T::full_name()));
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("Envoy messages serialize to JSON")
}

/// YAML for people; the same content as [`to_json`].
pub fn to_yaml(value: &serde_json::Value) -> String {
    serde_norway::to_string(value).expect("JSON values serialize to YAML")
}

/// A packed message: envoy-types' `Any`, or a snapshot's [`super::snapshot::EncodedAny`].
pub trait Packed {
    fn type_url(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl Packed for envoy_types::pb::google::protobuf::Any {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

impl Packed for super::snapshot::EncodedAny {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// The JSON form of a packed resource, whatever its type (for comparing snapshots).
pub fn any_to_json(any: &impl Packed) -> serde_json::Value {
    let name = any.type_url().rsplit('/').next().unwrap_or_default();
    let descriptor = POOL
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is in envoy-types' descriptors"));
    let dynamic = DynamicMessage::decode(descriptor, any.value())
        .expect("a packed resource decodes with its descriptor");
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("Envoy messages serialize to JSON")
}
