//! Property over generated manifest directories: every Service port targeted by any
//! BackendTLSPolicy document, valid or not, gets verified TLS or no hosts, and no route reaches
//! such a port through a cluster with neither.
//!
//! Each directory has Services (several ports, named and unnamed, some ExternalName),
//! EndpointSlices, a Gateway and HTTPRoutes to them, CA ConfigMaps (valid, expired, garbage) and
//! BackendTLSPolicy documents that are valid, semantically invalid (an IP as hostname, a missing
//! CA, a bad option, a sectionName the Service lacks, both or neither CA sources, conflicting
//! policies) or broken in the ways the loader salvages (misspelt field, `v1alpha2`, repeated key,
//! a bad name, another group, `.json` files), sometimes beside a sibling document that does not
//! parse. The targets are what the generator wrote, not what the loader read: a policy the loader
//! dropped still counts. A file `ConfigDir::unusable()` reports keeps `serve` from publishing a
//! first configuration, so its policies are left out of the property.
//!
//! The checker is shared with the `pipeline` fuzz target.

#[path = "../../fuzz/src/fail_closed.rs"]
mod fail_closed;

use backendtls_loader::pipeline;
use backendtls_loader::source::ConfigDir;
use backendtls_loader::xds::translate::{Delivery, TranslateOptions, Validator};
use fail_closed::PolicyTarget;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

const DIRECTORIES: u64 = 48;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn ca(from: (i32, u8, u8), to: (i32, u8, u8)) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("property CA {from:?}"));
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

const NAMESPACES: [&str; 2] = ["apps", "web"];
const PORT_NAMES: [&str; 3] = ["https", "alt", "admin"];

struct Service {
    namespace: &'static str,
    name: String,
    /// (name, port); a single port may be unnamed ("").
    ports: Vec<(&'static str, u16)>,
}

/// One generated directory: the files, and every policy target written, with the file it is in.
#[derive(Default)]
struct Generated {
    files: Vec<(String, String)>,
    targets: Vec<(String, PolicyTarget)>,
    /// Counts of what was generated, to show the property is not vacuous.
    kinds: BTreeSet<&'static str>,
}

impl Generated {
    fn file(&mut self, name: String, text: String) {
        match self.files.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push_str("---\n");
                existing.push_str(&text);
            }
            None => self.files.push((name, text)),
        }
    }
}

