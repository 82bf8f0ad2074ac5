//! Private keys never leave a Secret except towards Envoy: not in parse errors, `Debug` output,
//! policy or Gateway status (`check`, `/status`), nor in `render`'s bootstrap unless asked.
//!
//! Every test feeds values that look like private keys and contain [`MARKER`], then searches
//! everything the loader produced for it.

use backendtls_loader::source::{parse_file, ConfigDir};
use backendtls_loader::xds::bootstrap::{private_key_path, static_bootstrap, PrivateKeys};
use backendtls_loader::xds::translate::{Delivery, TranslateOptions};
use backendtls_loader::{pipeline, resolve, xds};
use std::path::{Path, PathBuf};

/// Base64 text that appears nowhere but in the test keys.
const MARKER: &str = "U2VjcmV0S2V5TWFya2VyRG9Ob3RMZWFr";

/// A PEM private key whose body contains [`MARKER`] (not a parsable key).
fn fake_key_pem() -> String {
    format!("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC{MARKER}BKcwggSj\n-----END PRIVATE KEY-----\n")
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn assert_no_marker(what: &str, text: &str) {
    assert!(!text.contains(MARKER), "{what} shows the private key:\n{text}");
    // Nor base64-encoded as the Secret's `data` holds it, nor as a list of bytes (`{:?}` of a
    // `Vec<u8>`, as PEM parsers' errors show lines).
    let encoded = base64(&fake_key_pem());
    assert!(!text.contains(&encoded[8..40]), "{what} shows the base64 private key:\n{text}");
    let bytes: Vec<String> = MARKER.bytes().take(8).map(|b| b.to_string()).collect();
    assert!(!text.contains(&bytes.join(", ")), "{what} shows the key as bytes:\n{text}");
}

fn secret(body: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: client\n  namespace: apps\n{body}")
}

#[test]
fn malformed_secrets_are_errors_that_name_the_field_but_never_the_value() {
    let key = json_string(&fake_key_pem());
    let cases = [
        (
            secret(&format!("stringData: {key}\n")),
            "stringData must be a map of strings, not a string",
        ),
        (
            secret(&format!("data:\n  tls.key: {key}\n")),
            "data.tls.key is not valid base64 (plain text such as PEM goes in stringData)",
        ),
        (secret(&format!("data:\n  tls.key: {MARKER}!!\n")), "data.tls.key is not valid base64"),
        (secret(&format!("data:\n- {key}\n")), "data must be a map of strings, not a list"),
        (
            secret(&format!("data:\n  tls.key:\n    pem: {key}\n")),
            "data.tls.key must be a string, not a map",
        ),
        (
            secret(&format!("stringData:\n  tls.key: [{key}]\n")),
            "stringData.tls.key must be a string, not a list",
        ),
        (secret(&format!("type: {{tls.key: {key}}}\n")), "type must be a string, not a map"),
        (
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: client\n  labels: {key}\n"),
            "metadata: invalid type: string, expected a map",
        ),
        (
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  \
                 metadata: {{name: client}}\n  stringData: {key}\n"
            ),
            "stringData must be a map of strings, not a string",
        ),
    ];
    for (yaml, expected) in cases {
        let parsed = parse_file(Path::new("secrets.yaml"), &yaml);
        assert!(!parsed.usable, "a malformed Secret parsed:\n{yaml}");
        let error = parsed.errors.into_iter().next().expect("an error");
        for shown in
            [error.to_string(), format!("{error:?}"), serde_json::to_string(&error).unwrap()]
        {
            assert_no_marker("the parse error", &shown);
        }
        assert!(error.reason.contains(expected), "{:?} should say {expected:?}", error.reason);
        assert!(error.object.as_deref().unwrap_or("").starts_with("Secret "), "{error:?}");
    }
}

#[test]
fn secret_debug_output_shows_keys_but_not_values() {
    let yaml = secret(&format!(
        "type: kubernetes.io/tls\ndata:\n  tls.key: {}\nstringData:\n  other.key: {}\n",
        base64(&fake_key_pem()),
        json_string(&fake_key_pem())
    ));
    let parsed = parse_file(Path::new("secret.yaml"), &yaml);
    assert!(parsed.usable && parsed.errors.is_empty(), "a valid Secret: {:?}", parsed.errors);
    let objects = parsed.objects;
    let debug = format!("{objects:?} {objects:#?}");
    assert_no_marker("Debug of a Secret", &debug);
    assert!(debug.contains("\"tls.key\": \"<redacted>\""), "{debug}");
    assert!(debug.contains("other.key") && debug.contains("kubernetes.io/tls"), "{debug}");
}

/// The golden guide's objects (Gateway `kgateway-system/http`, a policy on Service
/// `default/nginx`), with `clientCertificateRef` naming Secret `client` in the Gateway's namespace.
fn guide_with_client_certificate(dir: &Path, client_secret: &str) {
    let guide = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/guide/input");
    for entry in std::fs::read_dir(guide).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let gateway = std::fs::read_to_string(dir.join("gateway.yaml")).unwrap().replace(
        "spec:\n",
        "spec:\n  tls:\n    backend:\n      clientCertificateRef:\n        name: client\n",
    );
    std::fs::write(dir.join("gateway.yaml"), gateway).unwrap();
    std::fs::write(dir.join("client.yaml"), client_secret).unwrap();
}

