//! The intermediate representation: what Envoy must do, in plain Rust, without Envoy's types.
//!
//! [`crate::resolve`] builds it from Kubernetes objects with all Gateway API semantics applied;
//! [`crate::xds`] turns it into Envoy resources. Policy logic is tested on these values.

use crate::objects::ObjectKey;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ir {
    pub listeners: Vec<Listener>,
    /// By cluster name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Trust bundles by secret name. Names are content-addressed (see [`ca_secret_name`]).
    pub ca_bundles: BTreeMap<String, CaBundle>,
    /// Gateway client certificates by secret name (content-addressed too).
    pub client_certificates: BTreeMap<String, ClientCertificate>,
    /// Certificates HTTPS listeners present, by secret name
    /// ([`backendtls_contract::listener_certificate_secret_name`]: one per Kubernetes Secret, so
    /// a rotation changes the secret's content and nothing else).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listener_certificates: BTreeMap<String, ClientCertificate>,
}

/// What an incremental resolution changed in the IR ([`crate::resolve::Incremental::changes`]).
/// Everything else is as the last resolution left it, so the translator neither digests nor
/// encodes it again. Listener-level fields (ports, TLS chains, certificates) never change in such
/// a resolution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IrChanges {
    /// Clusters added, removed or changed, by name.
    pub clusters: BTreeSet<String>,
    /// Hostnames whose virtual hosts were added, removed or changed, on any listener.
    pub hosts: BTreeSet<String>,
}

/// One Envoy listener: a port, with every programmed Gateway listener on it.
#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct Listener {
    /// Also the name of its route configuration.
    pub name: String,
    pub port: u16,
    pub virtual_hosts: Vec<VirtualHost>,
    /// HTTPS: TLS is terminated, with one filter chain per Gateway listener hostname chosen by
    /// SNI. Empty for plaintext HTTP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsChain>,
    /// Protocol TLS (TLSRoutes on `mode: Terminate` listeners): TLS is terminated with one filter
    /// chain per SNI name, and each chain's bytes go to its backends over TCP. Never empty on such
    /// a port (a port without routes gets one chain that closes every connection); empty on HTTP
    /// and HTTPS ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_proxies: Vec<TcpProxy>,
}

/// One TLS listener filter chain: the SNI names it matches, the certificate it presents and the
/// backends that receive the decrypted stream (over the backend's cluster, so under its
/// BackendTLSPolicy).
#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct TcpProxy {
    /// A route hostname (may be `*.example.com`); None: any SNI, or none.
    pub hostname: Option<String>,
    /// Secret names in [`Ir::listener_certificates`] of the Gateway listener that takes this name.
    pub certificates: Vec<String>,
    /// The TLSRoute (`namespace/name`); None on the chain of a port no route is attached to.
    pub route: Option<String>,
    /// Weighted clusters, never empty: a missing or invalid backend's share goes to
    /// [`crate::resolve::INVALID_BACKEND_CLUSTER`], which has no hosts, so those connections are
    /// closed.
    pub clusters: Vec<WeightedCluster>,
}

/// One HTTPS listener's filter chain: the SNI names it matches and the certificates it presents.
#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct TlsChain {
    /// The Gateway listener's hostname (may be `*.example.com`); None: the default chain, for
    /// any other SNI or none.
    pub hostname: Option<String>,
    /// Secret names in [`Ir::listener_certificates`], in `certificateRefs` order.
    pub certificates: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// In match order: the first route that matches wins.
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct Route {
    /// `<namespace>/<route>/rule/<i>/match/<j>`.
    pub name: String,
    pub path: PathMatch,
    /// Every one must match (AND), as must the path and the method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// What the rule's filters and timeouts do besides choosing the action.
    #[serde(skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    pub action: RouteAction,
}

#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub enum PathMatch {
    /// Gateway API `PathPrefix`: matches whole path segments.
    Prefix(String),
    Exact(String),
    /// RE2 syntax, matching the whole path.
    Regex(String),
}

/// A header (name lower-cased: header names are case-insensitive) or query parameter (name as
/// written: case-sensitive) match.
#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub struct ValueMatch {
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    /// RE2 syntax, matching the whole value.
    Regex(String),
}

#[derive(Clone, Debug, Default, PartialEq, Hash, Eq, Serialize)]
pub struct RouteFilters {
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// `URLRewrite` (only with [`RouteAction::Forward`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Clusters that receive a copy of each request (`RequestMirror`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// `timeouts.request`, in milliseconds; 0 disables the timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// `timeouts.backendRequest`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_request_timeout_ms: Option<u64>,
}

impl RouteFilters {
    pub fn is_empty(&self) -> bool {
        self == &RouteFilters::default()
    }
}

/// A route's [`RouteFilters`], boxed only when there are any: most routes have none, and the
/// struct is 248 bytes in every route. Reads as a `RouteFilters` (empty when there are none);
/// hashes, compares and serializes as one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Filters(Option<Box<RouteFilters>>);

