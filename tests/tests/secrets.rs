//! Private keys stay out of everything the loader binary prints, logs and serves, except the xDS
//! stream to Envoy and `render --include-private-keys`; `render` without it makes Envoy read
//! each key from a file, and that bootstrap works against a backend that demands the client
//! certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backendtls_e2e::paths::loader_bin;
use backendtls_e2e::policy_support::{
    base64, btls_service_yaml, documents, gateway_yaml_with_client_certificate, run_loader_command,
    tls_secret_yaml, wait_for_gateway_status, write_base, ConfigDir, Fixture, Pki, Policy, Route,
    TlsServer, BTLS_PORT, CLIENT_COMMON_NAME, GATEWAY, NS,
};
use backendtls_e2e::process::ManagedChild;
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, validate_bootstrap, wait_until, Ads, Envoy,
};

/// Base64 text that appears nowhere but in the fake keys.
const MARKER: &str = "U2VjcmV0S2V5TWFya2VyRG9Ob3RMZWFr";

fn fake_key_pem() -> String {
    format!(
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC{MARKER}BKcwggSj\n\
         -----END PRIVATE KEY-----\n"
    )
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// What must never show: the fake keys' marker and the real client key, as PEM and as base64.
struct Needles(Vec<String>);

impl Needles {
    fn new(pki: &Pki) -> Needles {
        let real = &pki.client_cert.key_pem;
        let encoded = base64(real.as_bytes());
        let marker_bytes: Vec<String> = MARKER.bytes().take(8).map(|b| b.to_string()).collect();
        Needles(vec![
            MARKER.to_string(),
            marker_bytes.join(", "),
            real.lines().nth(1).expect("a PEM body line").to_string(),
            encoded[40..80].to_string(),
        ])
    }

    fn assert_absent(&self, what: &str, text: &str) {
        for needle in &self.0 {
            assert!(
                !text.contains(needle.as_str()),
                "{what} shows a private key ({needle}):\n{text}"
            );
        }
    }
}

/// A Secret in [`NS`] named `name` with `body` after its metadata.
fn secret(name: &str, body: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n{body}")
}

/// The base objects, a governed Service `mtls` on `backend_port` behind Gateway [`GATEWAY`],
/// which presents client certificate Secret `client`.
fn write_client_certificate_setup(
    config: &ConfigDir,
    pki: &Pki,
    gateway_port: u16,
    backend_port: u16,
) {
    write_base(config, pki, gateway_port);
    config.write(
        "gateway.yaml",
        &gateway_yaml_with_client_certificate(GATEWAY, gateway_port, Some("client")),
    );
    config.write("client.yaml", &tls_secret_yaml("client", &pki.client_cert));
    config.write("services.yaml", &btls_service_yaml("mtls", backend_port));
    config.write("routes.yaml", &Route::new("mtls").rule("/mtls", "mtls", BTLS_PORT).yaml());
    config.write("policies.yaml", &Policy::new("mtls", "mtls").yaml());
}

/// Malformed Secrets, one per file, and a second Gateway whose client certificate Secret has a
/// `tls.key` that is not PEM.
fn write_broken_secrets(config: &ConfigDir, pki: &Pki) {
    let key = json_string(&fake_key_pem());
    config.write("bad-string-data.yaml", &secret("bad1", &format!("stringData: {key}\n")));
    config.write("bad-data-pem.yaml", &secret("bad2", &format!("data:\n  tls.key: {key}\n")));
    config.write("bad-data-list.yaml", &secret("bad3", &format!("data:\n- {key}\n")));
    config.write("bad-type.yaml", &secret("bad4", &format!("type: {{key: {key}}}\n")));
    config.write(
        "not-pem.yaml",
        &documents(&[
            gateway_yaml_with_client_certificate("not-pem", free_port(), Some("not-pem")),
            secret(
                "not-pem",
                &format!(
                    "type: kubernetes.io/tls\ndata:\n  tls.crt: {}\nstringData:\n  tls.key: {MARKER}\n",
                    base64(pki.client_cert.cert_pem.as_bytes())
                ),
            ),
        ]),
    );
}

/// `backendtls-loader serve` with every loader log at trace level.
struct TracedLoader {
    process: ManagedChild,
    admin_port: u16,
    xds_port: u16,
    _log_dir: tempfile::TempDir,
}

impl TracedLoader {
    fn start(config_dir: &Path) -> TracedLoader {
        let (xds_port, admin_port) = (free_port(), free_port());
        let log_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(loader_bin());
        command
            .arg("serve")
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--xds-address", &format!("127.0.0.1:{xds_port}")])
            .args(["--admin-address", &format!("127.0.0.1:{admin_port}")])
            .env("RUST_LOG", "trace");
        let mut process = ManagedChild::spawn("loader", command, &log_dir.path().join("log"));
        wait_until("the loader to be ready", Duration::from_secs(30), || {
            process.assert_running();
            match try_http_get(admin_port, "127.0.0.1", "/readyz") {
                Ok((200, _)) => Ok(()),
                other => Err(other),
            }
        });
        TracedLoader { process, admin_port, xds_port, _log_dir: log_dir }
    }

    fn get(&self, path: &str) -> String {
        match try_http_get(self.admin_port, "127.0.0.1", path) {
            Ok((200, body)) => body,
            other => panic!("loader {path}: {other:?}"),
        }
    }
}

/// `check`, `render` and `serve` (its `/status`, `/xds`, `/metrics` and its trace-level log while
/// an Envoy takes the client certificate over SDS) on malformed and valid Secrets holding keys.
#[test]
fn check_render_and_serve_never_show_private_keys() {
    let pki = Pki::new();
    let needles = Needles::new(&pki);
    let config = ConfigDir::new();
    write_client_certificate_setup(&config, &pki, free_port(), free_port());
    write_broken_secrets(&config, &pki);
    let dir = config.path().to_str().unwrap();

    for format in ["json", "yaml"] {
        let check = run_loader_command(&["check", "--config-dir", dir, "-o", format]);
        assert_eq!(check.code, Some(1), "{check:?}");
        needles.assert_absent(&format!("check -o {format}"), &format!("{check:?}"));
        for expected in [
            "stringData must be a map of strings, not a string",
            "data.tls.key is not valid base64",
            "data must be a map of strings, not a list",
            "type must be a string, not a map",
            "tls.key is not a PEM private key",
        ] {
            assert!(
                check.stdout.contains(expected),
                "check -o {format} lacks {expected:?}:\n{check:?}"
            );
        }
    }

    // `render` refuses input with errors, and says why without showing any key.
    let keys = tempfile::tempdir().unwrap();
    let key_dir = keys.path().to_str().unwrap();
    for extra in [&["--private-key-dir", key_dir][..], &["--include-private-keys"][..]] {
        let mut args = vec!["render", "--config-dir", dir];
        args.extend(extra);
        let render = run_loader_command(&args);
        assert_eq!(render.code, Some(1), "{render:?}");
        assert!(render.stderr.contains("stringData must be a map"), "{render:?}");
        needles.assert_absent("render", &format!("{render:?}"));
    }
    // On good input: keys stay out unless asked for (the search would find the key: with the
    // flag, it is there).
    let clean = ConfigDir::new();
    write_client_certificate_setup(&clean, &pki, free_port(), free_port());
    let clean_dir = clean.path().to_str().unwrap();
    let render =
        run_loader_command(&["render", "--config-dir", clean_dir, "--private-key-dir", key_dir]);
    assert_eq!(render.code, Some(0), "{render:?}");
    needles.assert_absent("render", &format!("{render:?}"));
    let with_keys =
        run_loader_command(&["render", "--config-dir", clean_dir, "--include-private-keys"]);
    assert!(with_keys.stdout.contains(&needles.0[2]), "{with_keys:?}");

    // `serve` publishes its first configuration from good input, then reads the broken Secrets.
    let loader = TracedLoader::start(clean.path());
    let envoy_admin_port = free_port();
    let _envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port, envoy_admin_port, "e2e-secrets", Ads::Delta),
        envoy_admin_port,
    );
    wait_until("Envoy to acknowledge the snapshot", Duration::from_secs(30), || {
        let xds: serde_json::Value = serde_json::from_str(&loader.get("/xds")).unwrap();
        let acked =
            xds["envoys"].as_array().and_then(|e| e.first()).map(|e| e["acked_version"].clone());
        (acked == Some(xds["snapshot_version"].clone())).then_some(()).ok_or(xds)
    });
    write_broken_secrets(&clean, &pki);
    wait_until("the broken Secrets in /status", Duration::from_secs(30), || {
        let status = loader.get("/status");
        (status.contains("stringData must be a map") && status.contains("tls.key is not a PEM"))
            .then_some(())
            .ok_or(status)
    });
    for path in ["/status", "/xds", "/metrics"] {
        needles.assert_absent(&format!("serve {path}"), &loader.get(path));
    }
    let log = loader.process.log();
    assert!(log.contains("TRACE"), "the loader did not log at trace level");
    needles.assert_absent("the loader's trace log", &log);
}