/// A BackendTLSPolicy document in one of the generated shapes; what it targets is recorded in
/// `g.targets` (the caller fills in the file).
fn policy(rng: &mut Rng, g: &mut Generated, service: &Service, index: usize) -> String {
    let ns = service.namespace;
    let name = format!("{}-p{index}", service.name);
    let section = if rng.chance(40) {
        let names: Vec<&str> =
            service.ports.iter().map(|(n, _)| *n).filter(|n| !n.is_empty()).collect();
        match (names.is_empty(), rng.chance(85)) {
            (false, true) => Some(rng.pick(&names).to_string()),
            _ => Some("nosuchport".to_string()),
        }
    } else {
        None
    };
    let target = |section: &Option<String>| match section {
        Some(s) => {
            format!("{{group: \"\", kind: Service, name: {}, sectionName: {s}}}", service.name)
        }
        None => format!("{{group: \"\", kind: Service, name: {}}}", service.name),
    };
    let ca_ref = |name: &str| format!("[{{group: \"\", kind: ConfigMap, name: {name}}}]");
    let mut api_version = "gateway.networking.k8s.io/v1".to_string();
    let mut meta_name = name.clone();
    let mut validation =
        format!("{{hostname: backend.example.com, caCertificateRefs: {}}}", ca_ref("ca-valid"));
    let mut extra = String::new();
    let mut targets_field = format!("targetRefs: [{}]", target(&section));
    let shape = *rng.pick(&[
        "valid",
        "valid",
        "valid",
        "ip-hostname",
        "missing-ca",
        "expired-ca",
        "garbage-ca",
        "bad-option",
        "both-ca-sources",
        "no-ca-source",
        "system-ca",
        "misspelt",
        "v1alpha2",
        "repeated-key",
        "bad-name",
        "other-group",
        "no-kind",
        "v1alpha3",
    ]);
    g.kinds.insert(shape);
    match shape {
        "ip-hostname" => validation = format!("{{hostname: 10.0.0.5, caCertificateRefs: {}}}", ca_ref("ca-valid")),
        "missing-ca" => validation = format!("{{hostname: backend.example.com, caCertificateRefs: {}}}", ca_ref("nope")),
        "expired-ca" => validation = format!("{{hostname: backend.example.com, caCertificateRefs: {}}}", ca_ref("ca-expired")),
        "garbage-ca" => validation = format!("{{hostname: backend.example.com, caCertificateRefs: {}}}", ca_ref("ca-garbage")),
        "bad-option" => extra = "  options: {backendtls.dev/min-tls-version: \"1.1\"}\n".into(),
        "both-ca-sources" => validation = format!("{{hostname: backend.example.com, wellKnownCACertificates: System, caCertificateRefs: {}}}", ca_ref("ca-valid")),
        "no-ca-source" => validation = "{hostname: backend.example.com}".into(),
        "system-ca" => validation = "{hostname: backend.example.com, wellKnownCACertificates: System}".into(),
        "misspelt" => validation = format!("{{hostnam: backend.example.com, caCertificateRefs: {}}}", ca_ref("ca-valid")),
        "v1alpha2" => {
            api_version = "gateway.networking.k8s.io/v1alpha2".into();
            targets_field = format!("targetRef: {}", target(&section));
            validation = "{hostname: backend.example.com}".into();
        }
        "repeated-key" => validation = format!("{{hostname: backend.example.com, hostname: evil.example.com, caCertificateRefs: {}}}", ca_ref("ca-valid")),
        "bad-name" => meta_name = format!("P_{index}"),
        "other-group" => api_version = "policies.example.com/v1".into(),
        "no-kind" => targets_field = match &section {
            Some(s) => format!("targetRefs: [{{group: \"\", name: {}, sectionName: {s}}}]", service.name),
            None => format!("targetRefs: [{{group: \"\", name: {}}}]", service.name),
        },
        "v1alpha3" => api_version = "gateway.networking.k8s.io/v1alpha3".into(),
        _ => {}
    }
    // Conflicts are settled by age, then name: vary the age.
    let created = format!("2025-0{}-01T00:00:00Z", 1 + rng.below(9));
    let text = format!(
        "apiVersion: {api_version}\nkind: BackendTLSPolicy\nmetadata: {{name: {meta_name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  {targets_field}\n  validation: {validation}\n{extra}"
    );
    let record = PolicyTarget { namespace: ns.into(), service: service.name.clone(), section };
    g.targets.push((String::new(), record));
    text
}

/// Converts one YAML document to JSON text (for policies written to `.json` files).
fn to_json(yaml: &str) -> Option<String> {
    let value: serde_json::Value = serde_norway::from_str(yaml).ok()?;
    Some(serde_json::to_string_pretty(&value).unwrap())
}

