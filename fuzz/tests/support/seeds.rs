//! Writes the seed inputs of every target into `fuzz/corpus/<target>/seed-*` from the repository's
//! real inputs (example and golden manifests, test certificates) and from certificates made here.
//! Run once when a target or its input format changes, then fuzz and minimize (`make fuzz`):
//!
//!     cargo test -p backendtls-fuzz --test corpus write_seeds -- --ignored
//!
//! The CA certificates the validator target trusts (`fuzz/data/*.pem`) are written too; their
//! keys are thrown away, so the seed chains are the only ones that verify.

use backendtls_fuzz::{corpus_dir, pem};
use backendtls_loader::pipeline;
use backendtls_loader::source::ConfigDir;
use backendtls_loader::xds::translate::{TranslateOptions, Validator};
use prost::Message;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    params
}

fn root(name: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &Ca, sans: Vec<SanType>) -> (Vec<u8>, KeyPair) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "backend");
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, issuer).unwrap().der().to_vec(), key)
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(value: &str) -> SanType {
    SanType::URI(value.try_into().unwrap())
}

/// `validator_verify`'s input: config byte, time byte, then length-prefixed certificates.
fn chain_input(config: u8, time: u8, chain: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![config, time];
    for der in chain {
        out.extend_from_slice(&u16::try_from(der.len()).unwrap().to_be_bytes());
        out.extend_from_slice(der);
    }
    out
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    let data = repo().join("fuzz/data");
    std::fs::create_dir_all(&data).unwrap();
    let ca = root("backendtls fuzz CA");
    let other = root("backendtls fuzz other CA");
    std::fs::write(data.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(data.join("other-ca.pem"), other.pem()).unwrap();
    let mid = {
        let params = ca_params("backendtls fuzz intermediate");
        CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &ca).unwrap()
    };

    // Certificates: the validator's cases, and DER for the parsers.
    let (host_leaf, host_key) = leaf(&ca, vec![dns("backend.example.com")]);
    let (many_leaf, _) = leaf(
        &ca,
        vec![
            dns("first.example"),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            uri("spiffe://example.com/backend"),
            dns("a.example.com"),
        ],
    );
    let (mid_leaf, _) = leaf(&mid, vec![dns("backend.example.com")]);
    let (stranger_leaf, _) = leaf(&other, vec![dns("x.other.example")]);
    let (no_san_leaf, _) = leaf(&ca, vec![]);
    write("validator_verify", "hostname", chain_input(0, 0, &[&host_leaf]));
    write("validator_verify", "sans", chain_input(1, 0, &[&many_leaf]));
    write("validator_verify", "intermediate", chain_input(0, 0, &[&mid_leaf, mid.der()]));
    write("validator_verify", "two-anchors", chain_input(2, 0, &[&stranger_leaf]));
    write("validator_verify", "expired", chain_input(0, 2, &[&host_leaf]));
    write("validator_verify", "no-san", chain_input(1, 1, &[&no_san_leaf, ca.der()]));

    let golden_ca = std::fs::read_to_string(repo().join("loader/tests/golden/ca.pem")).unwrap();
    let golden_der =
        rustls_pki_types::CertificateDer::from_pem_slice(golden_ca.as_bytes()).unwrap();
    let ders: [(&str, &[u8]); 5] = [
        ("leaf", &host_leaf),
        ("many-sans", &many_leaf),
        ("ca", ca.der()),
        ("no-san", &no_san_leaf),
        ("golden-ca", golden_der.as_ref()),
    ];
    for (name, der) in ders {
        write("x509_differential", name, der);
        write("ca_bundle_der", name, der);
        write("peer_certificate", name, pem("CERTIFICATE", der));
    }
    let encoded = pem("CERTIFICATE", &many_leaf).replace('-', "%2D").replace('\n', "%0A");
    write("peer_certificate", "url-encoded", encoded);
    write("ca_bundle_der", "two", [ca.der().as_ref(), b"\xff\x00", other.der()].concat());
    write("ca_bundle", "golden", &golden_ca);
    write("ca_bundle", "two", format!("# comment\n{}{}", ca.pem(), other.pem()));
    let expired = {
        let mut params = ca_params("expired");
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    };
    write("ca_bundle", "expired-and-valid", format!("{expired}{}", ca.pem()));
    write("ca_bundle", "leaf-and-mid", format!("{}{}", pem("CERTIFICATE", &host_leaf), mid.pem()));
    let key_pem = host_key.serialize_pem();
    let pair = |cert: &str, key: &str| [cert.as_bytes(), b"\xff\x00", key.as_bytes()].concat();
    write("tls_key_pair", "valid", pair(&pem("CERTIFICATE", &host_leaf), &key_pem));
    write(
        "tls_key_pair",
        "chain",
        pair(&format!("{}{}", pem("CERTIFICATE", &mid_leaf), mid.pem()), &key_pem),
    );
    write(
        "tls_key_pair",
        "no-key",
        pair(&ca.pem(), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
    );

    // Configurations.
    let validator = |identities: &[&str], anchors: &str| {
        serde_json::json!({"policy": "ns/p", "hostname": "backend.example.com",
            "identities": identities, "trust_anchors_pem": anchors})
        .to_string()
    };
    write("validator_config", "hostname", validator(&[], &ca.pem()));
    write(
        "validator_config",
        "identities",
        validator(
            &["dns:*.example.com", "uri:spiffe://x/y"],
            &format!("{}{}", ca.pem(), other.pem()),
        ),
    );
    write("validator_config", "bad-identity", validator(&["dns:10.0.0.5"], &golden_ca));
    write("filter_config", "null", r#"{"request_header": null}"#);
    write(
        "filter_config",
        "header",
        r#"{"request_header": "x-backendtls-policy", "debug_panic_header": "x-panic"}"#,
    );
    write("filter_config", "empty", "");

    // Manifests: every example and golden input file, the salvage cases, and JSON.
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/backend-tls"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut golden_dirs = Vec::new();
    for case in std::fs::read_dir(repo().join("loader/tests/golden")).unwrap() {
        let input = case.unwrap().path().join("input");
        if input.is_dir() {
            golden_dirs.push(input.clone());
            manifests.extend(std::fs::read_dir(input).unwrap().map(|e| e.unwrap().path()));
        }
    }
    manifests.sort();
    for path in &manifests {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.strip_prefix(repo()).unwrap().to_string_lossy().replace('/', "_");
        write("manifest_yaml", &name, &text);
        for (index, piece) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value: serde_json::Value = serde::Deserialize::deserialize(piece).unwrap();
            if !value.is_null() {
                write("manifest_json", &format!("{name}-{index}.json"), value.to_string());
            }
        }
    }
    let salvage = [
        ("misspelt", "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx, sectionName: https}]\n  validation: {hostnam: example.com, caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]}\n"),
        ("v1alpha2", "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRef: {group: '', kind: Service, name: nginx, sectionName: https}\n  tls: {hostname: example.com}\n"),
        ("duplicate-key", "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: p, namespace: apps}\nspec:\n  targetRefs: [{group: '', kind: Service, name: nginx}]\n  validation: {hostname: example.com, hostname: evil.com, wellKnownCACertificates: System}\n"),
        ("list", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: gateway.networking.k8s.io/v1\n  kind: BackendTLSPolicy\n  metadata: {name: p}\n  spec:\n    targetRefs: [{group: '', kind: Service, name: nginx}]\n    validation: {hostname: 10.0.0.5, wellKnownCACertificates: System}\n"),
    ];
    for (name, text) in salvage {
        write("manifest_yaml", name, text);
    }

    // Directories: each golden case and the example as one multi-file input; the guide with a
    // misspelt policy.
    for dir in golden_dirs.iter().chain([&repo().join("examples/backend-tls")]) {
        let mut input = String::new();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            input.push_str(&format!("#== {}\n", file.file_name().unwrap().to_string_lossy()));
            input.push_str(&std::fs::read_to_string(&file).unwrap());
        }
        let name = dir.strip_prefix(repo()).unwrap().to_string_lossy().replace('/', "_");
        write("pipeline", &name, &input);
        if name.contains("guide") {
            write(
                "pipeline",
                "guide-misspelt",
                input.replace("hostname: example.com", "hostnam: example.com"),
            );
        }
    }

    // Cluster metadata as the Wasm build reads it: from the golden policies' clusters.
    let mut config = ConfigDir::new(repo().join("loader/tests/golden/policies/input"));
    config.reload().unwrap();
    let options = TranslateOptions { validator: Validator::Envoy, ..Default::default() };
    let build = pipeline::build(&config, &Default::default(), &options);
    for (index, cluster) in build.resources.clusters.iter().enumerate() {
        if let Some(metadata) = &cluster.resource.metadata {
            write("cluster_metadata", &format!("policies-{index}"), metadata.encode_to_vec());
        }
    }
}