fn client_secret(cert_pem: &str, key_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: client\n  namespace: kgateway-system\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(cert_pem),
        base64(key_pem)
    )
}

/// A real certificate and key (so that only the key's problems are reported).
fn real_client_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn resolve_dir(dir: &Path) -> pipeline::Resolved {
    let mut config = ConfigDir::new(dir);
    config.reload().unwrap();
    pipeline::resolve(&config, &resolve::Options::default())
}

/// Unusable client certificate Secrets reach the Gateway's status (`check`, `/status`) with the
/// reason, but never with the key. Malformed Secrets reach `errors` the same way.
#[test]
fn check_and_status_never_show_private_keys() {
    let (cert, _) = real_client_certificate();
    let fake = fake_key_pem();
    let unusable = [
        ("not PEM at all", client_secret(&cert, &format!("{MARKER}{MARKER}\n"))),
        (
            "no END line",
            client_secret(&cert, fake.trim_end().trim_end_matches("-----END PRIVATE KEY-----")),
        ),
        // PEM-shaped: the loader passes it on and Envoy refuses it.
        ("a key that does not parse", client_secret(&cert, &fake)),
        (
            "the wrong Secret type",
            client_secret(&cert, &fake).replace("kubernetes.io/tls", "Opaque"),
        ),
        ("no certificate", client_secret("", &fake)),
        ("stringData as a string", format!("{}stringData: {}\n", secret(""), json_string(&fake))),
    ];
    for (case, client) in unusable {
        let dir = tempfile::tempdir().unwrap();
        guide_with_client_certificate(dir.path(), &client);
        let resolved = resolve_dir(dir.path());
        let check = format!("{:#}", resolved.status_json());
        assert_no_marker(&format!("check output ({case})"), &check);
        assert_no_marker(&format!("the IR ({case})"), &format!("{:?}", resolved.resolution.ir));
        let status = resolved.status().render(1);
        assert_no_marker(&format!("/status ({case})"), &status);
        let reported =
            status.contains("InvalidClientCertificateRef") || status.contains("\"errors\":[{");
        assert!(reported || case == "a key that does not parse", "{case}: not reported:\n{status}");
    }
}

/// A key folded onto one line (YAML `>` instead of `|`): rustls-pki-types' error quotes the rest
/// of the line as bytes (`missing section end marker: [80, 82, ...]`), which must not reach the
/// Gateway's status message.
#[test]
fn a_key_folded_onto_one_line_is_not_shown() {
    let (cert, _) = real_client_certificate();
    let folded = fake_key_pem().replace('\n', " ");
    let dir = tempfile::tempdir().unwrap();
    guide_with_client_certificate(dir.path(), &client_secret(&cert, &folded));
    let resolved = resolve_dir(dir.path());
    assert_no_marker("check output", &format!("{}", resolved.status_json()));
}

fn render(dir: &Path, keys: PrivateKeys) -> String {
    let mut config = ConfigDir::new(dir);
    config.reload().unwrap();
    let options =
        TranslateOptions { delivery: Delivery::Inline, private_keys: keys, ..Default::default() };
    let build = pipeline::build(&config, &resolve::Options::default(), &options);
    assert!(
        build.resolved.resolution.ir.client_certificates.len() == 1,
        "the client certificate is used"
    );
    let bootstrap = static_bootstrap(&build.resources, "127.0.0.1:19000".parse().unwrap());
    xds::json::to_yaml(&xds::json::to_json(&bootstrap))
}

#[test]
fn render_names_a_key_file_unless_asked_for_the_key() {
    let (cert, key) = real_client_certificate();
    let dir = tempfile::tempdir().unwrap();
    guide_with_client_certificate(dir.path(), &client_secret(&cert, &key));
    let key_body = key.lines().nth(1).unwrap();

    let keys_dir = PathBuf::from("/run/keys");
    let rendered = render(dir.path(), PrivateKeys::Files { dir: keys_dir.clone() });
    assert!(!rendered.contains(key_body), "render put the key in the bootstrap:\n{rendered}");
    assert!(!rendered.contains("PRIVATE KEY"), "{rendered}");
    let key_file = private_key_path(
        &keys_dir,
        &backendtls_loader::objects::ObjectKey::new("kgateway-system", "client"),
    );
    assert_eq!(key_file, Path::new("/run/keys/kgateway-system/client/tls.key"));
    assert!(rendered.contains(&format!("filename: {}", key_file.display())), "{rendered}");
    assert!(rendered.contains(cert.lines().nth(1).unwrap()), "the certificate stays inline");

    let rendered = render(dir.path(), PrivateKeys::Inline);
    assert!(rendered.contains(key_body), "--include-private-keys left the key out:\n{rendered}");
}
