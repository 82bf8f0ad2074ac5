//! File mode: every YAML document under a directory tree, parsed into a [`Store`].
//!
//! A file that fails to read or parse is reported with its path, the document and the object, and
//! the loader keeps that file's last good content: a typo while editing never withdraws config that
//! is already serving.

use crate::kube_names::{shorten, NameError, NameRule};
use crate::objects::*;
use crate::store::Store;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// One problem with the input, located as precisely as the loader can.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when the problem is in one document.
    pub document: Option<usize>,
    /// `Kind namespace/name` when the object could be identified.
    pub object: Option<String>,
    pub reason: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Input limits: every file and document is read in bounded time and memory, whatever it holds.
pub mod limits {
    /// Files larger than this are refused unread (split large inputs into several files).
    pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    /// One YAML document (one object, or one `kind: List`). The API server stores at most about
    /// 1.5 MB per object; parsing holds a document's events in memory, so this bounds it.
    pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
    /// Directory nesting under the config directory. (Nesting inside a document is bounded by
    /// the YAML and JSON parsers themselves: 128 levels.)
    pub const MAX_DIRECTORY_DEPTH: usize = 32;
}

/// What one file held.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    /// Every problem found, document by document.
    pub errors: Vec<SourceError>,
    /// False when some document could not be used at all (broken YAML, an object that does not
    /// parse): the file's content as a whole is then not used. A BackendTLSPolicy that does not
    /// parse but names its targets does not make the file unusable: it is kept, failing those
    /// targets closed, and reported.
    pub usable: bool,
}

/// Parses one file's text into objects. Kinds the loader does not use (Deployments, GatewayClasses,
/// ...) are skipped; known kinds at an unsupported version are errors, since silently ignoring
/// a policy would be worse than refusing it. `.json` files are read as JSON, others as YAML.
pub fn parse_file(file: &Path, text: &str) -> ParsedFile {
    parse_file_by(file, text, true)
}

/// [`parse_file`], with `read_direct` false reading every document by the value path only (see
/// [`direct`]).
fn parse_file_by(file: &Path, text: &str, read_direct: bool) -> ParsedFile {
    let mut parsed = ParsedFile { usable: true, ..Default::default() };
    let is_json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let documents = if is_json { vec![(1, text)] } else { split_documents(text) };
    // A clean file is read in one go: one YAML parser for all its documents, rather than one
    // per document (each with its buffers). Documents are numbered only for errors.
    if !is_json
        && read_direct
        && documents.iter().all(|(_, document)| document.len() <= limits::MAX_DOCUMENT_BYTES)
    {
        if let Some(mut objects) = direct::read(text) {
            objects.shrink_to_fit();
            parsed.objects = objects;
            return parsed;
        }
    }
    for (index, (first_line, document)) in documents.into_iter().enumerate() {
        let number = index + 1;
        let error = |object: Option<String>, reason: String| SourceError {
            file: file.to_path_buf(),
            document: Some(number),
            object,
            reason,
        };
        if document.len() > limits::MAX_DOCUMENT_BYTES {
            let reason = format!(
                "the document is {} bytes; at most {} are read per document (limit MAX_DOCUMENT_BYTES)",
                document.len(),
                limits::MAX_DOCUMENT_BYTES
            );
            parsed.errors.push(error(None, reason));
            parsed.usable = false;
            continue;
        }
        if !is_json && read_direct {
            if let Some(objects) = direct::read(document) {
                parsed.objects.extend(objects);
                continue;
            }
        }
        let values =
            if is_json { vec![read_json(document)] } else { read_yaml(document, first_line) };
        for value in values {
            let (value, strict_error) = match value {
                Ok(read) => read,
                Err(reason) => {
                    parsed.errors.push(error(None, reason));
                    parsed.usable = false;
                    continue;
                }
            };
            let context = format!("{} document {number}", file.display());
            let mut failures = Vec::new();
            parse_document(value, strict_error, &context, &mut parsed.objects, &mut failures);
            for failure in failures {
                let reason = if failure.salvaged {
                    format!(
                        "{} (the policy's targets fail closed until it is fixed)",
                        failure.reason
                    )
                } else {
                    parsed.usable = false;
                    failure.reason
                };
                parsed.errors.push(error(failure.object, reason));
            }
        }
    }
    // Kept for as long as the file is unchanged: no room for more objects.
    parsed.objects.shrink_to_fit();
    parsed
}

/// A document read as a value: Ok with the strict reading's error, if any (a repeated key),
/// when the text can be read at all; the error when it cannot.
type ReadValue = Result<(serde_json::Value, Option<String>), String>;

fn read_json(text: &str) -> ReadValue {
    match serde_json::from_str::<StrictValue>(text) {
        Ok(StrictValue(value)) => Ok((value, None)),
        Err(strict) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => Ok((value, Some(format!("invalid JSON: {strict}")))),
            Err(_) => Err(format!("invalid JSON: {strict}")),
        },
    }
}

/// The documents of one piece of YAML text (one, or none when it holds only comments).
fn read_yaml(text: &str, first_line: usize) -> Vec<ReadValue> {
    let at = if first_line > 1 {
        format!(" (the document starts at line {first_line})")
    } else {
        String::new()
    };
    let mut values = Vec::new();
    for (index, piece) in serde_norway::Deserializer::from_str(text).enumerate() {
        match <StrictValue as serde::Deserialize>::deserialize(piece) {
            Ok(StrictValue(value)) => values.push(Ok((value, None))),
            Err(strict) => {
                // Read again without the strict rules, only to know what the document is (a
                // BackendTLSPolicy with a repeated key still names its targets).
                let lenient = serde_norway::Deserializer::from_str(text)
                    .nth(index)
                    .and_then(|piece| serde::Deserialize::deserialize(piece).ok());
                let reason = format!("invalid YAML{at}: {strict}");
                match lenient {
                    Some(value) => values.push(Ok((value, Some(reason)))),
                    // After a syntax error the parser cannot go on (it would yield the error
                    // forever).
                    None => {
                        values.push(Err(reason));
                        break;
                    }
                }
            }
        }
    }
    values
}

/// Splits a multi-document YAML text at `---` lines, so that an error names its document. A
/// document marker always starts at column 0 (block scalars are indented), so this is exact for
/// the files the loader reads. Returns each document with its first line number (1-based).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let is_marker = line.starts_with("---")
            && line[3..].chars().next().is_none_or(|c| c.is_whitespace() || c == '#');
        if is_marker && offset > 0 {
            documents.push((start_line, &text[start..offset]));
            (start, start_line) = (offset, number + 1);
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

/// A YAML or JSON value read strictly: a key repeated in one mapping is an error, as the API
/// server makes it, instead of the last one silently winning.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.contains_key(&key) {
                let key: String = key.chars().take(80).collect();
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?} in one mapping"
                )));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// Reading YAML documents straight into their typed objects, without the `serde_json::Value` of
/// each whole document that [`read_yaml`] builds and [`parse_document`] then reads the object
/// from (at 100,000 backends those trees were a fifth of the time spent parsing, and all of its
/// transient memory). Only for documents that read cleanly: whatever this path cannot vouch for
/// (any error, a `List`, a Secret, a kind the loader refuses) makes [`read`] answer None, and the
/// document is read again by the value path, which alone reports problems. Both paths accept
/// the same documents and give the same objects (`direct_and_value_paths_agree` checks it on
/// every test input, example and fuzz seed):
///
/// - the strict rules of [`StrictVisitor`] hold everywhere, in fields that are read and in those
///   that are ignored: no key twice in one mapping, keys read as strings, no non-finite number,
///   no YAML tag that names a type;
/// - each value reaches the typed visitor as a `serde_json::Value` would present it (every
///   `deserialize_*` call becomes `deserialize_any`, and null is `None` for options), so that
///   `port: "443"` or `name: 5` fail here as they fail there;
/// - entries read before `apiVersion` and `kind` are known are kept as values and given to the
///   typed object first;
/// - names and namespaces are checked by the same rules, after the object is read.
mod direct {
    use super::{name_rule, read_kind, NameRule, StrictValue, StrictVisitor};
    use crate::objects::Object;
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    use serde::de::{
        self, DeserializeSeed, Deserializer, Error as _, IntoDeserializer, MapAccess, SeqAccess,
        Visitor,
    };
    use serde::Deserialize;
    use std::collections::HashSet;
    use std::fmt;
    use std::sync::Arc;

