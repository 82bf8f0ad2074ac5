//! A generator of N backends for scale benchmarks: per backend a Service, its EndpointSlice, a CA
//! ConfigMap, a BackendTLSPolicy and an HTTPRoute rule, spread over namespaces as a [`Layout`]
//! says, all pointing at one real TLS backend so that any of them can be exercised through Envoy.

use std::fmt::Write as _;
use std::path::Path;

/// How backends are spread over namespaces. Costs that grow with the objects of one namespace
/// show only when namespaces are large, so the bench runs several layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Backends `0..per` in the first namespace, the next `per` in the second, and so on
    /// (`per100`, the default: namespaces grow in number, not size, with N).
    PerNamespace(usize),
    /// Backend `i` in namespace `i % count` (`ns1`: one namespace holds everything; `ns50`;
    /// `ns10000`): namespaces grow in size with N.
    Namespaces(usize),
}

impl Default for Layout {
    fn default() -> Self {
        Layout::PerNamespace(100)
    }
}

impl Layout {
    /// The namespace of backend `index`.
    pub fn namespace_of(self, index: usize) -> String {
        let k = match self {
            Layout::PerNamespace(per) => index / per.max(1),
            Layout::Namespaces(count) => index % count.max(1),
        };
        format!("team-{k:03}")
    }

    /// The Host header that routes to backend `index`.
    pub fn route_host(self, index: usize) -> String {
        format!("{}.{}.bench.example", backend_name(index), self.namespace_of(index))
    }

    /// `kube_<ns>_<svc>_443`.
    pub fn cluster_of(self, index: usize) -> String {
        format!("kube_{}_{}_443", self.namespace_of(index), backend_name(index))
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::PerNamespace(per) => write!(f, "per{per}"),
            Layout::Namespaces(count) => write!(f, "ns{count}"),
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;

    /// `per<N>` (N backends per namespace) or `ns<N>` (N namespaces).
    fn from_str(s: &str) -> Result<Self, String> {
        let number = |rest: &str| rest.parse::<usize>().ok().filter(|n| *n > 0);
        if let Some(n) = s.strip_prefix("per").and_then(number) {
            Ok(Layout::PerNamespace(n))
        } else if let Some(n) = s.strip_prefix("ns").and_then(number) {
            Ok(Layout::Namespaces(n))
        } else {
            Err(format!(
                "layout {s:?}: expected per<N> (backends per namespace) or ns<N> (namespaces)"
            ))
        }
    }
}

pub struct ScaleSpec<'a> {
    pub backends: usize,
    pub layout: Layout,
    /// One multi-document file per namespace instead of one file per backend (as people who
    /// keep a namespace's manifests together write them).
    pub file_per_namespace: bool,
    pub gateway_port: u16,
    pub backend_port: u16,
    /// PEM of the CA that every backend's ConfigMap holds.
    pub ca_pem: &'a str,
    /// The hostname every policy verifies (the backend's certificate name).
    pub hostname: &'a str,
}

pub fn backend_name(index: usize) -> String {
    format!("svc-{index:05}")
}

/// Writes the Gateway into `dir/gateway.yaml` and one file per backend into `dir/<ns>/<svc>.yaml`
/// (or, with `file_per_namespace`, every backend of a namespace into `dir/<ns>.yaml`).
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
    if spec.file_per_namespace {
        let mut files: std::collections::BTreeMap<String, String> = Default::default();
        for index in 0..spec.backends {
            let text = files.entry(spec.layout.namespace_of(index)).or_default();
            if !text.is_empty() {
                text.push_str("---\n");
            }
            text.push_str(&backend(index, spec));
        }
        for (namespace, text) in files {
            std::fs::write(dir.join(format!("{namespace}.yaml")), text)?;
        }
        return Ok(());
    }
    for index in 0..spec.backends {
        let ns_dir = dir.join(spec.layout.namespace_of(index));
        std::fs::create_dir_all(&ns_dir)?;
        std::fs::write(ns_dir.join(format!("{}.yaml", backend_name(index))), backend(index, spec))?;
    }
    Ok(())
}

/// All objects of one backend, as one multi-document file.
pub fn backend(index: usize, spec: &ScaleSpec<'_>) -> String {
    let ns = spec.layout.namespace_of(index);
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
        route = spec.layout.route_host(index),
    );
    out
}
