//! `serve` reuses work between builds: unchanged files are not re-read, a change to slices or CA
//! certificates is resolved on its own ([`Incremental`]), translations and encoded resources are
//! kept per cluster and listener. This checks, on random edit sequences, that after every edit
//! the resolution (IR and status) and the snapshot it keeps are exactly what a fresh loader
//! builds from the same directory, and that edits were resolved on their own at all.

use backendtls_loader::pipeline::{self, StatusReport};
use backendtls_loader::resolve::{Build, Incremental, Resolution};
use backendtls_loader::source::ConfigDir;
use backendtls_loader::xds::json::any_to_json;
use backendtls_loader::xds::served::Served;
use backendtls_loader::xds::snapshot::Snapshot;
use backendtls_loader::xds::translate::Translator;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BACKENDS: usize = 12;
const EDITS: usize = 60;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn ca(index: usize) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("incremental CA {index}"));
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

/// A `kubernetes.io/tls` Secret for the HTTPS listener: one of two certificates, or (2) none.
fn listener_secret(variant: usize, keys: &[(String, String)]) -> String {
    let Some((cert, key)) = keys.get(variant) else { return String::new() };
    let b64 = |pem: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: listener-cert, namespace: infra}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

fn listener_key_pair(index: usize) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![format!("listener{index}.example")]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("listener {index}"));
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// One backend's state, rendered into its files.
#[derive(Clone)]
struct Backend {
    ca: usize,
    hostname: &'static str,
    policy: Option<&'static str>,
    endpoints: bool,
    port: u16,
    routed: bool,
    /// Which of [`RULES`] the route has.
    rule: usize,
    /// The route's hostnames: its own, one all such routes share, or none (every host).
    route_host: usize,
    /// A second, newer policy targets the Service too (and loses the conflict).
    conflict: bool,
    /// A GRPCRoute sends to the Service too (its cluster then speaks HTTP/2).
    grpc: bool,
    /// The Service exists.
    service: bool,
}

/// Route rules, `{name}` and `{mirror}` (the next backend) filled in: matches, filters, a
/// redirect, a mirror, a field the loader refuses and a Service that does not exist.
const RULES: [&str; 7] = [
    "  - backendRefs: [{name: {name}, port: 443}]\n",
    "  - matches: [{path: {type: Exact, value: /x}, method: GET, headers: [{name: X-A, value: b}], queryParams: [{name: q, type: RegularExpression, value: \"v[0-9]\"}]}]\n    backendRefs: [{name: {name}, port: 443}]\n",
    "  - matches: [{path: {value: /p}}]\n    filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-S, value: v}], remove: [X-R]}}\n    - {type: URLRewrite, urlRewrite: {hostname: h.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}\n    backendRefs: [{name: {name}, port: 443}]\n    timeouts: {request: 2s}\n",
    "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]\n",
    "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: {mirror}, port: 443}}}]\n    backendRefs: [{name: {name}, port: 443}]\n",
    "  - backendRefs: [{name: {name}, port: 443}]\n    sessionPersistence: {type: Cookie}\n",
    "  - backendRefs: [{name: {name}, port: 443}, {name: nowhere, port: 443}]\n",
];

fn write_backend(dir: &Path, i: usize, b: &Backend, cas: &[String]) {
    let ns = format!("ns-{}", i % 3);
    let name = format!("svc-{i}");
    let mut service = String::new();
    if b.service {
        service.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: https, port: 443}}]\n---\n"
        ));
    }
    if b.endpoints {
        service.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.{}\"]}}]\nports: [{{name: https, port: {}}}]\n",
            i + 1,
            b.port
        ));
    }
    std::fs::write(dir.join(format!("{name}-service.yaml")), service).unwrap();
    let ca_text =
        if b.ca < cas.len() { indent(&cas[b.ca]) } else { "    not a certificate\n".into() };
    std::fs::write(
        dir.join(format!("{name}-ca.yaml")),
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}-ca, namespace: {ns}}}\ndata:\n  ca.crt: |\n{ca_text}"),
    )
    .unwrap();
    let policy_path = dir.join(format!("{name}-policy.yaml"));
    match b.policy {
        Some(version) => std::fs::write(
            &policy_path,
            format!(
                "apiVersion: gateway.networking.k8s.io/{version}\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {name}}}]\n  validation:\n    hostname: {}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {name}-ca}}]\n",
                b.hostname
            ),
        )
        .unwrap(),
        None => {
            let _ = std::fs::remove_file(&policy_path);
        }
    }
    let second_path = dir.join(format!("{name}-second-policy.yaml"));
    if b.conflict {
        std::fs::write(
            &second_path,
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}-second, namespace: {ns}, creationTimestamp: \"2030-01-01T00:00:00Z\"}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {name}}}]\n  validation: {{hostname: second.example.com, wellKnownCACertificates: System}}\n"
            ),
        )
        .unwrap();
    } else {
        let _ = std::fs::remove_file(&second_path);
    }
    let grpc_path = dir.join(format!("{name}-grpc.yaml"));
    if b.grpc {
        std::fs::write(
            &grpc_path,
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [grpc.example]\n  rules: [{{backendRefs: [{{name: {name}, port: 443}}]}}]\n"
            ),
        )
        .unwrap();
    } else {
        let _ = std::fs::remove_file(&grpc_path);
    }
    let route_path = dir.join(format!("{name}-route.yaml"));
    if b.routed {
        // The mirror is in the same namespace (no ReferenceGrant needed).
        let mirror = format!("svc-{}", (i + 3) % BACKENDS);
        let rule = RULES[b.rule].replace("{name}", &name).replace("{mirror}", &mirror);
        let hostnames = match b.route_host {
            0 => format!("{name}.example"),
            1 => "shared.example".to_string(),
            _ => String::new(),
        };
        std::fs::write(
            &route_path,
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{hostnames}]\n  rules:\n{rule}"
            ),
        )
        .unwrap();
    } else {
        let _ = std::fs::remove_file(&route_path);
    }
}