    /// The objects of one piece of YAML text (in the order of its documents), or None when some
    /// document of it must be read by the value path.
    pub(super) fn read(text: &str) -> Option<Vec<Object>> {
        let mut objects = Vec::new();
        for document in serde_norway::Deserializer::from_str(text) {
            match document.deserialize_any(Document) {
                Ok(Some(object)) => objects.push(object),
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        Some(objects)
    }

    /// What makes the direct path give up (the message is never shown: the value path reads
    /// the document again and says what is wrong).
    fn give_up<E: de::Error>() -> E {
        E::custom("read by the value path")
    }

    /// One document: None when it is empty or of a kind the loader does not use.
    struct Document;

    impl<'de> Visitor<'de> for Document {
        type Value = Option<Object>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a Kubernetes object")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let mut map = StrictMap::new(map);
            // Entries read before both `apiVersion` and `kind` are known, as values.
            let mut before = Vec::new();
            let (mut api_version, mut kind) = (None, None);
            while api_version.is_none() || kind.is_none() {
                let Some(key) = map.next_key::<String>()? else { return Err(give_up()) };
                let StrictValue(value) = map.map.next_value::<StrictValue>()?;
                match (key.as_str(), &value) {
                    ("apiVersion", serde_json::Value::String(v)) => api_version = Some(v.clone()),
                    ("kind", serde_json::Value::String(v)) => kind = Some(v.clone()),
                    ("apiVersion" | "kind", _) => return Err(give_up()),
                    _ => {}
                }
                before.push((key, value));
            }
            let (api_version, kind) = (api_version.unwrap(), kind.unwrap());
            if kind.ends_with("List") || kind == "Secret" {
                return Err(give_up());
            }
            if !read_kind(&api_version, &kind).map_err(|_| give_up::<A::Error>())? {
                // Skipped, but read to the end: the value path refuses a skipped kind's
                // document that breaks the strict rules.
                while map.next_key::<String>()?.is_some() {
                    map.map.next_value_seed(Ignore)?;
                }
                return Ok(None);
            }
            let rest = Rest { before: before.into_iter(), value: None, map };
            fn typed<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
                rest: Rest<A>,
            ) -> Result<Arc<T>, A::Error> {
                T::deserialize(rest).map(Arc::new)
            }
            let object = match kind.as_str() {
                "Gateway" => Object::Gateway(typed(rest)?),
                "HTTPRoute" => Object::HttpRoute(typed(rest)?),
                "GRPCRoute" => Object::GrpcRoute(typed(rest)?),
                "TLSRoute" => Object::TlsRoute(typed(rest)?),
                "ReferenceGrant" => Object::ReferenceGrant(typed(rest)?),
                "GatewayClass" => Object::GatewayClass(typed(rest)?),
                "BackendTLSPolicy" => Object::BackendTlsPolicy(typed(rest)?),
                "Service" => Object::Service(typed(rest)?),
                "ConfigMap" => Object::ConfigMap(typed(rest)?),
                "Namespace" => Object::Namespace(typed(rest)?),
                "EndpointSlice" => Object::EndpointSlice(typed(rest)?),
                _ => return Err(give_up()),
            };
            let metadata = object.metadata();
            let name_ok =
                !metadata.name.is_empty() && name_rule(&kind).check(&metadata.name).is_ok();
            let namespace_ok = metadata
                .namespace
                .as_deref()
                .is_none_or(|namespace| NameRule::Dns1123Label.check(namespace).is_ok());
            if !(name_ok && namespace_ok) {
                return Err(give_up());
            }
            Ok(Some(object))
        }
    }

    /// The keys of one mapping seen so far: a key given twice is an error.
    #[derive(Default)]
    struct Keys {
        few: Vec<String>,
        /// Past [`Keys::FEW`] keys.
        many: Option<HashSet<String>>,
    }

    impl Keys {
        const FEW: usize = 16;

        /// False when `key` was seen before.
        fn insert(&mut self, key: String) -> bool {
            if let Some(many) = &mut self.many {
                return many.insert(key);
            }
            if self.few.contains(&key) {
                return false;
            }
            self.few.push(key);
            if self.few.len() > Self::FEW {
                self.many = Some(self.few.drain(..).collect());
            }
            true
        }
    }

    /// A mapping read under the strict rules: its keys are strings, none twice, and its values
    /// are read through [`Strict`].
    struct StrictMap<A> {
        map: A,
        keys: Keys,
    }

    impl<A> StrictMap<A> {
        fn new(map: A) -> Self {
            StrictMap { map, keys: Keys::default() }
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            // As the value path reads keys (`next_key::<String>`).
            let Some(key) = self.map.next_key::<String>()? else { return Ok(None) };
            let value = seed.deserialize(key.as_str().into_deserializer())?;
            if !self.keys.insert(key) {
                return Err(give_up());
            }
            Ok(Some(value))
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.map.next_value_seed(StrictSeed(seed))
        }
        fn size_hint(&self) -> Option<usize> {
            self.map.size_hint()
        }
    }

    /// The rest of a document's top mapping once its kind is known: the entries read before,
    /// as values, then the others.
    struct Rest<A> {
        before: std::vec::IntoIter<(String, serde_json::Value)>,
        value: Option<serde_json::Value>,
        map: StrictMap<A>,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            match self.before.next() {
                Some((key, value)) => {
                    self.value = Some(value);
                    seed.deserialize(key.as_str().into_deserializer()).map(Some)
                }
                None => self.map.next_key_seed(seed),
            }
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            match self.value.take() {
                Some(value) => seed.deserialize(value).map_err(A::Error::custom),
                None => self.map.next_value_seed(seed),
            }
        }
    }

    impl<'de, A: MapAccess<'de>> Deserializer<'de> for Rest<A> {
        type Error = A::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
            visitor.visit_map(self)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    struct StrictSeed<S>(S);

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<S> {
        type Value = S::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
            self.0.deserialize(Strict(d))
        }
    }

    /// A value read as the value path reads it: what the YAML holds decides what the typed
    /// visitor is shown (as a `serde_json::Value` would show it), not what the visitor asks for.
    struct Strict<D>(D);

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
        type Error = D::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_any(Shown(visitor))
        }
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.deserialize_any(Optional(visitor))
        }
        fn deserialize_ignored_any<V: Visitor<'de>>(
            self,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            self.0.deserialize_any(Ignore)?;
            visitor.visit_unit()
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            visitor.visit_newtype_struct(self)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct seq tuple tuple_struct map struct enum identifier
        }
    }

    /// Shows a visitor what [`StrictVisitor`] accepts, as a `serde_json::Value` holding it would
    /// (null as unit); the rest is an error.
    struct Shown<V>(V);

    impl<'de, V: Visitor<'de>> Visitor<'de> for Shown<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
            self.0.visit_bool(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
            self.0.visit_i64(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
            self.0.visit_u64(v)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
            if !v.is_finite() {
                return Err(give_up());
            }
            self.0.visit_f64(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
            self.0.visit_str(v)
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
            self.0.visit_borrowed_str(v)
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
            self.0.visit_string(v)
        }
        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_unit()
        }
        fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_unit()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            self.0.visit_seq(StrictSeq(seq))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.0.visit_map(StrictMap::new(map))
        }
    }

    /// An `Option`'s value: null is `None`, anything else `Some` of it (shown as by [`Shown`]).
    struct Optional<V>(V);

    impl<'de, V: Visitor<'de>> Visitor<'de> for Optional<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
            if !v.is_finite() {
                return Err(give_up());
            }
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
            self.0.visit_some(de::value::BorrowedStrDeserializer::new(v))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
            self.0.visit_some(v.into_deserializer())
        }
        fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_none()
        }
        fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
            self.0.visit_none()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            self.0.visit_some(SeqAccessDeserializer::new(StrictSeq(seq)))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.0.visit_some(MapAccessDeserializer::new(StrictMap::new(map)))
        }
    }

    struct StrictSeq<A>(A);

    impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<A> {
        type Error = A::Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            self.0.next_element_seed(StrictSeed(seed))
        }
        fn size_hint(&self) -> Option<usize> {
            self.0.size_hint()
        }
    }

    /// A value nothing reads, checked by the strict rules (what [`StrictVisitor`] accepts,
    /// without building it).
    #[derive(Clone, Copy)]
    struct Ignore;

    impl<'de> DeserializeSeed<'de> for Ignore {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Ignore {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            StrictVisitor.expecting(f)
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(give_up())
            }
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys = Keys::default();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    return Err(give_up());
                }
                map.next_value_seed(self)?;
            }
            Ok(())
        }
    }
}

/// Why one object could not be used.
struct DocumentFailure {
    /// `Kind namespace/name` when known.
    object: Option<String>,
    reason: String,
    /// True when a fail-closed BackendTLSPolicy stands in for the document.
    salvaged: bool,
}

/// Parses one document (or each item of a `kind: List`) into `out`, recording failures.
fn parse_document(
    document: serde_json::Value,
    strict_error: Option<String>,
    context: &str,
    out: &mut Vec<Object>,
    failures: &mut Vec<DocumentFailure>,
) {
    if document.is_null() {
        return;
    }
    let text = |field: &str| document.get(field).and_then(|v| v.as_str()).unwrap_or("");
    let api_version = text("apiVersion").to_string();
    let kind = text("kind").to_string();
    let metadata = document.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(|v| v.as_str());
    let namespace =
        metadata.and_then(|m| m.get("namespace")).and_then(|v| v.as_str()).unwrap_or("default");
    let object = name.map(|n| format!("{kind} {namespace}/{}", shorten(n)));
    // `kind: List` (what kubectl prints) and typed lists such as `BackendTLSPolicyList` (what
    // the API returns): their items are objects like any others, never skipped as a kind.
    if kind.ends_with("List") && !api_version.is_empty() {
        let items = match document.get("items") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items.clone(),
            Some(_) => {
                let reason = "a List's items must be a sequence".into();
                failures.push(DocumentFailure { object, reason, salvaged: false });
                return;
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let context = format!("{context} item {}", index + 1);
            parse_document(item, strict_error.clone(), &context, out, failures);
        }
        return;
    }
    let parsed = match strict_error {
        Some(reason) => Err(reason),
        None => parse_object(&document, &api_version, &kind, name).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(Some(parsed)) => out.push(parsed),
        Ok(None) => {}
        Err(reason) if kind == "BackendTLSPolicy" => {
            match salvage_policy(&document, context, &reason) {
                Some(policy) => {
                    let object = Some(format!(
                        "BackendTLSPolicy {}",
                        Object::BackendTlsPolicy(policy.clone()).key()
                    ));
                    out.push(Object::BackendTlsPolicy(policy));
                    failures.push(DocumentFailure { object, reason, salvaged: true });
                }
                None => {
                    let reason = format!("{reason}; no targetRefs could be read from it, so nothing it governs can be known");
                    failures.push(DocumentFailure { object, reason, salvaged: false });
                }
            }
        }
        Err(reason) => failures.push(DocumentFailure { object, reason, salvaged: false }),
    }
}

