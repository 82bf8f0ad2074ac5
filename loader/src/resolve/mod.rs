//! Gateway API semantics: from the objects in a [`Store`] to the [`Ir`] and each policy's status.
//!
//! Order of work: BackendTLSPolicies first (validate, resolve CA refs, settle conflicts), then
//! Gateways and the HTTPRoutes, GRPCRoutes and TLSRoutes attached to them; each backendRef
//! becomes a cluster governed by the policy that targets its Service port, if any.

mod gateways;
mod grpc_routes;
mod incremental;
mod policy;
mod routes;
mod tls_routes;
/// Public for the fuzz targets (`fuzz/`): CA bundle and key-pair parsing.
#[doc(hidden)]
pub mod trust;

pub use incremental::{Build, Incremental};
pub use policy::option_keys;

use crate::ir::*;
use crate::objects::ObjectKey;
use crate::objects::{self, Gateway, HttpRoute, ServicePort};
use crate::status::{
    Condition, GatewayAddress, GatewayClassReport, GatewayReport, ListenerReport, ParentReference,
    PolicyReport, RouteGroupKind, RouteParentStatus, RouteReport,
};
use crate::store::Store;
use gateways::*;
use policy::PolicyIndex;
use routes::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A cluster without hosts that receives the weighted share of invalid backendRefs.
pub const INVALID_BACKEND_CLUSTER: &str = "backendtls_invalid_backend";

#[derive(Clone, Debug)]
pub struct Options {
    /// Serve only Gateways of this class; every Gateway when unset.
    pub gateway_class: Option<String>,
    /// The trust bundle behind `wellKnownCACertificates: System`.
    pub system_ca_bundle: PathBuf,
    /// The address Envoy binds Gateway listeners to, reported in each Gateway's
    /// `status.addresses`.
    pub listener_address: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_class: None,
            system_ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            listener_address: None,
        }
    }
}

/// A problem that is not about one policy: a Gateway or route the loader cannot serve as written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub ir: Ir,
    pub policies: Vec<PolicyReport>,
    /// The GatewayClasses of this loader's controller.
    pub gateway_classes: Vec<GatewayClassReport>,
    pub gateways: Vec<GatewayReport>,
    /// Routes that name a Gateway this loader serves, with their `status.parents`.
    pub routes: Vec<RouteReport>,
    pub problems: Vec<Problem>,
}

pub fn resolve(store: &Store, options: &Options) -> Resolution {
    resolve_observed(store, options, |_| {})
}

/// [`resolve`], showing the served Gateways (with the routes attached to each listener) to
/// `observe` at the end.
fn resolve_observed(
    store: &Store,
    options: &Options,
    observe: impl FnOnce(&[ServedGateway<'_>]),
) -> Resolution {
    let mut policies = PolicyIndex::build(store, options);
    let mut problems = Vec::new();
    let mut ir = Ir::default();

    let mut served: Vec<ServedGateway<'_>> = store
        .gateways
        .iter()
        .filter(|(_, gateway)| serves_class(store, options, &gateway.spec.gateway_class_name))
        .map(|(key, gateway)| serve_gateway(store, key, gateway, &mut ir))
        .collect();
    // Precedence between Gateways that share a port: the older, then by namespace/name.
    served.sort_by(|a, b| {
        let created = |g: &ServedGateway<'_>| {
            let t = g.gateway.metadata.creation_timestamp.as_deref();
            (t.is_none(), t.map(str::to_string))
        };
        created(a).cmp(&created(b)).then_with(|| a.key.cmp(b.key))
    });
    mark_conflicts(&mut served);
    let (routes, attachments) = attach_routes(store, &mut served, gateways::route_conditions);
    let listeners =
        build_listeners(store, &served, &attachments, &mut policies, &mut ir, &mut problems);
    ir.listeners = listeners;
    // Inserted one at a time, the map's nodes are about half full; collected again, they are
    // full (a cluster is about 300 bytes: at 100,000 backends that is 15 MB).
    ir.clusters = std::mem::take(&mut ir.clusters).into_iter().collect();
    let addresses: Vec<GatewayAddress> = options
        .listener_address
        .iter()
        .map(|address| GatewayAddress {
            kind: if address.parse::<IpAddr>().is_ok() { "IPAddress" } else { "Hostname" },
            value: address.clone(),
        })
        .collect();
    let mut gateways: Vec<GatewayReport> =
        served.iter().map(|g| gateway_report(g, &addresses)).collect();
    gateways.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for cluster in ir.clusters.values() {
        if let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls {
            let pem = policies.bundles[secret].to_string();
            ir.ca_bundles.insert(secret.clone(), CaBundle { pem });
        }
    }
    let gateway_classes = gateway_class_reports(store);
    observe(&served);
    Resolution { ir, policies: policies.reports(), gateway_classes, gateways, routes, problems }
}

/// What routes need to know of the Gateway they are attached to.
struct GatewayContext<'a> {
    key: &'a ObjectKey,
    /// Secret name of the Gateway's backend client certificate, when it has a valid one.
    client_certificate: Option<String>,
}

