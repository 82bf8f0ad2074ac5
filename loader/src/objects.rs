//! Typed Kubernetes objects, as much of each kind as the loader reads.
//!
//! Field names follow the Kubernetes and Gateway API schemas (camelCase); fields the loader does not
//! use are ignored. Optional fields stay `Option` so that "unset" and "empty" remain distinct where
//! the spec gives them different meanings (e.g. a policy `sectionName`).

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

/// What names an object: its namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey { namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An object read from a file, tagged with its kind.
#[derive(Clone, Debug, PartialEq)]
/// Objects are shared (`Arc`) between the per-file cache and every [`Store`] built from it, so a
/// rebuild does not copy them.
pub enum Object {
    Gateway(Arc<Gateway>),
    GatewayClass(Arc<GatewayClass>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    TlsRoute(Arc<TlsRoute>),
    BackendTlsPolicy(Arc<BackendTlsPolicy>),
    ReferenceGrant(Arc<ReferenceGrant>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
    Namespace(Arc<Namespace>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Gateway(_) => "Gateway",
            Object::GatewayClass(_) => "GatewayClass",
            Object::HttpRoute(_) => "HTTPRoute",
            Object::GrpcRoute(_) => "GRPCRoute",
            Object::TlsRoute(_) => "TLSRoute",
            Object::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Object::ReferenceGrant(_) => "ReferenceGrant",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Namespace(_) => "Namespace",
        }
    }

    pub(crate) fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Gateway(o) => &o.metadata,
            Object::GatewayClass(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TlsRoute(o) => &o.metadata,
            Object::BackendTlsPolicy(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    /// Namespaces and GatewayClasses are cluster-scoped: their key has an empty namespace.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        match self {
            Object::Namespace(_) | Object::GatewayClass(_) => ObjectKey::new("", &meta.name),
            _ => ObjectKey::new(meta.namespace(), &meta.name),
        }
    }
}

/// A field of the schema that the loader does not implement or use: only whether it is set
/// matters (resolving refuses a route that sets one, naming the field), so its value is read and
/// dropped. An `Option<Opaque>` takes one byte where an `Option<serde_json::Value>` took 32, and
/// an empty `Vec<Opaque>` never allocates.
pub type Opaque = serde::de::IgnoredAny;

/// The string maps of Kubernetes objects (labels, ConfigMap and Secret data): sorted pairs.
/// Most hold one to three entries, and the loader keeps tens of thousands of them, where a
/// `BTreeMap` spends a node of about 500 bytes on even one entry. Long values (certificates) are
/// shared between objects that hold the same text: thousands of ConfigMaps commonly carry the
/// same CA bundle. Keys are always shared: a few distinct ones (`kubernetes.io/service-name`,
/// `ca.crt`) stand in tens of thousands of maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StringMap(Vec<(Arc<str>, Arc<str>)>);

impl StringMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn insert(&mut self, key: String, value: &str) {
        match self.0.binary_search_by(|(k, _)| (**k).cmp(key.as_str())) {
            Ok(at) => self.0[at].1 = value.into(),
            Err(at) => self.0.insert(at, (intern_key(key), value.into())),
        }
    }
}

impl std::ops::Index<&str> for StringMap {
    type Output = str;
    fn index(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("no key {key}"))
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Sorted and free of duplicates by way of the map.
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Ok(StringMap(map.into_iter().map(|(k, v)| (intern_key(k), intern(v))).collect()))
    }
}

/// Values at least this long are shared by content (see [`StringMap`]).
const SHARED_VALUE_MIN_LEN: usize = 256;

/// The shared long values: each is kept while an object holds it ([`release_unused_values`]).
static SHARED_VALUES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

fn intern(value: String) -> Arc<str> {
    if value.len() < SHARED_VALUE_MIN_LEN {
        return value.into();
    }
    shared_in(&SHARED_VALUES, value)
}

/// The shared keys of [`StringMap`]s.
static SHARED_KEYS: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

