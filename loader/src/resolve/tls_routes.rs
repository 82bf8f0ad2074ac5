//! TLSRoutes (gateway.networking.k8s.io/v1, v1alpha3, v1alpha2) on TLS listeners in mode
//! `Terminate`: the Gateway terminates TLS, picks the route by SNI (the route's hostnames
//! intersected with the listener's) and sends the decrypted stream over TCP to the route's
//! weighted backendRefs. A backend is the same per-Service-port cluster HTTP routes use, so a
//! BackendTLSPolicy on that port re-encrypts the stream (SNI = the policy hostname, the policy's
//! CA and names verified).
//!
//! Nothing fails open: a missing or refused backendRef's weight goes to
//! [`INVALID_BACKEND_CLUSTER`] (no hosts: Envoy closes those connections), a backend whose
//! policy cannot be met has a cluster without hosts too, and a route the loader does not
//! implement (`useDefaultGateways`, more than one rule) or a hostname the schema forbids is
//! refused as a whole (`Accepted=False`, `UnsupportedValue`, naming the field).

use super::routes::{backend_cluster, invalid_backend_cluster, RouteId, RouteKind};
use super::*;
use crate::objects::TlsRoute;

/// The weighted clusters a TLSRoute's connections go to; never empty (see the module
/// documentation). Builds each backend's cluster and records which Gateway reaches it (the
/// BackendTLSPolicy ancestors).
pub(super) fn build_proxy(
    store: &Store,
    gw: &GatewayContext<'_>,
    id: RouteId<'_>,
    route: &TlsRoute,
    policies: &mut PolicyIndex,
    ir: &mut Ir,
    problems: &mut Vec<Problem>,
) -> Vec<WeightedCluster> {
    let mut forward = Vec::new();
    let mut invalid_weight = 0;
    if unsupported(route).is_none() {
        for backend in route.spec.rules.iter().flat_map(|rule| &rule.backend_refs) {
            let weight = backend.weight.unwrap_or(1);
            if weight == 0 {
                continue;
            }
            match backend_cluster(store, gw, id, backend, policies, ir, problems) {
                Ok(cluster) => forward.push(WeightedCluster { cluster, weight }),
                Err(_) => invalid_weight += weight,
            }
        }
    }
    // No usable backend at all (none listed, every weight 0, every one invalid): every connection
    // is closed; a share of invalid ones: that share is.
    if forward.is_empty() || invalid_weight > 0 {
        forward.push(WeightedCluster {
            cluster: invalid_backend_cluster(ir),
            weight: invalid_weight.max(1),
        });
    }
    forward
}

/// The first field of `route` the loader does not implement, as `spec.<path>: <why>`. Such a
/// route is refused as a whole (`Accepted=False`, `UnsupportedValue`).
pub fn unsupported(route: &TlsRoute) -> Option<String> {
    let spec = &route.spec;
    if spec.use_default_gateways.is_some() {
        return Some("spec.useDefaultGateways is not supported".into());
    }
    // The schema's rules (the API server enforces them; files are checked here): an SNI name
    // Envoy's `server_names` takes as written.
    for (i, hostname) in spec.hostnames.iter().enumerate() {
        if !valid_hostname(hostname) {
            return Some(format!(
                "spec.hostnames[{i}]: {hostname:?} is not a valid hostname (RFC 1123, lower case, \
                 optionally with a leading `*.` label; no IP address)"
            ));
        }
    }
    // TLSRoute v1 allows exactly one rule; v1alpha2 allowed up to 16 without saying how they
    // combine (they have no matches), so more than one is refused rather than guessed at.
    if spec.rules.len() > 1 {
        return Some(format!(
            "spec.rules: {} rules are not supported; a TLSRoute takes one rule",
            spec.rules.len()
        ));
    }
    None
}

/// The TLSRoute schema's hostname rules: lower-case RFC 1123 labels, optionally after one leading
/// `*.` label, at most 253 characters, and not an IP address.
fn valid_hostname(hostname: &str) -> bool {
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    hostname.len() <= 253 && name.split('.').all(label) && name.parse::<std::net::IpAddr>().is_err()
}