static NO_FILTERS: RouteFilters = RouteFilters {
    request_headers: HeaderEdits { set: Vec::new(), add: Vec::new(), remove: Vec::new() },
    response_headers: HeaderEdits { set: Vec::new(), add: Vec::new(), remove: Vec::new() },
    rewrite: None,
    mirrors: Vec::new(),
    request_timeout_ms: None,
    backend_request_timeout_ms: None,
};

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl From<RouteFilters> for Filters {
    fn from(filters: RouteFilters) -> Self {
        Filters(Some(Box::new(filters)).filter(|f| !f.is_empty()))
    }
}

impl std::ops::Deref for Filters {
    type Target = RouteFilters;
    fn deref(&self) -> &RouteFilters {
        self.0.as_deref().unwrap_or(&NO_FILTERS)
    }
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl std::hash::Hash for Filters {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl Serialize for Filters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// Header names lower-cased; `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Hash, Eq, Serialize)]
pub struct HeaderEdits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self == &HeaderEdits::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Hash, Eq, Serialize)]
pub struct Rewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub enum PathRewrite {
    Full(String),
    /// Replaces the matched `PathPrefix` (only with [`PathMatch::Prefix`]).
    Prefix(String),
}

/// `RequestRedirect`: unset parts keep the request's.
#[derive(Clone, Debug, Default, PartialEq, Hash, Eq, Serialize)]
pub struct Redirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Explicit port; with a scheme and no port, the scheme's well-known port (left out of the
    /// `Location`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301 or 302.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub enum RouteAction {
    Forward(Vec<WeightedCluster>),
    /// A local answer: missing backends (500) or a backend whose policy cannot be met (503).
    Respond {
        status: u32,
        body: String,
    },
    /// Boxed: the largest variant, and the rarest.
    Redirect(Box<Redirect>),
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// One Service port.
#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct Cluster {
    pub name: String,
    pub service: ObjectKey,
    pub port: u16,
    pub endpoints: Endpoints,
    /// Present when a BackendTLSPolicy governs this port.
    pub tls: Option<BackendTls>,
    /// The HTTP version spoken to the backend.
    #[serde(skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
}

/// How a cluster speaks to its backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (or what the policy's ALPN option negotiates).
    #[default]
    Http1,
    /// HTTP/2 only: a GRPCRoute backend, or a Service port with appProtocol `kubernetes.io/h2c`
    /// (GEP-1911). Over TLS it offers ALPN `h2`; without TLS it is h2c with prior knowledge.
    Http2,
}

impl UpstreamProtocol {
    pub fn is_default(&self) -> bool {
        *self == UpstreamProtocol::Http1
    }
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub enum Endpoints {
    /// Ready addresses from EndpointSlices, with the slice's port number.
    Static(Vec<SocketAddr>),
    /// `type: ExternalName`: resolved by Envoy through DNS.
    Dns { hostname: String, port: u16 },
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub struct BackendTls {
    pub policy: ObjectKey,
    /// Always the SNI; the identity to verify unless `subject_alt_names` is non-empty.
    pub hostname: String,
    pub subject_alt_names: Vec<SubjectAltName>,
    pub params: TlsParams,
    pub trust: Trust,
    /// Secret name of the certificate Envoy presents to the backend (the Gateway's
    /// `spec.tls.backend.clientCertificateRef`), if any.
    pub client_certificate: Option<String>,
}

/// TLS settings from the policy's `spec.options`.
#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub struct TlsParams {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher suites by BoringSSL name; empty means Envoy's defaults.
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered to the backend (`h2`, `http/1.1`); empty means none.
    pub alpn: Vec<String>,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            alpn: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Hash, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl BackendTls {
    /// The identities a backend certificate may present: any one of them suffices.
    pub fn identities(&self) -> Vec<SubjectAltName> {
        if self.subject_alt_names.is_empty() {
            vec![SubjectAltName::Hostname(self.hostname.clone())]
        } else {
            self.subject_alt_names.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Hash, Eq, Serialize)]
pub enum SubjectAltName {
    /// A DNS name; may start with `*.`.
    Hostname(String),
    Uri(String),
}

#[derive(Clone, Debug, PartialEq, Hash, Serialize)]
pub enum Trust {
    /// Verify against the bundle stored under this secret name in [`Ir::ca_bundles`].
    Ca { secret: String },
    /// The policy applies but cannot be met: fail closed.
    Unusable { reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaBundle {
    /// PEM, one or more certificates.
    pub pem: String,
}

/// A certificate chain and key Envoy presents to backends. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Serialize)]
pub struct ClientCertificate {
    /// The Secret it came from.
    pub source: ObjectKey,
    pub cert_pem: String,
    /// Never serialized (golden files, status); the secret name covers its content.
    #[serde(skip)]
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("source", &self.source)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Secret names carry a digest of their content, so that a CA change is a change of the
/// cluster's configuration. Envoy keeps pooled upstream connections when only an SDS secret
/// changes; a changed cluster is rebuilt and its old connections drained, so every request after
/// the change is verified against the new trust.
pub fn ca_secret_name(pem: &str) -> String {
    format!("backendtls_ca_{}", crate::digest::parts_hex(&[pem.as_bytes()], 8))
}

/// Content-addressed like [`ca_secret_name`]; the key is part of the content.
pub fn client_certificate_secret_name(cert_pem: &str, key_pem: &str) -> String {
    format!(
        "backendtls_client_{}",
        crate::digest::parts_hex(&[cert_pem.as_bytes(), key_pem.as_bytes()], 8)
    )
}