/// `render` without `--include-private-keys` points Envoy at DIR/<namespace>/<secret>/tls.key:
/// `envoy --mode validate` refuses the bootstrap until the file exists, and with it Envoy
/// presents the certificate to an NGINX that requires one. With the flag the key is inline.
#[test]
fn rendered_bootstrap_reads_the_client_key_from_a_file() {
    let fixture = Fixture::with_servers(|pki| {
        vec![TlsServer::new(&pki.backend_cert).require_client_certificate(pki.client_ca.cert_pem())]
    });
    write_client_certificate_setup(
        &fixture.config,
        &fixture.pki,
        fixture.gateway_port,
        fixture.backend_port(0),
    );
    let needles = Needles::new(&fixture.pki);
    let keys = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let dir = fixture.config.path().to_str().unwrap();
    let admin = format!("127.0.0.1:{admin_port}");
    let render = |extra: &[&str]| {
        let mut args = vec!["render", "--config-dir", dir, "--admin-address", &admin];
        args.extend(extra);
        let run = run_loader_command(&args);
        assert_eq!(run.code, Some(0), "{run:?}");
        run
    };

    let rendered = render(&["--private-key-dir", keys.path().to_str().unwrap()]);
    needles.assert_absent("render", &format!("{rendered:?}"));
    let key_file = keys.path().join(NS).join("client").join("tls.key");
    assert!(rendered.stdout.contains(key_file.to_str().unwrap()), "{}", rendered.stdout);
    assert!(rendered.stderr.contains(key_file.to_str().unwrap()), "{}", rendered.stderr);
    let (valid, output) = validate_bootstrap(&rendered.stdout);
    assert!(!valid, "Envoy accepted a bootstrap whose key file does not exist:\n{output}");

    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, &fixture.pki.client_cert.key_pem).unwrap();
    let (valid, output) = validate_bootstrap(&rendered.stdout);
    assert!(valid, "envoy --mode validate:\n{output}\n{}", rendered.stdout);
    let _envoy = Envoy::start(&rendered.stdout, admin_port);
    wait_for_gateway_status(fixture.gateway_port, "/mtls", 200);
    let requests = wait_until("NGINX to log the request", Duration::from_secs(30), || {
        let requests = fixture.backend.requests_to("/mtls");
        (!requests.is_empty()).then_some(requests)
    });
    let subject = format!("CN={CLIENT_COMMON_NAME}");
    assert!(
        requests.iter().all(|r| r.client_subject == subject),
        "NGINX should have seen the client certificate on every request: {requests:#?}"
    );
    drop(_envoy);

    std::fs::remove_file(&key_file).unwrap();
    let inline = render(&["--include-private-keys"]);
    assert!(inline.stdout.contains(&needles.0[2]), "the key is not inline:\n{}", inline.stdout);
    let (valid, output) = validate_bootstrap(&inline.stdout);
    assert!(valid, "envoy --mode validate:\n{output}");
}