/// `ResolvedRefs` (reasons `ResolvedRefs`, `BackendNotFound`, `RefNotPermitted`, `InvalidKind`)
/// and, when the route uses what the loader does not implement, `Accepted=False`
/// `UnsupportedValue` naming the field.
pub fn route_conditions(
    store: &Store,
    route_key: &ObjectKey,
    route: &TlsRoute,
) -> (Condition, Option<Condition>) {
    let backends = route.spec.rules.iter().flat_map(|rule| &rule.backend_refs);
    let generation = route.metadata.generation();
    super::routes::conditions(
        store,
        RouteKind::Tls,
        route_key,
        generation,
        unsupported(route),
        backends,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str) -> Resolution {
        super::super::resolve_text(text, &Default::default())
    }

    /// A `kubernetes.io/tls` Secret `cert` in `infra` for `hostname`.
    fn tls_secret(name: &str, hostname: &str) -> String {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![hostname.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: infra}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
            b64(&cert.pem()),
            b64(&key.serialize_pem())
        )
    }

    /// Gateway `gw` in `infra` with these listeners (YAML flow mappings), the certificate
    /// Secret `cert`, Service `s` (port 8443 named `btls`) with an endpoint, and a policy on it.
    fn base(listeners: &[&str]) -> String {
        let mut text = tls_secret("cert", "tls.example.com");
        text += &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  gatewayClassName: x\n  listeners:\n{}",
            listeners.iter().map(|l| format!("  - {l}\n")).collect::<String>()
        );
        text += "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: infra}\nspec: {ports: [{name: btls, port: 8443}]}\n";
        text += "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: infra, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [\"127.0.0.1\"]}]\nports: [{name: btls, port: 9443}]\n";
        text += "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca, namespace: infra}\ndata: {ca.crt: \"not a certificate\"}\n";
        text
    }

    const TERMINATE: &str = "{name: tls, protocol: TLS, port: 8443, hostname: tls.example.com, tls: {mode: Terminate, certificateRefs: [{name: cert}]}}";

    fn tls_route(name: &str, api_version: &str, spec: &str) -> String {
        format!("---\napiVersion: gateway.networking.k8s.io/{api_version}\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: infra, generation: 3}}\nspec:\n{spec}")
    }

    fn parent_conditions<'a>(r: &'a Resolution, name: &str) -> &'a [Condition] {
        let report = r.routes.iter().find(|x| x.kind == "TLSRoute" && x.name == name).unwrap();
        &report.parents[0].conditions
    }

    fn condition<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
        conditions.iter().find(|c| c.kind == kind).unwrap()
    }

    fn reason(r: &Resolution, route: &str, kind: &str) -> (bool, &'static str) {
        let c = condition(parent_conditions(r, route), kind);
        (c.status, c.reason)
    }

    /// BackendTLSPolicyTLSRouteTerminate's objects: the listener takes the route, one chain for
    /// its SNI with the listener's certificate, to the Service port's cluster, which the policy
    /// governs; the policy's ancestor is the Gateway. Every served apiVersion reads the same.
    #[test]
    fn a_terminate_listener_proxies_its_routes_to_policy_governed_clusters() {
        for api_version in ["v1", "v1alpha3", "v1alpha2"] {
            let mut text = base(&[TERMINATE]);
            text += "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: good-ca, namespace: infra}\n";
            text += &format!("data:\n  ca.crt: |\n{}", {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                let pem = params.self_signed(&key).unwrap().pem();
                pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
            });
            text += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: infra}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: s, sectionName: btls}]\n  validation: {caCertificateRefs: [{group: \"\", kind: ConfigMap, name: good-ca}], hostname: abc.example.com}\n";
            text += &tls_route(
                "r",
                api_version,
                "  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: s, port: 8443}]}]\n",
            );
            let r = resolve_text(&text);
            assert_eq!(reason(&r, "r", "Accepted"), (true, "Accepted"), "{api_version}");
            assert_eq!(reason(&r, "r", "ResolvedRefs"), (true, "ResolvedRefs"));
            assert!(parent_conditions(&r, "r").iter().all(|c| c.observed_generation == 3));
            let gw = &r.gateways[0];
            let listener = &gw.listeners[0];
            assert_eq!(listener.attached_routes, 1);
            let kinds: Vec<&str> = listener.supported_kinds.iter().map(|k| k.kind).collect();
            assert_eq!(kinds, ["TLSRoute"]);
            assert!(listener.conditions.iter().all(|c| c.kind == "Conflicted" || c.status));
            let l = &r.ir.listeners[0];
            assert_eq!((l.port, l.virtual_hosts.len(), l.tls.len()), (8443, 0, 0));
            assert_eq!(
                l.tcp_proxies,
                [TcpProxy {
                    hostname: Some("tls.example.com".into()),
                    certificates: vec!["backendtls_listener_infra_cert".into()],
                    route: Some("infra/r".into()),
                    clusters: vec![WeightedCluster {
                        cluster: "kube_infra_s_8443".into(),
                        weight: 1
                    }],
                }]
            );
            let cluster = &r.ir.clusters["kube_infra_s_8443"];
            let tls = cluster.tls.as_ref().expect("the policy governs the cluster");
            assert_eq!(tls.hostname, "abc.example.com");
            assert!(matches!(tls.trust, Trust::Ca { .. }), "{tls:?}");
            assert_eq!(cluster.protocol, UpstreamProtocol::Http1, "no HTTP/2 ALPN for TCP");
            let policy = &r.policies[0];
            assert_eq!(policy.ancestors.len(), 1, "{policy:?}");
            assert_eq!(policy.ancestors[0].name, "gw");
            assert!(policy.conditions.iter().all(|c| c.status), "{policy:?}");
        }
    }

    /// ResolvedRefs reasons; the share of an invalid backendRef goes to the hostless cluster,
    /// a route with no valid backend sends everything there; an invalid policy leaves the
    /// route's cluster without TLS trust (the cluster then has no hosts).
    #[test]
    fn backend_refs_fail_closed_with_the_spec_reasons() {
        let mut text = base(&[
            "{name: tls, protocol: TLS, port: 8443, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: cert}]}}",
        ]);
        text += "---\napiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: other}\nspec: {ports: [{port: 8443}]}\n";
        text += "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: other}\nspec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}], to: [{group: \"\", kind: Service}]}\n";
        text += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: infra}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: s}]\n  validation: {caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: abc.example.com}\n";
        let cases = [
            ("missing", "[{name: nope, port: 8443}]", "BackendNotFound"),
            ("no-port", "[{name: s}]", "BackendNotFound"),
            ("wrong-port", "[{name: s, port: 1}]", "BackendNotFound"),
            ("kind", "[{group: example.com, kind: Backend, name: s, port: 8443}]", "InvalidKind"),
            ("grant", "[{name: t, namespace: other, port: 8443}]", "RefNotPermitted"),
            (
                "split",
                "[{name: s, port: 8443, weight: 3}, {name: nope, port: 8443, weight: 1}]",
                "BackendNotFound",
            ),
        ];
        for (i, (name, refs, _)) in cases.iter().enumerate() {
            text += &tls_route(
                name,
                "v1",
                &format!("  parentRefs: [{{name: gw}}]\n  hostnames: [h{i}.example.com]\n  rules: [{{backendRefs: {refs}}}]\n"),
            );
        }
        let r = resolve_text(&text);
        for (name, _, expected) in cases {
            assert_eq!(reason(&r, name, "ResolvedRefs"), (false, expected), "{name}");
            assert_eq!(reason(&r, name, "Accepted"), (true, "Accepted"), "{name}");
        }
        let proxies = &r.ir.listeners[0].tcp_proxies;
        let clusters = |host: &str| {
            let proxy = proxies.iter().find(|p| p.hostname.as_deref() == Some(host)).unwrap();
            proxy.clusters.iter().map(|c| (c.cluster.as_str(), c.weight)).collect::<Vec<_>>()
        };
        assert_eq!(clusters("h0.example.com"), [(INVALID_BACKEND_CLUSTER, 1)]);
        assert_eq!(clusters("h4.example.com"), [(INVALID_BACKEND_CLUSTER, 1)]);
        assert_eq!(
            clusters("h5.example.com"),
            [("kube_infra_s_8443", 3), (INVALID_BACKEND_CLUSTER, 1)]
        );
        assert!(r.ir.clusters[INVALID_BACKEND_CLUSTER].endpoints == Endpoints::Static(Vec::new()));
        // The policy's CA ConfigMap holds no certificate: the cluster fails closed.
        let tls = r.ir.clusters["kube_infra_s_8443"].tls.as_ref().unwrap();
        assert!(matches!(tls.trust, Trust::Unusable { .. }), "{tls:?}");
    }

    /// Accepted reasons: a TLSRoute on an HTTP or HTTPS listener, or a TLS listener that allows
    /// only other kinds, is NotAllowedByListeners; a sectionName no listener has is
    /// NoMatchingParent; hostnames that do not intersect are NoMatchingListenerHostname;
    /// unimplemented fields are UnsupportedValue and the route is not served.
    #[test]
    fn parents_get_the_spec_reasons() {
        let mut text = base(&[
            TERMINATE,
            "{name: http, protocol: HTTP, port: 8080}",
            "{name: https, protocol: HTTPS, port: 9443, tls: {certificateRefs: [{name: cert}]}}",
        ]);
        let parent = |spec: &str| {
            format!("  parentRefs: [{spec}]\n  hostnames: [tls.example.com]\n  rules: [{{backendRefs: [{{name: s, port: 8443}}]}}]\n")
        };
        text += &tls_route("on-http", "v1", &parent("{name: gw, sectionName: http}"));
        text += &tls_route("on-https", "v1", &parent("{name: gw, sectionName: https}"));
        text += &tls_route("no-section", "v1", &parent("{name: gw, sectionName: nope}"));
        text += &tls_route("wrong-port", "v1", &parent("{name: gw, port: 1}"));
        text += &tls_route(
            "other-host",
            "v1",
            "  parentRefs: [{name: gw, sectionName: tls}]\n  hostnames: [other.example.org]\n  rules: [{backendRefs: [{name: s, port: 8443}]}]\n",
        );
        text += &tls_route(
            "two-rules",
            "v1alpha2",
            "  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: s, port: 8443}]}, {backendRefs: [{name: s, port: 8443}]}]\n",
        );
        text += &tls_route(
            "default-gateways",
            "v1",
            "  parentRefs: [{name: gw}]\n  useDefaultGateways: All\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: s, port: 8443}]}]\n",
        );
        for (name, hostname) in
            [("ip", "10.0.0.1"), ("upper", "TLS.example.com"), ("mid-wildcard", "a.*.example.com")]
        {
            text += &tls_route(
                name,
                "v1",
                &format!("  parentRefs: [{{name: gw}}]\n  hostnames: [tls.example.com, \"{hostname}\"]\n  rules: [{{backendRefs: [{{name: s, port: 8443}}]}}]\n"),
            );
        }
        let r = resolve_text(&text);
        for name in ["ip", "upper", "mid-wildcard"] {
            let c = condition(parent_conditions(&r, name), "Accepted");
            assert_eq!((c.status, c.reason), (false, "UnsupportedValue"), "{name}");
            assert!(c.message.starts_with("spec.hostnames[1]:"), "{name}: {}", c.message);
        }
        assert!(valid_hostname("*.example.com") && valid_hostname("tls.example.com"));
        assert_eq!(reason(&r, "on-http", "Accepted"), (false, "NotAllowedByListeners"));
        assert_eq!(reason(&r, "on-https", "Accepted"), (false, "NotAllowedByListeners"));
        assert_eq!(reason(&r, "no-section", "Accepted"), (false, "NoMatchingParent"));
        assert_eq!(reason(&r, "wrong-port", "Accepted"), (false, "NoMatchingParent"));
        assert_eq!(reason(&r, "other-host", "Accepted"), (false, "NoMatchingListenerHostname"));
        for name in ["two-rules", "default-gateways"] {
            let c = condition(parent_conditions(&r, name), "Accepted");
            assert_eq!((c.status, c.reason), (false, "UnsupportedValue"), "{name}");
        }
        assert!(condition(parent_conditions(&r, "two-rules"), "Accepted")
            .message
            .starts_with("spec.rules:"));
        let gw = &r.gateways[0];
        let attached: Vec<(&str, u32)> =
            gw.listeners.iter().map(|l| (l.name.as_str(), l.attached_routes)).collect();
        assert_eq!(attached, [("tls", 0), ("http", 0), ("https", 0)]);
        // No route attached to the TLS port: one chain that closes every connection.
        let tls_port = r.ir.listeners.iter().find(|l| l.port == 8443).unwrap();
        assert_eq!(tls_port.tcp_proxies.len(), 1);
        assert_eq!(tls_port.tcp_proxies[0].route, None);
        assert_eq!(tls_port.tcp_proxies[0].clusters[0].cluster, INVALID_BACKEND_CLUSTER);
    }

    /// Listener-level rules: Passthrough is refused naming `tls.mode`; route kinds other than
    /// TLSRoute on a TLS listener are InvalidRouteKinds (and TLSRoute on HTTP ones); a bad
    /// certificate is InvalidCertificateRef; TLS and HTTPS on one port conflict.
    #[test]
    fn tls_listeners_are_checked_like_https_ones() {
        let text = base(&[
            "{name: passthrough, protocol: TLS, port: 8443, tls: {mode: Passthrough}}",
            "{name: no-tls, protocol: TLS, port: 8444}",
            "{name: kinds, protocol: TLS, port: 8445, allowedRoutes: {kinds: [{kind: TLSRoute}, {kind: HTTPRoute}]}, tls: {certificateRefs: [{name: cert}]}}",
            "{name: http-kinds, protocol: HTTP, port: 8080, allowedRoutes: {kinds: [{kind: TLSRoute}]}}",
            "{name: bad-cert, protocol: TLS, port: 8446, tls: {certificateRefs: [{name: missing}]}}",
            "{name: tls, protocol: TLS, port: 8447, tls: {certificateRefs: [{name: cert}]}}",
            "{name: https, protocol: HTTPS, port: 8447, hostname: other.example.com, tls: {certificateRefs: [{name: cert}]}}",
        ]);
        let r = resolve_text(&text);
        let gw = &r.gateways[0];
        let listener = |name: &str| gw.listeners.iter().find(|l| l.name == name).unwrap();
        let c = |name: &str, kind: &str| {
            let c = condition(&listener(name).conditions, kind);
            (c.status, c.reason, c.message.clone())
        };
        let (status, reason, message) = c("passthrough", "Accepted");
        assert_eq!((status, reason), (false, "UnsupportedValue"));
        assert!(message.starts_with("tls.mode: Passthrough"), "{message}");
        let (status, reason, message) = c("no-tls", "Accepted");
        assert_eq!((status, reason), (false, "UnsupportedValue"));
        assert!(message.starts_with("tls:"), "{message}");
        let (status, reason, message) = c("kinds", "ResolvedRefs");
        assert_eq!((status, reason), (false, "InvalidRouteKinds"));
        assert!(message.contains("HTTPRoute"), "{message}");
        let kinds: Vec<&str> = listener("kinds").supported_kinds.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, ["TLSRoute"]);
        assert_eq!(c("http-kinds", "ResolvedRefs").1, "InvalidRouteKinds");
        assert!(listener("http-kinds").supported_kinds.is_empty());
        assert_eq!(c("bad-cert", "ResolvedRefs").1, "InvalidCertificateRef");
        assert!(!c("bad-cert", "Programmed").0);
        assert_eq!(c("https", "Conflicted").1, "ProtocolConflict");
        let ports: Vec<u16> = r.ir.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [8445, 8447]);
    }

    /// TLSRoute backendRefs take no filters (a file error), and unknown fields are file errors.
    #[test]
    fn unknown_fields_are_file_errors() {
        for spec in [
            "  rules: [{backendRefs: [{name: s, port: 8443, filters: []}]}]\n",
            "  rules: [{matches: [], backendRefs: [{name: s, port: 8443}]}]\n",
            "  hostname: [a.example.com]\n",
        ] {
            let parsed = crate::source::parse_file(
                std::path::Path::new("t.yaml"),
                &tls_route("r", "v1", spec),
            );
            assert_eq!(parsed.errors.len(), 1, "{spec}: {:?}", parsed.errors);
            let error = format!("{:?}", parsed.errors[0]);
            assert!(error.contains("unknown field"), "{error}");
            assert!(error.contains("TLSRoute"), "{error}");
        }
        let parsed = crate::source::parse_file(
            std::path::Path::new("t.yaml"),
            &tls_route("r", "v1beta1", "  rules: []\n"),
        );
        let error = format!("{:?}", parsed.errors);
        assert!(error.contains("v1alpha2"), "{error}");
    }

    /// A ReferenceGrant `from` kind TLSRoute lets a TLSRoute reach a Service in its namespace.
    #[test]
    fn a_reference_grant_from_tlsroute_allows_a_cross_namespace_backend() {
        let mut text = base(&[TERMINATE]);
        text += "---\napiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: other}\nspec: {ports: [{port: 8443}]}\n";
        text += "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: other}\nspec: {from: [{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: infra}], to: [{group: \"\", kind: Service, name: t}]}\n";
        text += &tls_route(
            "r",
            "v1",
            "  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: t, namespace: other, port: 8443}]}]\n",
        );
        let r = resolve_text(&text);
        assert_eq!(reason(&r, "r", "ResolvedRefs"), (true, "ResolvedRefs"));
        let proxy = &r.ir.listeners[0].tcp_proxies[0];
        assert_eq!(proxy.clusters[0].cluster, "kube_other_t_8443");
    }

    /// Two routes for one SNI name on one listener: the older route takes it.
    #[test]
    fn the_older_route_takes_a_hostname() {
        let mut text = base(&[TERMINATE]);
        let spec = "  parentRefs: [{name: gw}]\n  hostnames: [tls.example.com]\n  rules: [{backendRefs: [{name: s, port: 8443}]}]\n";
        text += &tls_route("b-old", "v1", spec)
            .replace("generation: 3", "generation: 3, creationTimestamp: \"2024-01-01T00:00:00Z\"");
        text += &tls_route("a-new", "v1", spec)
            .replace("generation: 3", "generation: 3, creationTimestamp: \"2024-02-01T00:00:00Z\"");
        let r = resolve_text(&text);
        let proxies = &r.ir.listeners[0].tcp_proxies;
        assert_eq!(proxies.len(), 1);
        assert_eq!(proxies[0].route.as_deref(), Some("infra/b-old"));
    }
}