/// Every resource by type and name, with its version and its content as JSON.
fn contents(snapshot: &Snapshot) -> BTreeMap<(String, String), (String, serde_json::Value)> {
    let mut out = BTreeMap::new();
    for (type_url, resources) in snapshot.types() {
        for (name, r) in resources {
            out.insert(
                (type_url.clone(), name.clone()),
                (r.version.clone(), any_to_json(&r.resource)),
            );
        }
    }
    out
}

/// The IR and the status as JSON: what two resolutions are compared by.
fn resolution_json(resolution: &Resolution) -> (serde_json::Value, serde_json::Value) {
    let ir = serde_json::to_value(&resolution.ir).unwrap();
    (ir, StatusReport::of(resolution, Vec::new()).to_json())
}

/// What a fresh loader makes of `dir`: its resolution as JSON, and its snapshot.
fn fresh_build(dir: &Path) -> ((serde_json::Value, serde_json::Value), Snapshot) {
    let mut config = ConfigDir::new(dir);
    config.reload().unwrap();
    let resolved = pipeline::resolve(&config, &Default::default());
    let snapshot = Snapshot::new(
        1,
        Translator::default().translate(&resolved.resolution.ir, &Default::default()),
    );
    (resolution_json(&resolved.resolution), snapshot)
}