fn intern_key(key: String) -> Arc<str> {
    shared_in(&SHARED_KEYS, key)
}

/// The copy of `text` that `set` holds, added when it has none.
fn shared_in(set: &Mutex<HashSet<Arc<str>>>, text: String) -> Arc<str> {
    let mut shared = set.lock().unwrap();
    if let Some(existing) = shared.get(text.as_str()) {
        return existing.clone();
    }
    let text: Arc<str> = text.into();
    shared.insert(text.clone());
    text
}

/// Forgets shared values and keys no object holds any more; called after every reload of the
/// sources.
pub fn release_unused_values() {
    SHARED_VALUES.lock().unwrap().retain(|v| Arc::strong_count(v) > 1);
    SHARED_KEYS.lock().unwrap().retain(|k| Arc::strong_count(k) > 1);
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// A `namespace: null` is an error, not an unset namespace: the API server refuses it, and
    /// `source` refuses it before reading the object (`metadata.namespace must be a string`).
    #[serde(default, deserialize_with = "some_string")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub generation: Option<i64>,
    /// RFC 3339, as the API server writes it (`2024-05-01T10:00:00Z`). Objects from files may
    /// omit it; they then sort after every object that has one.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

/// A list with room for exactly its items. Read straight from YAML (`source`'s direct path), a
/// list's length is not known until its end, and a `Vec` grown item by item keeps room for four
/// (three empty `ParentRef`s, `BackendRef`s, ... in every route, about 2.5 KB per backend).
fn exact<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let mut items = Vec::<T>::deserialize(d)?;
    items.shrink_to_fit();
    Ok(items)
}