/// Why a document of a kind the loader reads cannot be used.
#[derive(Debug, thiserror::Error)]
enum ObjectError {
    #[error("missing apiVersion or kind")]
    NoKind,
    /// `supported`: the kind's apiVersions the loader reads.
    #[error("{kind} at apiVersion {api_version} is not supported (supported: {})", supported.join(", "))]
    Version { kind: String, api_version: String, supported: Vec<String> },
    #[error("{0} has no metadata.name")]
    NoName(String),
    #[error("metadata.name: {0}")]
    Name(NameError),
    #[error("metadata.namespace must be a string")]
    NamespaceNotAString,
    #[error("metadata.namespace: {0}")]
    Namespace(NameError),
    /// The kind's schema (serde's message).
    #[error("{0}")]
    Schema(serde_json::Error),
}

/// One object of a kind the loader reads, or None for kinds it does not use.
fn parse_object(
    document: &serde_json::Value,
    api_version: &str,
    kind: &str,
    name: Option<&str>,
) -> Result<Option<Object>, ObjectError> {
    if !read_kind(api_version, kind)? {
        return Ok(None);
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(ObjectError::NoName(kind.to_string()));
    };
    name_rule(kind).check(name).map_err(ObjectError::Name)?;
    if let Some(namespace) = document.get("metadata").and_then(|m| m.get("namespace")) {
        let namespace = namespace.as_str().ok_or(ObjectError::NamespaceNotAString)?;
        NameRule::Dns1123Label.check(namespace).map_err(ObjectError::Namespace)?;
    }
    fn typed<T: serde::de::DeserializeOwned>(
        document: &serde_json::Value,
    ) -> Result<Arc<T>, ObjectError> {
        T::deserialize(document).map(Arc::new).map_err(ObjectError::Schema)
    }
    Ok(Some(match kind {
        "Gateway" => Object::Gateway(typed(document)?),
        "HTTPRoute" => Object::HttpRoute(typed(document)?),
        "GRPCRoute" => Object::GrpcRoute(typed(document)?),
        "TLSRoute" => Object::TlsRoute(typed(document)?),
        "ReferenceGrant" => Object::ReferenceGrant(typed(document)?),
        "GatewayClass" => Object::GatewayClass(typed(document)?),
        "BackendTLSPolicy" => Object::BackendTlsPolicy(typed(document)?),
        "Service" => Object::Service(typed(document)?),
        "ConfigMap" => Object::ConfigMap(typed(document)?),
        "Secret" => Object::Secret(typed(document)?),
        "Namespace" => Object::Namespace(typed(document)?),
        "EndpointSlice" => Object::EndpointSlice(typed(document)?),
        _ => unreachable!("every supported kind is listed above"),
    }))
}

/// The rule a kind's `metadata.name` follows.
fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Namespace" => NameRule::Dns1123Label,
        "Service" => NameRule::Dns1035Label,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// Whether the loader reads objects of this kind and apiVersion (false: a kind it does not use,
