//! Gateway API semantics: from the objects in a [`Store`] to the [`Ir`] and each policy's status.
//!
//! Order of work: BackendTLSPolicies first (validate, resolve CA refs, settle conflicts), then
//! Gateways and the HTTPRoutes attached to them; each backendRef becomes a cluster governed by the
//! policy that targets its Service port, if any.

mod gateways;
mod policy;
mod routes;
/// Public for the fuzz targets (`fuzz/`): CA bundle and key-pair parsing.
#[doc(hidden)]
pub mod trust;

pub use policy::option_keys;

use crate::ir::*;
use crate::objects::ObjectKey;
use crate::objects::{self, Gateway, HttpRoute, ServicePort};
use crate::status::{Condition, GatewayReport, PolicyReport, RouteReport};
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_class: None,
            system_ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
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
    pub gateways: Vec<GatewayReport>,
    /// Routes that name a Gateway this loader serves, with their `status.parents`.
    pub routes: Vec<RouteReport>,
    pub problems: Vec<Problem>,
}

pub fn resolve(store: &Store, options: &Options) -> Resolution {
    let mut policies = PolicyIndex::build(store, options);
    let mut problems = Vec::new();
    let mut ir = Ir::default();
    let mut gateways = Vec::new();

    for (gateway_key, gateway) in &store.gateways {
        if let Some(class) = &options.gateway_class {
            if &gateway.spec.gateway_class_name != class {
                continue;
            }
        }
        let (client_certificate, report) =
            gateway_client_certificate(store, gateway_key, gateway, &mut ir);
        gateways.push(report);
        let context = GatewayContext { key: gateway_key, gateway, client_certificate };
        for listener in gateway_listeners(gateway_key, gateway, &mut problems) {
            let listener =
                build_listener(store, &context, listener, &mut policies, &mut ir, &mut problems);
            ir.listeners.push(listener);
        }
    }
    // Two Gateways cannot share a port on one Envoy: the first by namespace/name keeps it.
    let mut ports = BTreeMap::new();
    ir.listeners.retain(|l| match ports.insert(l.port, l.name.clone()) {
        None => true,
        Some(first) => {
            ports.insert(l.port, first.clone());
            problems.push(Problem {
                object: format!("Envoy listener {}", l.name),
                reason: format!("port {} is already used by {first}; not served", l.port),
            });
            false
        }
    });
    for cluster in ir.clusters.values() {
        if let Some(BackendTls { trust: Trust::Ca { secret }, .. }) = &cluster.tls {
            let pem = policies.bundles[secret].to_string();
            ir.ca_bundles.insert(secret.clone(), CaBundle { pem });
        }
    }
    let routes = route_reports(store, options);
    Resolution { ir, policies: policies.reports(), gateways, routes, problems }
}

/// `status.parents` of every HTTPRoute, one entry per parentRef naming a Gateway this loader
/// serves: `Accepted` (True when attached to one of its listeners; False with `UnsupportedValue`
/// when the route uses a field the loader does not implement) and `ResolvedRefs` from
/// [`routes::route_conditions`]. Minimal until Gateway attachment status takes it over.
fn route_reports(store: &Store, options: &Options) -> Vec<RouteReport> {
    use crate::status::{ParentReference, RouteParentStatus, CONTROLLER_NAME};
    let served = |key: &ObjectKey| {
        store.gateways.get(key).filter(|g| {
            options.gateway_class.as_ref().is_none_or(|c| &g.spec.gateway_class_name == c)
        })
    };
    let mut reports = Vec::new();
    for (route_key, route) in &store.http_routes {
        let generation = route.metadata.generation();
        let (resolved, refusal) = route_conditions(store, route_key, route);
        let mut parents = Vec::new();
        for parent in &route.spec.parent_refs {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            let namespace = parent.namespace.as_deref().unwrap_or(&route_key.namespace);
            let gateway_key = ObjectKey::new(namespace, &parent.name);
            let Some(gateway) =
                served(&gateway_key).filter(|_| group == GATEWAY_GROUP && kind == "Gateway")
            else {
                continue;
            };
            let accepted = refusal.clone().unwrap_or_else(|| {
                let attached =
                    gateway_listeners(&gateway_key, gateway, &mut Vec::new()).iter().any(|l| {
                        !attached_hostnames(store, &gateway_key, gateway, l, route_key, route)
                            .is_empty()
                    });
                if attached {
                    Condition::new("Accepted", true, "Accepted", "Route is accepted".into())
                } else {
                    Condition::new(
                        "Accepted",
                        false,
                        "NotAllowedByListeners",
                        "No listener of the Gateway accepts this route".into(),
                    )
                }
                .observed(generation)
            });
            parents.push(RouteParentStatus {
                parent_ref: ParentReference {
                    group: group.to_string(),
                    kind: kind.to_string(),
                    namespace: namespace.to_string(),
                    name: parent.name.clone(),
                    section_name: parent.section_name.clone(),
                    port: parent.port,
                },
                controller_name: CONTROLLER_NAME,
                conditions: vec![accepted, resolved.clone()],
            });
        }
        if !parents.is_empty() {
            reports.push(RouteReport {
                kind: "HTTPRoute",
                namespace: route_key.namespace.clone(),
                name: route_key.name.clone(),
                generation,
                parents,
            });
        }
    }
    reports
}

/// What routes need to know of the Gateway they are attached to.
struct GatewayContext<'a> {
    key: &'a ObjectKey,
    gateway: &'a Gateway,
    /// Secret name of the Gateway's backend client certificate, when it has a valid one.
    client_certificate: Option<String>,
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