/// A field that, when present, must be a string (null included: it is not "unset").
fn some_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl ObjectMeta {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
    pub fn generation(&self) -> i64 {
        self.generation.unwrap_or(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway API

/// A GatewayClass: the loader serves the classes whose `controllerName` is
/// [`crate::status::CONTROLLER_NAME`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GatewayClass {
    pub metadata: ObjectMeta,
    pub spec: GatewayClassSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default, deserialize_with = "exact")]
    pub listeners: Vec<GatewayListener>,
    #[serde(default)]
    pub tls: Option<GatewayTls>,
    #[serde(default)]
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// `spec.infrastructure`: the loader provisions no infrastructure and takes no parameters.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayInfrastructure {
    /// Any reference makes the Gateway `Accepted=False` `InvalidParameters`.
    #[serde(default)]
    pub parameters_ref: Option<Opaque>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GatewayTls {
    #[serde(default)]
    pub backend: Option<GatewayBackendTls>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayBackendTls {
    #[serde(default)]
    pub client_certificate_ref: Option<SecretObjectReference>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SecretObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

/// A listener's `tls`: how it terminates TLS and with which certificates.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "exact")]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Implementation-specific options; none is implemented.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds the listener accepts; unset means every kind its protocol supports.
    #[serde(default)]
    pub kinds: Option<Vec<RouteGroupKindRef>>,
}

/// An `allowedRoutes.kinds[]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RouteGroupKindRef {
    /// Defaults to `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "exact")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, deserialize_with = "exact")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Kubernetes label-selector semantics (matchLabels AND matchExpressions).
    pub fn matches(&self, labels: &StringMap) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator.as_str() {
                    "In" => value.is_some_and(|v| req.values.iter().any(|x| x == v)),
                    "NotIn" => value.is_none_or(|v| !req.values.iter().any(|x| x == v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

/// The HTTPRoute spec types refuse unknown fields, as the API server's schema does. Fields of the
/// schema the loader does not implement are read as [`Opaque`] values, so that
/// resolving can refuse the route with `Accepted=False` (`UnsupportedValue`) naming the field
/// rather than ignore it (see `resolve::routes::unsupported`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, deserialize_with = "exact")]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, deserialize_with = "exact")]
    pub hostnames: Vec<String>,
    #[serde(default, deserialize_with = "exact")]
    pub rules: Vec<HttpRouteRule>,
    /// Experimental (`useDefaultGateways`): not implemented.
    #[serde(default)]
    pub use_default_gateways: Option<Opaque>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "exact")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, deserialize_with = "exact")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, deserialize_with = "exact")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Not implemented.
    #[serde(default)]
    pub retry: Option<Opaque>,
    /// Not implemented.
    #[serde(default)]
    pub session_persistence: Option<Opaque>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    #[serde(default, deserialize_with = "exact")]
    pub headers: Vec<HttpValueMatch>,
    #[serde(default, deserialize_with = "exact")]
    pub query_params: Vec<HttpValueMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `PathPrefix` (the default), `Exact` or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HttpHeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HttpHeaderFilter>,
    #[serde(default)]
    pub request_mirror: Option<HttpRequestMirror>,
    #[serde(default)]
    pub request_redirect: Option<HttpRequestRedirect>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<HttpUrlRewrite>,
    /// Not implemented.
    #[serde(default)]
    pub extension_ref: Option<Opaque>,
    /// Not implemented.
    #[serde(default)]
    pub cors: Option<Opaque>,
    /// Not implemented.
    #[serde(default)]
    pub external_auth: Option<Opaque>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpHeaderFilter {
    #[serde(default, deserialize_with = "exact")]
    pub set: Vec<HttpHeader>,
    #[serde(default, deserialize_with = "exact")]
    pub add: Vec<HttpHeader>,
    #[serde(default, deserialize_with = "exact")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRequestMirror {
    pub backend_ref: BackendRef,
    /// Not implemented.
    #[serde(default)]
    pub percent: Option<Opaque>,
    /// Not implemented.
    #[serde(default)]
    pub fraction: Option<Opaque>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRequestRedirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<HttpPathModifier>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpUrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<HttpPathModifier>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    /// Per-backend filters: not implemented.
    #[serde(default)]
    pub filters: Vec<Opaque>,
}

// ---------------------------------------------------------------------------------------------
// GRPCRoute (gateway.networking.k8s.io/v1)

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

/// Strict like [`HttpRouteSpec`]: unknown fields are file errors; schema fields the loader does
/// not implement are read as opaque values so that resolving refuses the route naming them
/// (see `resolve::grpc_routes::unsupported`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default, deserialize_with = "exact")]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, deserialize_with = "exact")]
    pub hostnames: Vec<String>,
    #[serde(default, deserialize_with = "exact")]
    pub rules: Vec<GrpcRouteRule>,
    /// Experimental (`useDefaultGateways`): not implemented.
    #[serde(default)]
    pub use_default_gateways: Option<Opaque>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "exact")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, deserialize_with = "exact")]
    pub filters: Vec<GrpcRouteFilter>,
    /// The same shape as an HTTPRoute's (`filters` per backend are not implemented).
    #[serde(default, deserialize_with = "exact")]
    pub backend_refs: Vec<BackendRef>,
    /// Not implemented.
    #[serde(default)]
    pub session_persistence: Option<Opaque>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// `Exact` (the default) or `RegularExpression`, as an HTTPRoute's header matches.
    #[serde(default, deserialize_with = "exact")]
    pub headers: Vec<HttpValueMatch>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HttpHeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HttpHeaderFilter>,
    /// Not implemented for GRPCRoute.
    #[serde(default)]
    pub request_mirror: Option<Opaque>,
    /// Not implemented.
    #[serde(default)]
    pub extension_ref: Option<Opaque>,
}

// ---------------------------------------------------------------------------------------------
// TLSRoute (gateway.networking.k8s.io/v1, v1alpha3, v1alpha2: the same fields)

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TlsRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TlsRouteSpec,
}