/// skipped), or why it cannot.
fn read_kind(api_version: &str, kind: &str) -> Result<bool, ObjectError> {
    if kind.is_empty() || api_version.is_empty() {
        return Err(ObjectError::NoKind);
    }
    let unsupported = |supported: Vec<String>| ObjectError::Version {
        kind: kind.to_string(),
        api_version: api_version.to_string(),
        supported,
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let supported: &[&str] = match (group, kind) {
        (GATEWAY_GROUP, "Gateway" | "GatewayClass" | "HTTPRoute") => &["v1", "v1beta1"],
        (GATEWAY_GROUP, "GRPCRoute") => &["v1"],
        // v1 in the standard and experimental channels; v1alpha3 and v1alpha2 (deprecated) in
        // the experimental one. The three share every field.
        (GATEWAY_GROUP, "TLSRoute") => &["v1", "v1alpha3", "v1alpha2"],
        (GATEWAY_GROUP, "ReferenceGrant") => &["v1", "v1beta1", "v1alpha2"],
        (GATEWAY_GROUP, "BackendTLSPolicy") => &["v1", "v1alpha3"],
        ("", "Service" | "ConfigMap" | "Secret" | "Namespace") => &["v1"],
        ("discovery.k8s.io", "EndpointSlice") => &["v1"],
        (_, "BackendTLSPolicy") => {
            let supported = ["v1", "v1alpha3"].map(|v| format!("{GATEWAY_GROUP}/{v}"));
            return Err(unsupported(supported.into()));
        }
        _ => {
            tracing::debug!(%api_version, %kind, "skipping a kind the loader does not use");
            return Ok(false);
        }
    };
    if !supported.contains(&version) {
        return Err(unsupported(
            supported
                .iter()
                .map(|v| if group.is_empty() { v.to_string() } else { format!("{group}/{v}") })
                .collect(),
        ));
    }
    Ok(true)
}

/// A stand-in for a document that looks like a BackendTLSPolicy but cannot be read as one: what
/// can be read of its name and targets (`spec.targetRefs`, or v1alpha2's single `targetRef`),
/// marked malformed so that resolving fails every target closed. None when no target names
/// can be read.
fn salvage_policy(
    document: &serde_json::Value,
    context: &str,
    reason: &str,
) -> Option<Arc<BackendTlsPolicy>> {
    use crate::objects::{BackendTlsPolicySpec, ObjectMeta, PolicyTargetRef};
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let spec = document.get("spec");
    let refs: Vec<&serde_json::Value> =
        match (spec.and_then(|s| s.get("targetRefs")), spec.and_then(|s| s.get("targetRef"))) {
            (Some(serde_json::Value::Array(refs)), _) => refs.iter().collect(),
            (_, Some(single @ serde_json::Value::Object(_))) => vec![single],
            _ => Vec::new(),
        };
    let target_refs: Vec<PolicyTargetRef> = refs
        .into_iter()
        .filter_map(|r| {
            Some(PolicyTargetRef {
                group: text(r.get("group")).unwrap_or_default(),
                kind: text(r.get("kind")).unwrap_or_else(|| "Service".into()),
                name: text(r.get("name")).filter(|n| !n.is_empty())?,
                section_name: text(r.get("sectionName")),
            })
        })
        .collect();
    if target_refs.is_empty() {
        return None;
    }
    let metadata = document.get("metadata");
    let field = |name: &str| text(metadata.and_then(|m| m.get(name)));
    let name =
        field("name").filter(|n| !n.is_empty()).unwrap_or_else(|| format!("(unnamed, {context})"));
    let metadata = ObjectMeta {
        name,
        namespace: field("namespace"),
        generation: metadata.and_then(|m| m.get("generation")).and_then(|g| g.as_i64()),
        creation_timestamp: field("creationTimestamp"),
        ..Default::default()
    };
    Some(Arc::new(BackendTlsPolicy {
        metadata,
        spec: BackendTlsPolicySpec { target_refs, ..Default::default() },
        malformed: Some(reason.to_string()),
    }))
}

/// How long before the previous scan a file's modification time must be for its stamp to be
/// trusted.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The directory tree, file by file, with the last good parse of each file.
#[derive(Default)]
pub struct ConfigDir {
    root: PathBuf,
    /// Hashed, not ordered: at ten thousand files, comparing paths component by component to
    /// keep them sorted cost more than hashing them.
    files: HashMap<PathBuf, FileState>,
    /// Directories under the root that could not be listed in the last reload (their files keep
    /// their last good content).
    unlisted_dirs: Vec<SourceError>,
    /// When the previous reload started.
    last_scan: Option<SystemTime>,
    /// The objects of `files`, kept up to date file by file: at ten thousand backends, building
    /// it anew for every change costs more than the change.
    store: Store,
    /// Which files define each object, in path order; the first one's definition is in `store`.
    /// Keyed by [`owner_key`] rather than kind and name: at ten thousand backends the copies of
    /// fifty thousand names cost more memory than anything else the source keeps.
    owners: HashMap<u128, Vec<Arc<Path>>>,
    /// Objects defined in more than one file.
    duplicated: BTreeSet<(&'static str, ObjectKey)>,
    /// The directories the last full listing went through (the root included): an event on one
    /// of these paths is a directory's, even once the directory is gone.
    dirs: HashSet<PathBuf>,
    /// Whether the last full listing found a path an event on another path can change: a
    /// symlink, a hard-linked file, a directory reached twice. Events then cannot say which
    /// files changed: every reload lists the tree.
    aliased: bool,
    /// Files that could not be read: a full listing reads them again every time, so a reload
    /// after events does too.
    retry: HashSet<PathBuf>,
    /// Changes a watcher reported since the last reload, when one watches the directory (see
    /// [`ConfigDir::watch_events`]); `None` when none does: every reload lists the tree.
    pending: Option<FileEvents>,
    /// The watcher's error, once it reported one: it may miss changes since, so every reload
    /// lists the tree.
    watcher_failed: Option<String>,
}

/// What identifies a file's version without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct FileState {
    stamp: FileStamp,
    /// Digest of the content, to skip parsing a rewrite that changed nothing.
    digest: u64,
    /// The last content that parsed, kept while the file is broken.
    good: Vec<Object>,
    /// Problems with the current content.
    errors: Vec<SourceError>,
    /// Whether the current content is in use (`good` is it); false while it is broken.
    usable: bool,
}

impl FileState {
    fn unreadable(stamp: FileStamp, previous: Option<FileState>, error: SourceError) -> FileState {
        let mut state = previous.unwrap_or(FileState {
            stamp,
            digest: 0,
            good: Vec::new(),
            errors: Vec::new(),
            usable: false,
        });
        state.errors = vec![error];
        state.usable = false;
        // Parse whatever is read next, even if it is the last good content again.
        state.digest = 0;
        // No trusted stamp: the next reload reads it again (a permission fix does not change the
        // modification time).
        state.stamp = FileStamp { modified: None, ..stamp };
        state
    }
}

impl ConfigDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigDir { root: root.into(), ..Default::default() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the tree: files whose size, inode and modification time are unchanged are not
    /// read again, and changed ones are parsed on all cores. Returns an error only when the
    /// directory itself cannot be read.
    pub fn reload(&mut self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let scan_time = SystemTime::now();
        // Modification times are coarse (milliseconds on many filesystems): a file rewritten in
        // place with the same size during the previous scan can keep its stamp. Files modified
        // near or after the previous scan are therefore always read ("racy git" problem).
        let settled_before = self.last_scan.and_then(|t| t.checked_sub(RACY_WINDOW));
        self.last_scan = Some(scan_time);
        let mut listing = Listing::default();
        listing.collect(&self.root, 0)?;
        let mut next = HashMap::with_capacity(self.files.len());
        let mut to_read = Vec::new();
        for (path, entry) in listing.files {
            let previous = self.files.remove(&path);
            match next_state(path, entry, previous, settled_before) {
                Next::Keep(path, state) => drop(next.insert(path, state)),
                Next::Read(job) => to_read.push(job),
            }
        }
        // Files under a directory that could not be listed are kept as they were.
        for dir in &listing.unlisted_dirs {
            let kept: Vec<PathBuf> =
                self.files.keys().filter(|p| p.starts_with(&dir.file)).cloned().collect();
            for path in kept {
                let state = self.files.remove(&path).expect("listed above");
                next.insert(path, state);
            }
        }
        self.unlisted_dirs = listing.unlisted_dirs;
        self.dirs = listing.dirs;
        self.aliased = listing.aliased;
        let read_files = to_read.len();
        let removed = std::mem::replace(&mut self.files, next);
        self.apply(to_read, removed.into_iter().map(|(path, state)| (path, state.good)).collect());
        self.retry = self
            .files
            .iter()
            .filter(|(_, state)| state.stamp.modified.is_none())
            .map(|(path, _)| path.clone())
            .collect();
        tracing::debug!(
            elapsed = ?started.elapsed(),
            files = self.files.len(),
            read_files,
            listed = "all",
            "reload"
        );
        Ok(())
    }

    /// From now on [`Self::reload_pending`] checks only the paths given to
    /// [`Self::add_events`]. Call it once the watcher runs, before the first reload: a change
    /// between the first listing and the watcher's start would otherwise go unseen.
    pub fn watch_events(&mut self) {
        self.pending = Some(FileEvents::default());
    }

    /// Changes a watcher reported, for the next [`Self::reload_pending`].
    pub fn add_events(&mut self, events: FileEvents) {
        if let Some(pending) = &mut self.pending {
            pending.merge(events);
        }
    }

    /// What `serve` calls: [`Self::reload_events`] with the changes reported since the last
    /// reload when a watcher reports them ([`Self::watch_events`]), [`Self::reload`] otherwise.
    pub fn reload_pending(&mut self) -> std::io::Result<()> {
        let Some(pending) = &mut self.pending else { return self.reload() };
        let events = std::mem::take(pending);
        let result = self.reload_events(events);
        if result.is_err() {
            // What the failed reload should have checked is not kept: list everything next.
            self.pending = Some(FileEvents::everything("the previous reload failed"));
        }
        result.map(drop)
    }

    /// Brings the files that `events` name up to date, leaving the result [`Self::reload`]
    /// would give, without listing the tree: a change costs the same at ten or a hundred
    /// thousand files. Files that could not be read are read again too (as a full listing
    /// does). The whole tree is listed instead whenever the events cannot say which files
    /// changed: see [`Self::check_paths`]. Returns an error only when the directory itself
    /// cannot be read. The reload's debug line counts the paths events named (`event_paths`)
    /// and those checked (`checked_paths`: input files among them, and unreadable files).
    pub fn reload_events(&mut self, events: FileEvents) -> std::io::Result<Reload> {
        let started = std::time::Instant::now();
        if events.watcher_failed && self.watcher_failed.is_none() {
            self.watcher_failed = events.everything.clone();
        }
        let named = events.paths.len();
        let checks = match self.check_paths(events) {
            Ok(checks) => checks,
            Err(reason) => {
                tracing::debug!(%reason, "listing the whole config directory");
                self.reload()?;
                return Ok(Reload::Listed { reason });
            }
        };
        let checked = checks.len();
        let mut to_read = Vec::new();
        let mut removed = Vec::new();
        let mut paths = Vec::with_capacity(checked);
        for (path, entry) in checks {
            paths.push(path.clone());
            let previous = self.files.remove(&path);
            match entry {
                None => removed.extend(previous.map(|state| (path, state.good))),
                // Always read: the event says the file changed, whatever its stamp.
                Some(entry) => match next_state(path, entry, previous, None) {
                    Next::Keep(path, state) => drop(self.files.insert(path, state)),
                    Next::Read(job) => to_read.push(job),
                },
            }
        }
        let read_files = to_read.len();
        self.apply(to_read, removed);
        for path in paths {
            if self.files.get(&path).is_some_and(|state| state.stamp.modified.is_none()) {
                self.retry.insert(path);
            } else {
                self.retry.remove(&path);
            }
        }
        tracing::debug!(
            elapsed = ?started.elapsed(),
            files = self.files.len(),
            read_files,
            event_paths = named,
            checked_paths = checked,
            listed = "events",
            "reload"
        );
        Ok(Reload::Checked { paths: checked })
    }

    /// The files that events on `events`' paths may have changed, each with its stamp (or why it
    /// cannot be read), or None when it is gone; or why the events cannot be trusted to name
    /// every change, so that the tree must be listed: the events said so (the watcher lost
    /// events or failed, now or earlier), nothing was listed yet, the tree holds symlinks or hard links (a
    /// change through one name raises events on that name only), a directory could not be
    /// listed, or an event named a directory (created, removed, renamed: what is under it is
    /// not named), a symlink, a hard-linked file, the root itself or a path outside it.
    #[allow(clippy::type_complexity)]
    fn check_paths(
        &self,
        events: FileEvents,
    ) -> Result<Vec<(PathBuf, Option<Result<FileStamp, ReadError>>)>, String> {
        use std::os::unix::fs::MetadataExt;
        if let Some(reason) = events.everything {
            return Err(reason);
        }
        if let Some(reason) = &self.watcher_failed {
            return Err(format!("the watcher failed ({reason}): it may miss changes"));
        }
        if self.last_scan.is_none() {
            return Err("first load".into());
        }
        if self.aliased {
            return Err("the tree holds symlinks or hard links: a change through one name raises events on that name only".into());
        }
        if !self.unlisted_dirs.is_empty() {
            return Err("a directory could not be listed".into());
        }
        // Watchers report paths under the absolute form of the directory they were given.
        let absolute = std::path::absolute(&self.root)
            .map_err(|e| format!("cannot tell the directory's absolute path: {e}"))?;
        let mut seen = HashSet::new();
        let mut checks = Vec::new();
        for event_path in events.paths.iter().chain(self.retry.iter()) {
            let outside = || format!("an event outside the directory: {}", event_path.display());
            let relative = event_path
                .strip_prefix(&absolute)
                .or_else(|_| event_path.strip_prefix(&self.root))
                .map_err(|_| outside())?;
            let mut names = Vec::new();
            for component in relative.components() {
                match component {
                    std::path::Component::Normal(name) => names.push(name),
                    _ => return Err(outside()),
                }
            }
            let Some((name, dirs)) = names.split_last() else {
                return Err("an event on the directory itself".into());
            };
            // The path the listing would give the file.
            let path = self.root.join(relative);
            if !seen.insert(path.clone()) {
                continue;
            }
            let metadata = std::fs::symlink_metadata(&path);
            let what = match &metadata {
                // Removed or renamed, or replaced by a file: the files under it are not named.
                _ if self.dirs.contains(&path) => Some("a directory listed before"),
                Ok(m) if m.file_type().is_symlink() => Some("a symlink"),
                Ok(m) if m.is_dir() => Some("a directory"),
                // Whatever its name: input can be written through it.
                Ok(m) if m.nlink() > 1 => Some("a hard-linked file"),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            let hidden = |name: &std::ffi::OsStr| name.to_string_lossy().starts_with('.');
            // Never listed, nor anything under them (and none of them is the target of a
            // symlink or another name of a file, or the tree would be aliased).
            if hidden(name)
                || dirs.iter().any(|dir| hidden(dir) || dir.to_string_lossy().ends_with('~'))
            {
                if what == Some("a hard-linked file") {
                    return Err(format!("an event on {}: a hard-linked file", path.display()));
                }
                continue;
            }
            if let Some(what) = what {
                return Err(format!("an event on {}: {what}", path.display()));
            }
            if dirs.len() > limits::MAX_DIRECTORY_DEPTH {
                return Err(format!("an event deeper than {} levels", limits::MAX_DIRECTORY_DEPTH));
            }
            match metadata {
                Err(_) => checks.push((path, None)),
                Ok(metadata) => match classify(name, Ok(metadata)) {
                    Entry::File(entry) => checks.push((path, Some(entry))),
                    Entry::Skip => {}
                    Entry::Dir => unreachable!("directories were sent to the full listing"),
                },
            }
        }
        Ok(checks)
    }

    /// Reads `to_read` and brings the store up to date for them and for the files `removed`
    /// (with the objects they had).
    fn apply(&mut self, to_read: Vec<ReadJob>, removed: Vec<(PathBuf, Vec<Object>)>) {
        let mut indexes = FileIndexes::new();
        if removed.is_empty() && to_read.iter().all(|job| job.previous.is_none()) {
            // No file gives anything up (a first load): each file's objects go into the store
            // as soon as it is parsed, while the others are still being parsed.
            read_all(to_read, |(path, state, _)| {
                self.files.insert(path.clone(), state);
                self.update_store(&path, &[], &mut indexes);
            });
            crate::objects::release_unused_values();
            return;
        }
        // Files whose objects may change, with the objects they had.
        let mut touched = removed;
        read_all(to_read, |(path, state, replaced)| {
            if let Some(old) = replaced {
                touched.push((path.clone(), old));
            }
            self.files.insert(path, state);
        });
        // Every touched file first gives up what it defined: an object that moved from one
        // file to another in this reload must never be looked up in the file it left.
        for (path, old) in &touched {
            for object in old {
                let id = (object.kind(), object.key());
                if let Some(paths) = self.owners.get_mut(&owner_key(&id)) {
                    paths.retain(|p| **p != **path);
                }
            }
        }
        for (path, old) in touched {
            self.update_store(&path, &old, &mut indexes);
        }
        crate::objects::release_unused_values();
    }

    /// Problems in the current files (each file's last good content is still in the store).
    pub fn errors(&self) -> Vec<SourceError> {
        let mut errors: Vec<SourceError> = self
            .files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .chain(self.unlisted_dirs.iter().cloned())
            .collect();
        errors.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        errors
    }

    /// Files (and directories) whose current content is not in use because it cannot be read or
    /// parsed. While one of them has never been read successfully, what it would govern is
    /// unknown: `serve` does not publish a first configuration, and `check`/`render` fail.
    pub fn unusable(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self
            .files
            .iter()
            .filter(|(_, f)| !f.usable)
            .map(|(p, _)| p.as_path())
            .chain(self.unlisted_dirs.iter().map(|e| e.file.as_path()))
            .collect();
        paths.sort();
        paths
    }

    /// Brings `store` up to date for one file whose objects were `old`, once every file touched
    /// in this reload gave up the objects it had.
    fn update_store(&mut self, path: &Path, old: &[Object], indexes: &mut FileIndexes) {
        let new = self.files.get(path).map(|f| f.good.as_slice()).unwrap_or_default();
        // One allocation for the path, shared by its objects' entries.
        let shared_path: Arc<Path> = path.into();
        let mut affected = BTreeSet::new();
        // (`path` no longer owns them: see `apply`.)
        for object in old {
            affected.insert((object.kind(), object.key()));
        }
        for object in new {
            let id = (object.kind(), object.key());
            let paths = self.owners.entry(owner_key(&id)).or_default();
            if let Err(at) = paths.binary_search_by(|p| (**p).cmp(path)) {
                // Almost every object has one file: room for exactly one (a Vec grown from
                // empty keeps room for four; 3 MB at ten thousand backends).
                paths.reserve_exact(1);
                paths.insert(at, shared_path.clone());
            }
            if paths.len() > 1 {
                affected.insert(id);
                continue;
            }
            // Defined by this file alone (almost every object): its definition is this one,
            // stored without a lookup. (Defined twice in this file, the last one stays, as
            // through the index.)
            if !affected.is_empty() {
                affected.remove(&id);
            }
            if !self.duplicated.is_empty() {
                self.duplicated.remove(&id);
            }
            self.store.put_keyed(id.1, object.clone());
        }
        // Each definition is found through its file's index, built once per file and reload:
        // finding each object by scanning its file made a file of k objects cost k² key
        // comparisons (49 s of `check` at 100,000 backends in 50 files).
        let files = &self.files;
        let mut definition = |path: &Arc<Path>, id: &(&'static str, ObjectKey)| -> Object {
            let good = &files[&**path].good;
            let index = indexes.entry(path.clone()).or_insert_with(|| {
                count_indexed(good.len());
                good.iter().enumerate().map(|(i, o)| ((o.kind(), o.key()), i)).collect()
            });
            good[*index.get(id).expect("an owner defines the object")].clone()
        };
        for id in affected {
            let owner = owner_key(&id);
            let first = self.owners.get(&owner).and_then(|paths| paths.first()).cloned();
            match first {
                None => {
                    self.owners.remove(&owner);
                    self.store.remove(id.0, &id.1);
                }
                Some(first) => {
                    let paths = &self.owners[&owner];
                    let object = match definition(&first, &id) {
                        Object::BackendTlsPolicy(policy) if paths.len() > 1 => {
                            let others = paths[1..].iter().map(|p| match definition(p, &id) {
                                Object::BackendTlsPolicy(other) => other,
                                _ => unreachable!("owners are keyed by kind"),
                            });
                            let others: Vec<_> = others.collect();
                            Object::BackendTlsPolicy(policy_defined_twice(
                                &policy,
                                others.into_iter(),
                                paths,
                            ))
                        }
                        object => object,
                    };
                    self.store.put(object);
                }
            }
            if self.owners.get(&owner).is_some_and(|paths| paths.len() > 1) {
                self.duplicated.insert(id);
            } else {
                self.duplicated.remove(&id);
            }
        }
    }

    /// [`Self::store`], to be resolved in place ([`crate::resolve::Incremental`]), with the
    /// parse errors too.
    pub fn objects(&mut self) -> (&mut Store, Vec<SourceError>) {
        let (_, mut errors) = self.store();
        errors.extend(self.errors());
        (&mut self.store, errors)
    }

    /// All objects. An object defined in several files is reported and the definition in the
    /// first file (by path) is used.
    pub fn store(&self) -> (&Store, Vec<SourceError>) {
        let errors = self
            .duplicated
            .iter()
            .flat_map(|(kind, key)| {
                let reason = if *kind == "BackendTLSPolicy" {
                    "defined more than once; the targets of every definition fail closed until one is left"
                } else {
                    "defined more than once; the first definition is used"
                };
                self.owners[&owner_key(&(*kind, key.clone()))][1..].iter().map(move |path| {
                    SourceError {
                        file: path.to_path_buf(),
                        document: None,
                        object: Some(format!("{kind} {key}")),
                        reason: reason.into(),
                    }
                })
            })
            .collect();
        (&self.store, errors)
    }
}

/// A BackendTLSPolicy defined in several files: which definition the user means is unknown, and
/// keeping only the first would serve the targets only the others name in plaintext. The stand-in
/// keeps the first one's metadata and the targets of all of them, marked malformed so that every
/// one fails closed.
fn policy_defined_twice(
    first: &BackendTlsPolicy,
    others: impl Iterator<Item = Arc<BackendTlsPolicy>>,
    paths: &[Arc<Path>],
) -> Arc<BackendTlsPolicy> {
    let mut target_refs = first.spec.target_refs.clone();
    for other in others {
        for target in &other.spec.target_refs {
            if !target_refs.contains(target) {
                target_refs.push(target.clone());
            }
        }
    }
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Arc::new(BackendTlsPolicy {
        metadata: first.metadata.clone(),
        spec: crate::objects::BackendTlsPolicySpec { target_refs, ..Default::default() },
        malformed: Some(format!("it is defined in {} files ({})", files.len(), files.join(", "))),
    })
}

/// Per file, the position of each of its objects by kind and key (see
/// [`ConfigDir::update_store`]). Valid while the files' content does not change: within one reload.
type FileIndexes = HashMap<Arc<Path>, HashMap<(&'static str, ObjectKey), usize>>;

// Objects put into per-file indexes by `ConfigDir::update_store`, counted in tests: a reload
// indexes each file it touches once, never once per object.
#[cfg(test)]
thread_local! {
    static INDEXED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_indexed(_objects: usize) {
    #[cfg(test)]
    INDEXED.with(|n| n.set(n.get() + _objects));
}

/// A 128-bit digest of an object's kind and key, standing for them in [`ConfigDir`]'s owners.
fn owner_key((kind, key): &(&'static str, ObjectKey)) -> u128 {
    u128::from_be_bytes(crate::digest::digest(&(kind, &key.namespace, &key.name)))
}

/// Paths a watcher reported changed under the config directory, gathered between two reloads
/// for [`ConfigDir::reload_events`].
#[derive(Debug, Default)]
pub struct FileEvents {
    paths: HashSet<PathBuf>,
    /// Why the events cannot name every change, when they cannot: the tree is listed.
    everything: Option<String>,
    /// The watcher failed (e.g. it could not watch a new directory: too many watches): it may
    /// miss changes from now on, so every later reload lists the tree.
    watcher_failed: bool,
}

/// More changed paths than this between two reloads (a checkout, a copy of the whole tree) are
/// not checked one by one: the tree is listed.
pub const MAX_EVENT_PATHS: usize = 65_536;

impl FileEvents {
    /// Events that cannot say what changed, and why.
    pub fn everything(reason: impl Into<String>) -> Self {
        FileEvents { paths: HashSet::new(), everything: Some(reason.into()), watcher_failed: false }
    }

    pub fn add_path(&mut self, path: PathBuf) {
        if self.everything.is_some() {
            return;
        }
        self.paths.insert(path);
        if self.paths.len() > MAX_EVENT_PATHS {
            self.paths = HashSet::new();
            self.everything = Some(format!("more than {MAX_EVENT_PATHS} paths changed"));
        }
    }

    pub fn merge(&mut self, other: FileEvents) {
        self.watcher_failed |= other.watcher_failed;
        match other.everything {
            Some(_) if self.everything.is_some() => {}
            Some(reason) => {
                self.paths = HashSet::new();
                self.everything = Some(reason);
            }
            None => other.paths.into_iter().for_each(|path| self.add_path(path)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.everything.is_none()
    }

    /// What one event of a `notify` watcher on the directory says: None for an event that
    /// changes nothing (reading a file, as the loader does, raises access events).
    pub fn from_notify(event: notify::Result<notify::Event>) -> Option<FileEvents> {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                let mut events = FileEvents::everything(format!("watcher error: {error}"));
                events.watcher_failed = true;
                return Some(events);
            }
        };
        if event.need_rescan() {
            // inotify's queue overflowed: events were lost.
            return Some(FileEvents::everything("the watcher lost events (rescan)"));
        }
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return None;
        }
        if event.paths.is_empty() {
            return Some(FileEvents::everything(format!("an event without a path: {event:?}")));
        }
        let mut events = FileEvents::default();
        event.paths.into_iter().for_each(|path| events.add_path(path));
        Some(events)
    }
}

/// What [`ConfigDir::reload_events`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Checked only these many paths (those events named, and unreadable files).
    Checked { paths: usize },
    /// Listed the whole tree, for this reason.
    Listed { reason: String },
}

/// What a reload does with one file it found.
enum Next {
    /// The state stays (its stamp is trusted), or the file cannot be read (its last good
    /// content stays in use).
    Keep(PathBuf, FileState),
    Read(ReadJob),
}

/// A file's next state, given its stamp (or why it cannot be read) and its state before: a file
/// whose stamp is unchanged and was modified before `settled_before` is not read again.
fn next_state(
    path: PathBuf,
    entry: Result<FileStamp, ReadError>,
    previous: Option<FileState>,
    settled_before: Option<SystemTime>,
) -> Next {
    let stamp = match entry {
        Ok(stamp) => stamp,
        Err(error) => {
            // Listed but not readable as a file (a FIFO, a device, a symlink loop):
            // reported, never opened; its last good content stays in use.
            let reason = error.to_string();
            let error = SourceError { file: path.clone(), document: None, object: None, reason };
            let stamp = FileStamp { modified: None, len: 0, inode: 0 };
            return Next::Keep(path, FileState::unreadable(stamp, previous, error));
        }
    };
    let settled = matches!((stamp.modified, settled_before), (Some(m), Some(s)) if m < s);
    if settled && previous.as_ref().is_some_and(|state| state.stamp == stamp) {
        return Next::Keep(path, previous.expect("checked above"));
    }
    Next::Read(ReadJob { path, stamp, previous })
}

/// A file that is new or may have changed since the previous reload.
struct ReadJob {
    path: PathBuf,
    stamp: FileStamp,
    previous: Option<FileState>,
}

/// What [`read_one`] gives for a file: its new state and, when its objects were replaced, the
/// objects it had before.
type ReadResult = (PathBuf, FileState, Option<Vec<Object>>);

/// Reads and parses files on every core, each worker holding one file's text at a time (at ten
/// thousand files, holding every text at once would double the loader's peak memory), and hands
/// each file's result to `each` on the calling thread as soon as it is ready.
fn read_all(jobs: Vec<ReadJob>, mut each: impl FnMut(ReadResult)) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 {
        jobs.into_iter().map(read_one).for_each(each);
        return;
    }
    // Each worker takes the next few files when done with the last: files differ in size, and
    // halves fixed up front finished up to a sixth apart at 100,000 backends. Files are taken
    // and handed over a batch at a time (one file at a time, the lock and the wake-ups of the
    // calling thread cost 7% of `check` at 100,000 files), small enough that every worker gets
    // sixteen batches.
    let batch = (jobs.len() / (threads * 16)).clamp(1, 64);
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::channel::<Vec<ReadResult>>();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (send, jobs) = (send.clone(), &jobs);
                scope.spawn(move || loop {
                    let taken: Vec<ReadJob> = jobs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_ref()
                        .take(batch)
                        .collect();
                    if taken.is_empty() {
                        break;
                    }
                    // The receiver lives until every worker is done.
                    let _ = send.send(taken.into_iter().map(read_one).collect());
                })
            })
            .collect();
        drop(send);
        receive.into_iter().flatten().for_each(&mut each);
        for handle in handles {
            handle.join().expect("parsing does not panic");
        }
    })
}