fn run(seed: u64) {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("btls-incremental-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gateway.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: x\n  listeners:\n  - {name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}\n  - {name: https, protocol: HTTPS, port: 8443, tls: {certificateRefs: [{name: listener-cert}]}, allowedRoutes: {namespaces: {from: All}}}\n",
    )
    .unwrap();
    // The HTTPS listener's certificate: rotated, replaced or removed by the edits below.
    let listener_keys: Vec<(String, String)> = (0..2).map(listener_key_pair).collect();
    let write_listener_secret = |variant: usize| {
        std::fs::write(dir.join("listener-secret.yaml"), listener_secret(variant, &listener_keys))
            .unwrap()
    };
    write_listener_secret(0);
    let cas: Vec<String> = (0..3).map(ca).collect();
    let mut rng = Rng(seed);
    let initial = Backend {
        ca: 0,
        hostname: "a.example.com",
        policy: Some("v1"),
        endpoints: true,
        port: 8443,
        routed: true,
        rule: 0,
        route_host: 0,
        conflict: false,
        grpc: false,
        service: true,
    };
    let mut backends = vec![initial; BACKENDS];
    for (i, b) in backends.iter().enumerate() {
        write_backend(&dir, i, b, &cas);
    }

    // The serving side: one ConfigDir, resolver and Translator, and the previous snapshot, kept
    // throughout.
    let mut config = ConfigDir::new(&dir);
    let mut resolver = Incremental::new(Default::default());
    let mut partial_builds = 0;
    let mut full_builds = BTreeMap::new();
    let mut translator = Translator::default();
    let mut current = Snapshot::default();
    let mut listener_secret_served = 0;
    for edit in 0..EDITS {
        let i = rng.below(BACKENDS);
        let b = &mut backends[i];
        let what = match rng.below(13) {
            9 => {
                b.route_host = rng.below(3);
                "route hostnames (own, shared, none)"
            }
            10 => {
                b.conflict = !b.conflict;
                "second policy present"
            }
            11 => {
                b.grpc = !b.grpc;
                "GRPCRoute present"
            }
            12 => {
                b.service = !b.service;
                "Service present"
            }
            0 => {
                b.ca = rng.below(4);
                "CA content (3 = not a certificate)"
            }
            1 => {
                b.hostname = ["a.example.com", "b.example.com"][rng.below(2)];
                "hostname"
            }
            2 => {
                b.policy = [None, Some("v1"), Some("v1alpha3")][rng.below(3)];
                "policy present / version"
            }
            3 => {
                b.endpoints = !b.endpoints;
                "EndpointSlice present"
            }
            4 => {
                b.port = [8443, 9443][rng.below(2)];
                "endpoint port"
            }
            5 => {
                b.routed = !b.routed;
                "route present"
            }
            6 => {
                b.rule = rng.below(RULES.len());
                "route rule (matches, filters, redirect, mirror, refused field)"
            }
            7 => {
                write_listener_secret(rng.below(3));
                "HTTPS listener certificate (rotated, other, missing)"
            }
            _ => "rewrite unchanged",
        };
        write_backend(&dir, i, b, &cas);

        config.reload().unwrap();
        let (store, errors) = config.objects();
        assert!(errors.is_empty(), "generated files parse: {errors:?}");
        let build = resolver.update(store);
        match build {
            Build::Partial { .. } => partial_builds += 1,
            Build::Full(why) => *full_builds.entry(why).or_insert(0) += 1,
        }
        let resolution = resolver.resolution();
        let changes = resolver.changes();
        // As `serve` makes them: route configurations with inline hosts encoded on first use
        // (by `contents`, below).
        let next =
            translator.snapshot(&resolution.ir, &Default::default(), changes, current.version + 1);
        let previous = std::mem::replace(&mut current, next);
        let incremental = contents(&current);
        // What changed from the previous snapshot, as the ADS server finds it (from the maps the
        // two snapshots share) and as `serve` decides whether to publish: a full comparison's.
        let before = contents(&previous);
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in before.keys().chain(incremental.keys()) {
            let version = |c: &BTreeMap<_, (String, _)>| c.get(key).map(|(v, _)| v.clone());
            if version(&before) != version(&incremental) {
                let names = expected.entry(key.0.clone()).or_default();
                if names.last() != Some(&key.1) {
                    names.push(key.1.clone());
                }
            }
        }
        for names in expected.values_mut() {
            names.sort();
            names.dedup();
        }
        let (served_before, _) = Served::build(0, Arc::new(previous.clone()), None);
        let (_, served_changes) = Served::build(1, Arc::new(current.clone()), Some(&served_before));
        let served_changes: BTreeMap<String, Vec<String>> = served_changes
            .into_iter()
            .map(|(key, names)| (key, names.iter().map(|n| n.to_string()).collect()))
            .collect();
        assert_eq!(served_changes, expected, "seed {seed}, edit {edit} ({what}): changes");
        assert_eq!(
            current.same_content(&previous),
            expected.is_empty(),
            "seed {seed}, edit {edit}"
        );
        if incremental.keys().any(|(_, name)| name == "backendtls_listener_infra_listener-cert") {
            listener_secret_served += 1;
        }
        let (full_resolution, full_snapshot) = fresh_build(&dir);
        let (ir, status) = resolution_json(resolution);
        assert!(
            ir == full_resolution.0,
            "seed {seed}, edit {edit} ({what} of backend {i}, {build:?}): the IR differs from a full build's:\n incremental: {ir:#}\n full: {:#}",
            full_resolution.0
        );
        assert!(
            status == full_resolution.1,
            "seed {seed}, edit {edit} ({what} of backend {i}, {build:?}): the status differs from a full build's:\n incremental: {status:#}\n full: {:#}",
            full_resolution.1
        );
        let full = contents(&full_snapshot);
        assert!(
            incremental == full,
            "seed {seed}, edit {edit} ({what} of backend {i}, {build:?}): incremental and full snapshots differ:\n incremental-only: {:?}\n full-only: {:?}",
            incremental.iter().filter(|(k, v)| full.get(*k) != Some(v)).map(|(k, _)| k).collect::<Vec<_>>(),
            full.iter().filter(|(k, v)| incremental.get(*k) != Some(v)).map(|(k, _)| k).collect::<Vec<_>>(),
        );
    }
    assert!(listener_secret_served > 0, "seed {seed}: the HTTPS listener was never served");
    // Only the first build and listener certificate edits (1 in 13) need a full build.
    assert!(
        partial_builds >= EDITS * 2 / 3,
        "seed {seed}: only {partial_builds} partial builds; full builds: {full_builds:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn incremental_builds_equal_full_builds_on_random_edits() {
    for seed in [0x9E37_79B9_7F4A_7C15, 42, 7_777_777] {
        run(seed);
    }
}
