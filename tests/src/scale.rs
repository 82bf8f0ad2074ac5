//! A generator of N backends for scale benchmarks: per backend a Service, its EndpointSlice, a CA
//! ConfigMap, a BackendTLSPolicy and an HTTPRoute rule, spread over namespaces, all pointing at
//! one real TLS backend so that any of them can be exercised through Envoy.

use std::fmt::Write as _;
use std::path::Path;

/// Backends per namespace.
const PER_NAMESPACE: usize = 100;

pub struct ScaleSpec<'a> {
    pub backends: usize,
    pub gateway_port: u16,
    pub backend_port: u16,
    /// PEM of the CA that every backend's ConfigMap holds.
    pub ca_pem: &'a str,
    /// The hostname every policy verifies (the backend's certificate name).
    pub hostname: &'a str,
}

pub fn namespace_of(index: usize) -> String {
    format!("team-{:03}", index / PER_NAMESPACE)
}

pub fn backend_name(index: usize) -> String {
    format!("svc-{index:05}")
}

/// The Host header that routes to backend `index`.
pub fn route_host(index: usize) -> String {
    format!("{}.{}.bench.example", backend_name(index), namespace_of(index))
}

/// `kube_<ns>_<svc>_443`.
pub fn cluster_of(index: usize) -> String {
    format!("kube_{}_{}_443", namespace_of(index), backend_name(index))
}

/// Writes the Gateway into `dir/gateway.yaml` and one file per backend into `dir/<ns>/<svc>.yaml`.
pub fn write(dir: &Path, spec: &ScaleSpec<'_>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("gateway.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: infra}}\n\
             spec:\n  gatewayClassName: backendtls\n  listeners:\n  - name: http\n    protocol: HTTP\n    \
             port: {}\n    allowedRoutes: {{namespaces: {{from: All}}}}\n",
            spec.gateway_port
        ),
    )?;
    for index in 0..spec.backends {
        let ns_dir = dir.join(namespace_of(index));
        std::fs::create_dir_all(&ns_dir)?;
        std::fs::write(ns_dir.join(format!("{}.yaml", backend_name(index))), backend(index, spec))?;
    }
    Ok(())
}

/// All objects of one backend, as one multi-document file.
pub fn backend(index: usize, spec: &ScaleSpec<'_>) -> String {
    let ns = namespace_of(index);
    let name = backend_name(index);
    let mut out = String::new();
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: https, port: 443}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\nports: [{{name: https, port: {port}}}]\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-ca, namespace: {ns}}}\ndata:\n  ca.crt: |\n",
        port = spec.backend_port
    );
    for line in spec.ca_pem.lines() {
        let _ = writeln!(out, "    {line}");
    }
    let _ = write!(
        out,
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
         targetRefs: [{{group: \"\", kind: Service, name: {name}}}]\n  validation:\n    hostname: {host}\n    \
         caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {name}-ca}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
         parentRefs: [{{name: bench, namespace: infra}}]\n  hostnames: [{route}]\n  rules:\n  - backendRefs: [{{name: {name}, port: 443}}]\n",
        host = spec.hostname,
        route = route_host(index),
    );
    out
}