fn read_one(job: ReadJob) -> (PathBuf, FileState, Option<Vec<Object>>) {
    let ReadJob { path, stamp, previous } = job;
    let text = match read_text(&path, limits::MAX_FILE_BYTES) {
        Ok(text) => text,
        Err(error) => {
            // Vanished between listing and reading, unreadable or too large: keep what we had.
            let reason = error.to_string();
            let error = SourceError { file: path.clone(), document: None, object: None, reason };
            return (path, FileState::unreadable(stamp, previous, error), None);
        }
    };
    let digest = content_digest(&text);
    match previous {
        Some(mut state) if state.digest == digest => {
            // Rewritten with the same content (or only touched): nothing to parse.
            state.stamp = stamp;
            (path, state, None)
        }
        previous => {
            let parsed = parse_file(&path, &text);
            if parsed.usable {
                let old = previous.map(|p| p.good).unwrap_or_default();
                let state = FileState {
                    stamp,
                    digest,
                    good: parsed.objects,
                    errors: parsed.errors,
                    usable: true,
                };
                (path, state, Some(old))
            } else {
                // Broken: the last good content stays in use, so the store does not change.
                let good = previous.map(|p| p.good).unwrap_or_default();
                let state = FileState { stamp, digest, good, errors: parsed.errors, usable: false };
                (path, state, None)
            }
        }
    }
}