/// `ResolvedRefs` and a refusal (see [`routes::route_conditions`]) for a route of any kind.
fn any_route_conditions(
    store: &Store,
    id: RouteId<'_>,
    route: AnyRoute<'_>,
) -> (Condition, Option<Condition>) {
    match route {
        AnyRoute::Http(r) => routes::route_conditions(store, id.key, r),
        AnyRoute::Grpc(r) => grpc_routes::route_conditions(store, id.key, r),
        AnyRoute::Tls(r) => tls_routes::route_conditions(store, id.key, r),
    }
}

/// Envoy routes for a route of any kind, with their precedence keys.
#[allow(clippy::too_many_arguments)]
fn build_routes<'a>(
    store: &Store,
    gw: &GatewayContext<'_>,
    id: RouteId<'a>,
    route: AnyRoute<'a>,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<(RouteOrder<'a>, Route)> {
    match route {
        AnyRoute::Http(r) => build_http_routes(store, gw, id.key, r, policies, ir, problems),
        AnyRoute::Grpc(r) => {
            grpc_routes::build_routes(store, gw, id.key, r, policies, ir, problems)
        }
        // Not HTTP routes: TLS listeners proxy them (`tls_routes::build_proxy`).
        AnyRoute::Tls(_) => Vec::new(),
    }
}

/// Parses one manifest text and resolves it (for the resolve modules' tests); a parse error fails
/// the test.
#[cfg(test)]
fn resolve_text(text: &str, options: &Options) -> Resolution {
    let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut store = Store::default();
    parsed.objects.into_iter().for_each(|o| store.put(o));
    resolve(&store, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route can send HTTP to a port declared UDP (Envoy connects to its endpoints over TCP):
    /// a policy naming that port is invalid, and fails it closed rather than leaving it plaintext.
    #[test]
    fn a_policy_on_a_udp_port_fails_it_closed() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec: {ports: [{name: tcp, port: 443}, {name: udp, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-x, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{name: tcp, port: 8443}, {name: udp, port: 8053}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: dns, port: 53}, {name: dns, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: "", kind: Service, name: dns, sectionName: udp}]
  validation: {hostname: example.com, wellKnownCACertificates: System}
"#;
        let parsed = crate::source::parse_file(std::path::Path::new("udp.yaml"), text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = Store::default();
        parsed.objects.into_iter().for_each(|o| store.put(o));
        let resolution = resolve(&store, &Options::default());
        let udp = &resolution.ir.clusters["kube_default_dns_53"];
        assert!(
            matches!(&udp.tls, Some(BackendTls { trust: Trust::Unusable { reason }, .. }) if reason.contains("is UDP")),
            "{udp:?}"
        );
        let tcp = &resolution.ir.clusters["kube_default_dns_443"];
        assert!(tcp.tls.is_none(), "the policy does not target the TCP port: {tcp:?}");
        let accepted = &resolution.policies[0].conditions[0];
        assert_eq!(
            (accepted.kind, accepted.status, accepted.reason),
            ("Accepted", false, "Invalid")
        );
    }
}