/// Strict like [`HttpRouteSpec`]: unknown fields are file errors; `useDefaultGateways` (an
/// experimental field of the schema) is read so that resolving can refuse the route naming it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteSpec {
    #[serde(default, deserialize_with = "exact")]
    pub parent_refs: Vec<ParentRef>,
    /// SNI names; matched against the listener's hostname like an HTTPRoute's.
    #[serde(default, deserialize_with = "exact")]
    pub hostnames: Vec<String>,
    #[serde(default, deserialize_with = "exact")]
    pub rules: Vec<TlsRouteRule>,
    /// Experimental (`useDefaultGateways`): not implemented.
    #[serde(default)]
    pub use_default_gateways: Option<Opaque>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    /// A TLSRoute's backendRefs are plain `BackendRef`s: no `filters` (a file error here).
    #[serde(default, deserialize_with = "plain_backend_refs")]
    pub backend_refs: Vec<BackendRef>,
}

/// A `BackendRef` of the schema (no per-backend filters), read strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainBackendRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    weight: Option<u32>,
}

fn plain_backend_refs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<BackendRef>, D::Error> {
    let refs = Vec::<PlainBackendRef>::deserialize(d)?;
    Ok(refs
        .into_iter()
        .map(|r| BackendRef {
            group: r.group,
            kind: r.kind,
            name: r.name,
            namespace: r.namespace,
            port: r.port,
            weight: r.weight,
            filters: Vec::new(),
        })
        .collect())
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BackendTlsPolicy {
    pub metadata: ObjectMeta,
    pub spec: BackendTlsPolicySpec,
    /// Set when the document looked like a BackendTLSPolicy but could not be read as one (bad
    /// field, unsupported apiVersion, bad name): the reason. Such a policy keeps only what could
    /// be salvaged of its targets, and fails them closed (see `source::salvage_policy`).
    #[serde(skip)]
    pub malformed: Option<String>,
}

/// The policy structs refuse unknown fields: a misspelt field in a security policy must be an
/// error, not silently ignored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicySpec {
    #[serde(deserialize_with = "exact")]
    pub target_refs: Vec<PolicyTargetRef>,
    pub validation: BackendTlsValidation,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsValidation {
    #[serde(default, deserialize_with = "exact")]
    pub ca_certificate_refs: Vec<LocalObjectRef>,
    #[serde(default, rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    pub hostname: String,
    #[serde(default, deserialize_with = "exact")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltName {
    /// `Hostname` or `URI`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReferenceGrant {
    pub metadata: ObjectMeta,
    pub spec: ReferenceGrantSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReferenceGrantSpec {
    #[serde(deserialize_with = "exact")]
    pub from: Vec<ReferenceGrantFrom>,
    #[serde(deserialize_with = "exact")]
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReferenceGrantFrom {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ReferenceGrantTo {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Kubernetes core and discovery

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (the default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "exact")]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub external_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<Opaque>,
    #[serde(default)]
    pub protocol: Option<String>,
    /// `appProtocol`: `kubernetes.io/h2c` (GEP-1911) makes the cluster speak HTTP/2.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: Option<String>,
    #[serde(default, deserialize_with = "exact")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, deserialize_with = "exact")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Endpoint {
    #[serde(default, deserialize_with = "exact")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
}

impl Endpoint {
    /// Kubernetes: an unset `ready` means ready.
    pub fn is_ready(&self) -> bool {
        self.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: StringMap,
}

/// A Secret's values may be private keys: they never appear in its parse errors or its `Debug`
/// output (see [`secret`]).
#[derive(Clone, PartialEq)]
pub struct Secret {
    pub metadata: ObjectMeta,
    /// Base64-encoded values, as in the API; checked to decode when parsed.
    pub data: StringMap,
    /// Plain values; the API server merges them into `data` on write, so the loader does too.
    pub string_data: StringMap,
    /// `type`.
    pub kind: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("data", &secret::Redacted(&self.data))
            .field("string_data", &secret::Redacted(&self.string_data))
            .field("kind", &self.kind)
            .finish()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        secret::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// Parsing Secrets without echoing their values: serde's messages quote the offending value
/// (`invalid type: string "-----BEGIN PRIVATE KEY-----...", expected a map`), so the Secret's
/// fields are checked by hand and errors name the field and the expected shape only.
mod secret {
    use super::{intern, intern_key, ObjectMeta, Secret, StringMap};
    use serde::Deserialize;
    use serde_json::Value;

    /// A [`StringMap`] shown by its keys only.
    pub struct Redacted<'a>(pub &'a StringMap);

    impl std::fmt::Debug for Redacted<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_map().entries(self.0 .0.iter().map(|(key, _)| (key, "<redacted>"))).finish()
        }
    }

    /// Why a Secret cannot be read; never quotes a value.
    #[derive(Debug, thiserror::Error)]
    pub enum SecretError {
        /// The shape of what stands there instead (e.g. `a list`).
        #[error("a Secret must be a map, not {0}")]
        NotAMap(&'static str),
        #[error("missing field `metadata`")]
        NoMetadata,
        /// serde's message, its quoted values left out.
        #[error("metadata: {0}")]
        Metadata(String),
        #[error("data.{0} is not valid base64 (plain text such as PEM goes in stringData)")]
        NotBase64(String),
        #[error("type must be a string, not {0}")]
        TypeNotAString(&'static str),
        /// `field` is `data` or `stringData`.
        #[error("{field} must be a map of strings, not {shape}")]
        NotAStringMap { field: &'static str, shape: &'static str },
        #[error("{field}.{key} must be a string, not {shape}")]
        NotAString { field: &'static str, key: String, shape: &'static str },
    }

    pub fn from_value(value: Value) -> Result<Secret, SecretError> {
        let Value::Object(mut fields) = value else {
            return Err(SecretError::NotAMap(shape(&value)));
        };
        let metadata = fields.remove("metadata").ok_or(SecretError::NoMetadata)?;
        let metadata = ObjectMeta::deserialize(metadata)
            .map_err(|e| SecretError::Metadata(without_values(&e.to_string())))?;
        let data = string_map(fields.remove("data"), "data", |key, value| {
            use base64::Engine;
            // As the loader decodes it (`resolve::trust::secret_value`).
            match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
                Ok(_) => Ok(()),
                Err(_) => Err(SecretError::NotBase64(key.to_string())),
            }
        })?;
        let string_data = string_map(fields.remove("stringData"), "stringData", |_, _| Ok(()))?;
        let kind = match fields.remove("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind)) => Some(kind),
            Some(other) => return Err(SecretError::TypeNotAString(shape(&other))),
        };
        Ok(Secret { metadata, data, string_data, kind })
    }

    /// `data` or `stringData`: absent or null is empty; otherwise a map of strings, each value
    /// passing `check`.
    fn string_map(
        value: Option<Value>,
        field: &'static str,
        check: impl Fn(&str, &str) -> Result<(), SecretError>,
    ) -> Result<StringMap, SecretError> {
        let entries = match value {
            None | Some(Value::Null) => return Ok(StringMap::default()),
            Some(Value::Object(entries)) => entries,
            Some(other) => {
                return Err(SecretError::NotAStringMap { field, shape: shape(&other) });
            }
        };
        let mut map = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let Value::String(value) = value else {
                return Err(SecretError::NotAString { field, key, shape: shape(&value) });
            };
            check(&key, &value)?;
            map.push((intern_key(key), intern(value)));
        }
        map.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(StringMap(map))
    }

    fn shape(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "a map",
        }
    }

    /// A serde message with what it quotes (`"..."` and `` `...` ``) left out: `invalid type:
    /// string "x", expected a map` becomes `invalid type: string, expected a map`.
    pub fn without_values(message: &str) -> String {
        let mut out = String::with_capacity(message.len());
        let mut chars = message.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    let mut escaped = false;
                    for c in chars.by_ref() {
                        match c {
                            '\\' if !escaped => escaped = true,
                            '"' if !escaped => break,
                            _ => escaped = false,
                        }
                    }
                }
                '`' => {
                    for c in chars.by_ref() {
                        if c == '`' {
                            break;
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.replace(" ,", ",").replace("  ", " ").trim_end().to_string()
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}