/// Why a file's text cannot be read (each message follows the file's path).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file's type (e.g. `a FIFO`).
    #[error("is not a regular file ({0})")]
    NotAFile(&'static str),
    #[error("is {len} bytes; files larger than {max} bytes are not read (split the file)")]
    TooLarge { len: u64, max: u64 },
    /// The offset of the first byte that is not UTF-8.
    #[error("is not UTF-8 text (invalid byte at offset {0})")]
    NotUtf8(usize),
}

/// A file's text, read in bounded time and memory: regular files only (a FIFO would block the
/// reader, `/dev/zero` never ends), at most `max_bytes` ([`limits::MAX_FILE_BYTES`] for input),
/// UTF-8.
pub(crate) fn read_text(path: &Path, max_bytes: u64) -> Result<String, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that a file swapped for a FIFO after listing cannot block the open.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(ReadError::NotAFile(file_type_name(&metadata)));
    }
    let too_large = |len: u64| ReadError::TooLarge { len, max: max_bytes };
    if metadata.len() > max_bytes {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8(e.utf8_error().valid_up_to()))
}

fn file_type_name(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

fn content_digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Whether a file name is input: `.yaml`, `.yml` or `.json`, not hidden, not a backup.
pub fn is_input_file(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    // Editors' swap and backup files, and hidden files (e.g. Kubernetes ConfigMap mounts'
    // ..data symlinks), are not input.
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// The input files under a directory tree, each with its stamp or why it cannot be read.
#[derive(Default)]
struct Listing {
    files: Vec<(PathBuf, Result<FileStamp, ReadError>)>,
    /// Subdirectories that could not be listed.
    unlisted_dirs: Vec<SourceError>,
    /// Directories seen, by device and inode: a symlink back up the tree is listed once.
    visited: std::collections::HashSet<(u64, u64)>,
    /// The directories listed, by path.
    dirs: HashSet<PathBuf>,
    /// Whether some input file or directory can be reached by another name: a symlink, a
    /// hard-linked file, a directory reached twice (see [`ConfigDir::check_paths`]).
    aliased: bool,
}

/// What the listing makes of one entry that is not hidden, given its metadata (symlinks
/// followed).
enum Entry {
    Dir,
    /// Not input.
    Skip,
    /// An input file: its stamp, or why it cannot be read.
    File(Result<FileStamp, ReadError>),
}

fn classify(name: &std::ffi::OsStr, metadata: std::io::Result<std::fs::Metadata>) -> Entry {
    use std::os::unix::fs::MetadataExt;
    match metadata {
        Ok(metadata) if metadata.is_dir() => {
            if name.to_string_lossy().ends_with('~') {
                Entry::Skip
            } else {
                Entry::Dir
            }
        }
        _ if !is_input_file(name) => Entry::Skip,
        Ok(metadata) if metadata.is_file() => Entry::File(Ok(FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        })),
        Ok(metadata) => Entry::File(Err(ReadError::NotAFile(file_type_name(&metadata)))),
        Err(e) => Entry::File(Err(ReadError::Io(e))),
    }
}

impl Listing {
    /// Lists `dir`; an error only when `dir` is the root and cannot be read.
    fn collect(&mut self, dir: &Path, depth: usize) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let unlisted = |reason: String| SourceError {
            file: dir.to_path_buf(),
            document: None,
            object: None,
            reason,
        };
        let metadata = std::fs::metadata(dir)?;
        if !self.visited.insert((metadata.dev(), metadata.ino())) {
            self.aliased = true;
            return Ok(()); // a symlink to a directory already listed
        }
        self.dirs.insert(dir.to_path_buf());
        if depth > limits::MAX_DIRECTORY_DEPTH {
            let reason = format!(
                "directories nested deeper than {} levels are not read (limit MAX_DIRECTORY_DEPTH)",
                limits::MAX_DIRECTORY_DEPTH
            );
            self.unlisted_dirs.push(unlisted(reason));
            return Ok(());
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if depth == 0 => return Err(e),
            Err(e) => {
                self.unlisted_dirs.push(unlisted(format!("cannot list directory: {e}")));
                return Ok(());
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.unlisted_dirs.push(unlisted(format!("cannot list directory: {e}")));
                    continue;
                }
            };
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
            // Follows symlinks: a symlink is read as what it points to.
            let metadata = std::fs::metadata(&path);
            let hard_linked = metadata.as_ref().is_ok_and(|m| !m.is_dir() && m.nlink() > 1);
            match classify(&name, metadata) {
                Entry::Skip => {}
                Entry::Dir => {
                    self.aliased |= symlink;
                    self.collect(&path, depth + 1)?;
                }
                Entry::File(file) => {
                    self.aliased |= symlink || hard_linked;
                    self.files.push((path, file));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_objects_say_why() {
        let reasons = |text: &str| -> Vec<String> {
            let parsed = parse_file(Path::new("t.yaml"), text);
            parsed.errors.into_iter().map(|e| e.reason).collect()
        };
        assert_eq!(
            reasons("apiVersion: gateway.networking.k8s.io/v2\nkind: HTTPRoute\nmetadata: {name: r}\n"),
            ["HTTPRoute at apiVersion gateway.networking.k8s.io/v2 is not supported (supported: gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1beta1)"]
        );
        assert_eq!(
            reasons("apiVersion: v2\nkind: Service\nmetadata: {name: s}\n"),
            ["Service at apiVersion v2 is not supported (supported: v1)"]
        );
        assert_eq!(
            reasons("apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: ns}\n"),
            ["ConfigMap has no metadata.name"]
        );
        assert_eq!(
            reasons("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: 7}\n"),
            ["metadata.namespace must be a string"]
        );
        let [namespace] =
            &reasons("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: A_b}\n")[..]
        else {
            panic!("one error");
        };
        assert!(
            namespace.starts_with(
                "metadata.namespace: \"A_b\" is not a valid name: a lowercase RFC 1123 label"
            ),
            "{namespace}"
        );
    }

    /// A file of many objects is indexed once per reload, not scanned once per object (that was
    /// quadratic in the objects of one file). Counted, not timed; both sizes must cost the same
    /// per object.
    #[test]
    fn a_reload_indexes_each_touched_file_once() {
        let indexed_per_object = |k: usize| {
            let dir = tempfile::tempdir().unwrap();
            let text: String = (0..k)
                .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, namespace: ns}}\n---\n"))
                .collect();
            std::fs::write(dir.path().join("all.yaml"), &text).unwrap();
            // A second file that defines one of the same objects again (its definition comes
            // second by path, so it is never looked up: a ConfigMap keeps the first).
            std::fs::write(
                dir.path().join("b.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c0, namespace: ns}\n",
            )
            .unwrap();
            INDEXED.with(|n| n.set(0));
            let mut config = ConfigDir::new(dir.path());
            config.reload().unwrap();
            assert_eq!(config.store().0.config_maps.len(), k);
            assert_eq!(config.store().1.len(), 1, "c0 is defined twice");
            INDEXED.with(|n| n.get()) as f64 / k as f64
        };
        // Exactly the k objects of the first file: every lookup goes through its index (a lookup
        // that scanned instead would index nothing), and no file is indexed twice.
        let (small, large) = (indexed_per_object(200), indexed_per_object(800));
        assert_eq!((small, large), (1.0, 1.0), "objects indexed per object");
    }

    /// The direct path ([`direct`]) and the value path give the same objects, errors and
    /// usability for every test input, example and fuzz seed, and for documents made to
    /// tell them apart; and the direct path does read the common documents.
    #[test]
    fn direct_and_value_paths_agree() {
        let same = |name: &str, text: &str| {
            let file = Path::new(name);
            let (direct, value) =
                (parse_file_by(file, text, true), parse_file_by(file, text, false));
            assert_eq!(direct.objects, value.objects, "{name}: {text}");
            assert_eq!(direct.errors, value.errors, "{name}: {text}");
            assert_eq!(direct.usable, value.usable, "{name}: {text}");
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = 0;
        for dir in ["loader/tests", "examples", "fuzz/corpus/manifest_yaml", "fuzz/corpus/pipeline"]
        {
            let mut stack = vec![root.join(dir)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(text) = std::fs::read_to_string(&path) {
                        let json = path.extension().is_some_and(|e| e == "json");
                        same(if json { "t.json" } else { "t.yaml" }, &text);
                        files += 1;
                    }
                }
            }
        }
        assert!(files > 200, "{files} files");

        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {ports: [{name: https, port: 443}]}\n";
        // Read directly, and the same either way.
        let direct = [
            service.to_string(),
            // The kind last: what came before is read as values, then typed.
            "spec: {ports: [{port: 1, targetPort: {a: [1]}}]}\nmetadata: {name: s, labels: {a: b}}\napiVersion: v1\nkind: Service\n".into(),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: null, ports: [{port: 1, protocol: ~}]}\nstatus: {loadBalancer: {}}\n".into(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: c, labels: {x: &v y}}\ndata: {1: one, k: *v}\n".into(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, labels: {x: y}}\ndata: {a: '1', b: *x}\n".into(),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1.5, x: [1, {a: b}]}\n".into(),
            "# only a comment\n".into(),
            "".into(),
            format!("{service}...\n{service}"),
            format!("---\n# nothing\n---\n{service}---\n\n--- {{apiVersion: v1, kind: Namespace, metadata: {{name: a}}}}\n...\n"),
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"], conditions: {ready: false}}]\nports: [{name: https, port: 8443}]\n".into(),
        ];
        for text in &direct {
            same("t.yaml", text);
        }
        assert!(direct::read(&direct[0]).is_some_and(|o| o.len() == 1));
        assert!(direct::read(&direct[1]).is_some_and(|o| o.len() == 1));
        assert!(direct::read(&direct[3]).is_some_and(|o| o.len() == 1));
        assert!(direct::read(&direct[5]).is_some_and(|o| o.is_empty()));
        // Left to the value path (which reports them, or reads them: a List, a Secret).
        let value = [
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nstatus: {a: 1, a: 2}\n",
            "apiVersion: v1\nkind: Service\nkind: Service\nmetadata: {name: s}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: null}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: 5}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: \"443\"}]}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nstatus: {x: .nan}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nstatus: !foo {a: 1}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1, targetPort: {a: 1, a: 2}}]}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nstatus: {x: 99999999999999999999999}\n",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {a: 1, a: 1}\n",
            "apiVersion: v1\nkind: List\nitems: []\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: S_1}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: A}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: ''}\n",
            "apiVersion: v2\nkind: Service\nmetadata: {name: s}\n",
            "kind: Service\nmetadata: {name: s}\n",
            "apiVersion: v1\nkind: true\nmetadata: {name: s}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, generation: 1.5}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: [x]}\n",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx}]\n  validation: {hostname: example.com, hostnam: x}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\nkind: [broken\n",
            "just text\n",
            "[1, 2]\n",
        ];
        for text in value {
            same("t.yaml", text);
            let whole_file_direct =
                split_documents(text).iter().all(|(_, d)| direct::read(d).is_some());
            assert!(!whole_file_direct, "read directly: {text}");
        }
    }

    /// The objects of a file that must parse cleanly.
    fn parse_ok(file: &str, text: &str) -> Vec<Object> {
        let parsed = parse_file(Path::new(file), text);
        assert!(parsed.usable && parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.objects
    }

    /// The first error of a file that must not be usable.
    fn parse_err(file: &str, text: &str) -> SourceError {
        let parsed = parse_file(Path::new(file), text);
        assert!(!parsed.usable, "{file} should not be usable");
        parsed.errors.into_iter().next().expect("an unusable file has an error")
    }

    #[test]
    fn multi_document_files_and_lists_parse() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: { name: nginx, namespace: default }
spec: { ports: [{ name: https, port: 8443 }] }
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: { name: ca }
  data: { ca.crt: "x" }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: ignored }
"#;
        let objects = parse_ok("a.yaml", text);
        let kinds: Vec<_> = objects.iter().map(|o| format!("{} {}", o.kind(), o.key())).collect();
        assert_eq!(kinds, ["Service default/nginx", "ConfigMap default/ca"]);
        let typed_list = "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicyList\nitems:\n- apiVersion: gateway.networking.k8s.io/v1\n  kind: BackendTLSPolicy\n  metadata: {name: p}\n  spec: {targetRefs: [{group: '', kind: Service, name: s}], validation: {hostnam: x}}\n";
        let parsed = parse_file(Path::new("list.yaml"), typed_list);
        assert!(parsed.usable, "{:?}", parsed.errors);
        assert!(
            matches!(&parsed.objects[..], [Object::BackendTlsPolicy(p)] if p.malformed.is_some())
        );
        let json = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca"}, "data": {"ca.crt": "x"}}"#;
        assert_eq!(parse_ok("a.json", json).len(), 1);
    }

    #[test]
    fn errors_name_file_document_and_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: notanumber}]}\n";
        let err = parse_err("s.yaml", text);
        assert_eq!(err.object.as_deref(), Some("Service default/s"));
        assert!(err.to_string().starts_with("s.yaml: document 1 (Service default/s): "), "{err}");
    }

    #[test]
    fn yaml_syntax_errors_name_their_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n";
        let err = parse_err("s.yaml", text);
        assert_eq!(err.document, Some(2), "{err}");
        assert!(err.reason.contains("starts at line 4"), "{err}");
        assert_eq!(split_documents("---\na: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("a: |\n  ---\n  x\n").len(), 1);
    }

    /// A document that looks like a BackendTLSPolicy but cannot be read as one keeps its targets
    /// (to fail them closed) and is reported; the file stays usable.
    #[test]
    fn unreadable_policies_keep_their_targets() {
        let cases = [
            // A misspelt field.
            ("apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx, sectionName: https}]\n  validation: {hostnam: example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n", "hostnam"),
            // An unsupported version, with v1alpha2's single targetRef.
            ("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRef: {group: '', kind: Service, name: nginx, sectionName: https}\n  tls: {hostname: example.com}\n", "v1alpha2"),
            // Another group.
            ("apiVersion: example.com/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec: {targetRefs: [{name: nginx, sectionName: https}]}\n", "example.com/v1"),
            // A name the API server would refuse.
            ("apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: P_1, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx, sectionName: https}]\n  validation: {hostname: example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n", "metadata.name"),
            // A key given twice.
            ("apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx, sectionName: https}]\n  validation: {hostname: example.com, hostname: evil.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n", "duplicate key"),
        ];
        for (text, expected) in cases {
            let parsed = parse_file(Path::new("p.yaml"), text);
            assert!(parsed.usable, "{text}");
            assert_eq!(parsed.errors.len(), 1, "{text}");
            assert!(parsed.errors[0].reason.contains(expected), "{}", parsed.errors[0]);
            assert!(parsed.errors[0].reason.contains("fail closed"), "{}", parsed.errors[0]);
            let [Object::BackendTlsPolicy(policy)] = &parsed.objects[..] else {
                panic!("one stand-in policy: {:?}", parsed.objects)
            };
            assert!(policy.malformed.as_deref().is_some_and(|r| r.contains(expected)));
            assert_eq!(policy.spec.target_refs[0].name, "nginx");
            assert_eq!(policy.spec.target_refs[0].section_name.as_deref(), Some("https"));
            assert_eq!(policy.metadata.namespace(), "apps");
        }
        // Without a readable target, nothing it governs can be known: the file is unusable.
        let err = parse_err("p.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p}\nspec: {targetRefs: {}}\n");
        assert!(err.reason.contains("no targetRefs could be read"), "{err}");
        // A broken sibling document makes the whole file unusable.
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx}]\n  validation: {hostname: example.com, wellKnownCACertificates: System}\n---\nkind: [broken\n";
        assert_eq!(parse_err("p.yaml", text).document, Some(2));
    }

    #[test]
    fn names_are_checked_as_the_api_server_does() {
        let service = |ns: &str, name: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n")
        };
        assert_eq!(parse_ok("s.yaml", &service("z-y", "q")).len(), 1);
        // `z`/`y_q` and `z_y`/`q` would both be cluster kube_z_y_q_<port>.
        assert!(parse_err("s.yaml", &service("z", "y_q")).reason.contains("metadata.name"));
        assert!(parse_err("s.yaml", &service("z_y", "q")).reason.contains("metadata.namespace"));
        assert!(parse_err("s.yaml", &service("a", "1abc")).reason.contains("DNS-1035"));
    }

    #[test]
    fn hostile_documents_fail_in_bounded_time() {
        // Alias amplification: ten levels of ten references each, a billion nodes.
        let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb += &format!(
                "  a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            );
        }
        let started = std::time::Instant::now();
        let err = parse_err("bomb.yaml", &bomb);
        assert!(err.reason.contains("repetition limit"), "{err}");
        // Nesting 10,000 deep.
        let deep = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_err("deep.yaml", &deep).reason.contains("recursion limit"));
        let deep_json = format!("{{\"a\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_err("deep.json", &deep_json).reason.contains("recursion limit"));
        // Duplicate keys are errors, in YAML and JSON.
        let dup = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one, k: two}\n";
        assert!(parse_err("dup.yaml", dup).reason.contains("duplicate key \"k\""));
        let dup =
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "name": "b"}}"#;
        assert!(parse_err("dup.json", dup).reason.contains("duplicate key"));
        // One oversized document.
        let big = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{k: {}}}\n",
            "x".repeat(limits::MAX_DOCUMENT_BYTES)
        );
        assert!(parse_err("big.yaml", &big).reason.contains("MAX_DOCUMENT_BYTES"));
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn an_object_defined_twice_comes_from_the_first_file_until_it_goes() {
        let dir = std::env::temp_dir().join(format!("btls-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cm = |value: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca}}\ndata: {{ca.crt: {value}}}\n")
        };
        std::fs::write(dir.join("a.yaml"), cm("from-a")).unwrap();
        std::fs::write(dir.join("b.yaml"), cm("from-b")).unwrap();
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        let key = ObjectKey::new("default", "ca");
        let (store, errors) = config.store();
        assert_eq!(&store.config_map(&key).unwrap().data["ca.crt"], "from-a");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("b.yaml"), "{errors:?}");
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        config.reload().unwrap();
        let (store, errors) = config.store();
        assert_eq!(&store.config_map(&key).unwrap().data["ca.crt"], "from-b");
        assert!(errors.is_empty());
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        config.reload().unwrap();
        assert!(config.store().0.config_map(&key).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Which of two definitions of a policy the user means is unknown: the targets of both fail
    /// closed (keeping only the first served the second's targets in plaintext).
    #[test]
    fn a_policy_defined_twice_fails_the_targets_of_both_closed() {
        let dir = std::env::temp_dir().join(format!("btls-dup-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let policy = |service: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: p}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: {service}}}]\n  validation: {{hostname: example.com, wellKnownCACertificates: System}}\n")
        };
        std::fs::write(dir.join("a.yaml"), policy("one")).unwrap();
        std::fs::write(dir.join("b.yaml"), policy("two")).unwrap();
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        let (store, errors) = config.store();
        let stored = &store.policies[&ObjectKey::new("default", "p")];
        let names: Vec<&str> = stored.spec.target_refs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(stored.malformed.as_deref().is_some_and(|m| m.contains("defined in 2 files")));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].reason.contains("fail closed"), "{errors:?}");
        // One definition left: it is used as written.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        config.reload().unwrap();
        let (store, errors) = config.store();
        let stored = &store.policies[&ObjectKey::new("default", "p")];
        assert!(stored.malformed.is_none() && errors.is_empty());
        assert_eq!(stored.spec.target_refs[0].name, "two");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_content() {
        let dir = std::env::temp_dir().join(format!("btls-source-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("sub/cm.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: one}\n",
        )
        .unwrap();
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        assert!(config.errors().is_empty());
        std::fs::write(&file, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca\n").unwrap();
        config.reload().unwrap();
        assert_eq!(config.errors().len(), 1);
        let (store, _) = config.store();
        let ca = store.config_map(&ObjectKey::new("default", "ca")).unwrap();
        assert_eq!(&ca.data["ca.crt"], "one");
        std::fs::remove_file(&file).unwrap();
        config.reload().unwrap();
        assert!(config.store().0.config_map(&ObjectKey::new("default", "ca")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files that cannot be read as text are reported in bounded time, never block the reload,
    /// and leave the last good content (here: a ConfigMap under the same name) in use.
    #[test]
    fn hostile_files_are_reported_and_keep_the_last_good_content() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("btls-hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: one}\n";
        let names = ["fifo.yaml", "zero.yaml", "loop.yaml", "big.yaml", "latin1.yaml"];
        for name in names {
            std::fs::write(
                dir.join(name),
                cm.replace("name: ca", &format!("name: {}", &name[..3])),
            )
            .unwrap();
        }
        let mut config = ConfigDir::new(&dir);
        config.reload().unwrap();
        assert!(config.errors().is_empty() && config.unusable().is_empty());
        let held = |config: &ConfigDir| config.store().0.config_maps.len();
        assert_eq!(held(&config), 5);

        for name in names {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        let made = std::process::Command::new("mkfifo").arg(dir.join("fifo.yaml")).status();
        assert!(made.unwrap().success());
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink(dir.join("loop.yaml"), dir.join("loop.yaml")).unwrap();
        let big = std::fs::File::create(dir.join("big.yaml")).unwrap();
        big.set_len(limits::MAX_FILE_BYTES + 1).unwrap(); // sparse: 64 MB without writing them
        std::fs::write(dir.join("latin1.yaml"), b"data: {k: caf\xe9}\n").unwrap();
        // A name that is not UTF-8, and a directory symlink back to the root.
        std::fs::write(
            dir.join(std::ffi::OsStr::from_bytes(b"bad\xffname.yaml")),
            cm.replace("name: ca", "name: odd"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("sub/up")).unwrap();

        let started = std::time::Instant::now();
        config.reload().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        let errors = config.errors();
        let reason = |name: &str| {
            errors
                .iter()
                .find(|e| e.file.file_name().is_some_and(|f| f == name))
                .unwrap_or_else(|| panic!("no error for {name}: {errors:?}"))
                .reason
                .clone()
        };
        assert!(reason("fifo.yaml").contains("not a regular file (a FIFO)"), "{errors:?}");
        assert!(reason("zero.yaml").contains("not a regular file (a device)"), "{errors:?}");
        assert!(reason("loop.yaml").contains("cannot read"), "{errors:?}");
        assert!(reason("big.yaml").contains("bytes are not read"), "{errors:?}");
        assert!(reason("latin1.yaml").contains("not UTF-8"), "{errors:?}");
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert_eq!(config.unusable().len(), 5);
        // The five kept their last good ConfigMaps; the oddly named file added one.
        assert_eq!(held(&config), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