fn generate(seed: u64, cas: &[String; 2]) -> Generated {
    let mut rng = Rng(seed);
    let mut g = Generated::default();
    g.file(
        "gateway.yaml".into(),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\nspec:\n  gatewayClassName: x\n  listeners:\n  - {name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}\n".into(),
    );
    for ns in NAMESPACES {
        let ca = |name: &str, pem: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n  ca.crt: |\n{}", indent(pem, "    "))
        };
        g.file(format!("{ns}-cas.yaml"), ca("ca-valid", &cas[0]));
        g.file(format!("{ns}-cas.yaml"), ca("ca-expired", &cas[1]));
        g.file(format!("{ns}-cas.yaml"), ca("ca-garbage", "not a certificate"));
    }
    let mut services = Vec::new();
    for i in 0..3 + rng.below(4) {
        let namespace = *rng.pick(&NAMESPACES);
        let count = 1 + rng.below(3);
        let mut ports = Vec::new();
        for (p, number) in [443u16, 8443, 9443].into_iter().enumerate().take(count) {
            let name = if count == 1 && rng.chance(30) { "" } else { PORT_NAMES[p] };
            ports.push((name, number));
        }
        services.push(Service { namespace, name: format!("svc-{i}"), ports });
    }
    for (i, s) in services.iter().enumerate() {
        let external = rng.chance(15);
        let mut text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: {}}}\nspec:\n",
            s.name, s.namespace
        );
        if external {
            text.push_str("  type: ExternalName\n  externalName: backend.example.com\n");
        }
        text.push_str("  ports:\n");
        for (name, port) in &s.ports {
            let protocol = if rng.chance(5) { ", protocol: UDP" } else { "" };
            match *name {
                "" => writeln!(text, "  - {{port: {port}{protocol}}}").unwrap(),
                name => writeln!(text, "  - {{name: {name}, port: {port}{protocol}}}").unwrap(),
            }
        }
        if !external && rng.chance(85) {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|(name, port)| {
                    let name = if rng.chance(10) { "other" } else { name };
                    format!("{{name: \"{name}\", port: {}}}", port + 1000)
                })
                .collect();
            write!(
                text,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {}-x, namespace: {}, labels: {{kubernetes.io/service-name: {}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.{}\"]}}]\nports: [{}]\n",
                s.name, s.namespace, s.name, i + 1, ports.join(", ")
            )
            .unwrap();
        }
        g.file(format!("{}-{}.yaml", s.namespace, s.name), text);

        // Routes: each port most of the time, sometimes split with another Service.
        let mut rules = String::new();
        for (name, port) in &s.ports {
            if !rng.chance(80) {
                continue;
            }
            let other = &services[rng.below(services.len())];
            let split = if other.namespace == s.namespace && rng.chance(20) {
                format!(", {{name: {}, port: {}, weight: 1}}", other.name, other.ports[0].1)
            } else {
                String::new()
            };
            let path = if name.is_empty() { "root" } else { name };
            write!(
                rules,
                "  - matches: [{{path: {{type: PathPrefix, value: /{path}}}}}]\n    backendRefs: [{{name: {}, port: {port}, weight: 1}}{split}]\n",
                s.name
            )
            .unwrap();
        }
        if !rules.is_empty() {
            g.file(
                format!("{}-{}-route.yaml", s.namespace, s.name),
                format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [{}.example]\n  rules:\n{rules}", s.name, s.namespace, s.name),
            );
        }

        // Policies: none, one or two (conflicting when they share a target), each in a file of
        // its own, in the Service's file, in a `.json` file, or beside a broken document.
        for index in 0..rng.below(3) {
            let text = policy(&mut rng, &mut g, s, index);
            let placement = rng.below(10);
            let file = match placement {
                0 | 1 => format!("{}-{}.yaml", s.namespace, s.name),
                2 => match to_json(&text) {
                    Some(json) => {
                        g.kinds.insert("json file");
                        let file = format!("{}-{}-p{index}.json", s.namespace, s.name);
                        g.file(file.clone(), json);
                        g.targets.last_mut().unwrap().0 = file;
                        continue;
                    }
                    // A repeated key is not JSON: such a document stays YAML.
                    None => format!("{}-{}-p{index}.yaml", s.namespace, s.name),
                },
                3 => {
                    g.kinds.insert("broken sibling");
                    let file = format!("{}-{}-p{index}.yaml", s.namespace, s.name);
                    g.file(file.clone(), text);
                    g.file(file.clone(), "kind: [broken\n".into());
                    g.targets.last_mut().unwrap().0 = file;
                    continue;
                }
                4 | 5 => {
                    // The same policy name in several files, each with its own target.
                    g.kinds.insert("same name in two files");
                    let renamed =
                        text.replace(&format!("name: {}-p{index},", s.name), "name: shared,");
                    let file = format!("zz-{}-{}-p{index}.yaml", s.namespace, s.name);
                    g.file(file.clone(), renamed);
                    g.targets.last_mut().unwrap().0 = file;
                    continue;
                }
                _ => format!("{}-{}-p{index}.yaml", s.namespace, s.name),
            };
            g.file(file.clone(), text);
            g.targets.last_mut().unwrap().0 = file;
        }
    }
    g
}

