//! Every stage of `check` and `render` (reload, resolve, status, translate, bootstrap) costs the
//! same per backend at two sizes, however the backends are spread over namespaces and files.
//! Counted in heap allocations, not timed: a step that is quadratic in the objects of one
//! namespace or one file (scanning a file per object was 49 s of `check` at 100,000 backends)
//! shows as a growing count per backend, on any machine.

use backendtls_loader::pipeline;
use backendtls_loader::resolve::Options;
use backendtls_loader::source::ConfigDir;
use backendtls_loader::xds::translate::{Delivery, TranslateOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "linear scale CA");
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

/// A Service, its EndpointSlice, a CA ConfigMap, a policy and a route, as in the bench.
fn backend(i: usize, ns: &str, ca: &str) -> String {
    let ca: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}}}\nspec: {{ports: [{{name: https, port: 443}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\nports: [{{name: https, port: 8443}}]\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: s{i}-ca, namespace: {ns}}}\ndata:\n  ca.crt: |\n{ca}---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: s{i}, namespace: {ns}}}\n\
         spec: {{targetRefs: [{{group: \"\", kind: Service, name: s{i}}}], validation: {{hostname: example.com, caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: s{i}-ca}}]}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: s{i}, namespace: {ns}}}\n\
         spec: {{parentRefs: [{{name: gw, namespace: infra}}], hostnames: [s{i}.{ns}.example], rules: [{{backendRefs: [{{name: s{i}, port: 443}}]}}]}}\n"
    )
}

#[derive(Clone, Copy, Debug)]
enum Spread {
    /// Every backend in one namespace, one file each.
    OneNamespace,
    /// Every backend in one namespace and one file.
    OneFile,
    /// Backend i in namespace i mod 4, one file per namespace.
    FilePerNamespace,
    /// A namespace per backend.
    NamespacePerBackend,
}

fn write(dir: &Path, n: usize, spread: Spread, ca: &str) {
    std::fs::write(
        dir.join("gateway.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\n\
         spec: {gatewayClassName: x, listeners: [{name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}]}\n",
    )
    .unwrap();
    let mut files: std::collections::BTreeMap<String, String> = Default::default();
    for i in 0..n {
        let (ns, file) = match spread {
            Spread::OneNamespace => ("team".to_string(), format!("b{i}.yaml")),
            Spread::OneFile => ("team".to_string(), "all.yaml".to_string()),
            Spread::FilePerNamespace => (format!("team-{}", i % 4), format!("team-{}.yaml", i % 4)),
            Spread::NamespacePerBackend => (format!("team-{i}"), format!("b{i}.yaml")),
        };
        let text = files.entry(file).or_default();
        if !text.is_empty() {
            text.push_str("---\n");
        }
        text.push_str(&backend(i, &ns, ca));
    }
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
}

/// Allocations per backend of each stage.
fn per_backend(n: usize, spread: Spread, ca: &str) -> [f64; 5] {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), n, spread, ca);
    let mut counts = [0usize; 5];
    let mut stage = |i: usize, work: &mut dyn FnMut()| {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        work();
        counts[i] = ALLOCATIONS.load(Ordering::Relaxed) - before;
    };
    let mut config = ConfigDir::new(dir.path());
    stage(0, &mut || config.reload().unwrap());
    let options = Options::default();
    let mut resolved = None;
    stage(1, &mut || resolved = Some(pipeline::resolve(&config, &options)));
    let resolved = resolved.unwrap();
    assert!(resolved.is_healthy(), "{:?} {:?}", resolved.errors, resolved.problems());
    assert_eq!(resolved.resolution.policies.len(), n);
    stage(2, &mut || resolved.status_document().write_json(&mut std::io::sink()).unwrap());
    let mut build = None;
    stage(3, &mut || {
        // As `render` does: route configurations inline in their listeners.
        let translate = TranslateOptions { delivery: Delivery::Inline, ..Default::default() };
        build = Some(pipeline::build(&config, &options, &translate))
    });
    let build = build.unwrap();
    let admin = "127.0.0.1:19000".parse().unwrap();
    stage(4, &mut || {
        pipeline::bootstrap_document(&build.resources, admin)
            .write_json(&mut std::io::sink())
            .unwrap()
    });
    counts.map(|c| c as f64 / n as f64)
}

#[test]
fn every_stage_costs_the_same_per_backend_at_four_times_the_size() {
    let ca = ca_pem();
    let stages = ["reload", "resolve", "status", "build", "bootstrap"];
    for spread in [
        Spread::OneNamespace,
        Spread::OneFile,
        Spread::FilePerNamespace,
        Spread::NamespacePerBackend,
    ] {
        let (small, large) = (per_backend(100, spread, &ca), per_backend(400, spread, &ca));
        for (i, stage) in stages.iter().enumerate() {
            // Fixed costs (the Gateway, the listener) make the small size dearer per backend; a
            // cost that grows with N is quadratic.
            assert!(
                large[i] <= small[i] * 1.10,
                "{spread:?} {stage}: {:.1} allocations per backend at 100, {:.1} at 400",
                small[i],
                large[i]
            );
        }
    }
}