fn write_dir(dir: &Path, g: &Generated) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in &g.files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// What the runs covered, so that a generator change cannot make the property vacuous.
#[derive(Default, Debug)]
struct Coverage {
    targeted_ports: usize,
    tls_with_hosts: usize,
    closed: usize,
    unusable_files: usize,
}

fn check(
    seed: u64,
    cas: &[String; 2],
    coverage: &mut Coverage,
    kinds: &mut BTreeSet<&'static str>,
) {
    let g = generate(seed, cas);
    kinds.extend(g.kinds.iter().copied());
    let dir: PathBuf =
        std::env::temp_dir().join(format!("btls-fail-closed-{}-{seed}", std::process::id()));
    write_dir(&dir, &g);
    let mut config = ConfigDir::new(&dir);
    config.reload().unwrap();
    let unusable: BTreeSet<PathBuf> = config.unusable().iter().map(|p| p.to_path_buf()).collect();
    coverage.unusable_files += unusable.len();
    let targets: Vec<PolicyTarget> = g
        .targets
        .iter()
        .filter(|(file, _)| !unusable.contains(&dir.join(file)))
        .map(|(_, t)| t.clone())
        .collect();
    for (delivery, validator) in
        [(Delivery::Ads, Validator::Envoy), (Delivery::Inline, Validator::DynamicModule)]
    {
        let options = TranslateOptions { delivery, validator, ..Default::default() };
        let build = pipeline::build(&config, &Default::default(), &options);
        let (store, _) = config.store();
        let found = fail_closed::violations(
            store,
            &targets,
            &build.resolved.resolution.ir,
            &build.resources,
        );
        if !found.is_empty() {
            let files: String = g.files.iter().map(|(n, t)| format!("## {n}\n{t}")).collect();
            panic!(
                "seed {seed} ({delivery:?}, {validator:?}): fail-open:\n{}\n\nerrors: {:#?}\n\nfiles (kept in {}):\n{files}",
                found.join("\n"),
                build.resolved.errors,
                dir.display()
            );
        }
        if delivery == Delivery::Ads {
            let targeted = fail_closed::targeted_ports(store, &targets);
            coverage.targeted_ports += targeted.len();
            for cluster in build.resolved.resolution.ir.clusters.values() {
                if !targeted.contains(&(cluster.service.clone(), cluster.port)) {
                    continue;
                }
                match &cluster.tls {
                    Some(tls) if matches!(tls.trust, backendtls_loader::ir::Trust::Ca { .. }) => {
                        coverage.tls_with_hosts += 1
                    }
                    _ => coverage.closed += 1,
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_policy_target_gets_tls_or_no_hosts() {
    let cas = [ca((2020, 1, 1), (2100, 1, 1)), ca((2000, 1, 1), (2001, 1, 1))];
    let mut coverage = Coverage::default();
    let mut kinds = BTreeSet::new();
    for seed in 1..=DIRECTORIES {
        check(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), &cas, &mut coverage, &mut kinds);
    }
    // Not vacuous: ports were targeted, some got TLS, some were closed, some files unusable,
    // and every policy shape and placement was generated.
    assert!(coverage.tls_with_hosts > 10 && coverage.closed > 10, "{coverage:?}");
    assert!(coverage.unusable_files > 0, "{coverage:?}");
    assert_eq!(kinds.len(), 19, "{kinds:?}");
    eprintln!("{coverage:?}");
}
