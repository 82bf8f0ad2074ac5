//! Preflight probes end to end: real NGINX backends on loopback, one per way a backend's TLS can
//! be wrong, each behind its own Service and BackendTLSPolicy. `backendtls-loader probe`, and
//! `serve --probe-interval` through `/status`, `/metrics` and `/ui`, must each give every endpoint
//! exactly its class, and Envoy's dynamic-module validator its expiry gauge; a CA fixed in place
//! turns its row green without a restart.

use backendtls_e2e::paths::loader_bin;
use backendtls_e2e::policy_support::{
    btls_service_yaml, ca_config_map_yaml, documents, gateway_yaml, Backend, ConfigDir, Policy,
    Route, TlsServer, CA_CONFIG_MAP, GATEWAY, NS, ROUTE_HOST,
};
use backendtls_e2e::validator_support::{filter_so, use_module_search_path};
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, Loader, TestCa,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// Service name -> the result its one endpoint must probe to.
const EXPECTED: [(&str, &str); 7] = [
    ("good", "ok"),
    ("expired", "expired"),
    ("other-ca", "unknown_issuer"),
    ("wrong-name", "name_mismatch"),
    ("plaintext", "plaintext_only"),
    ("closed", "unreachable"),
    // TLS 1.2 only, behind a policy that asks for at least TLS 1.3.
    ("tls12-only", "tls_version_mismatch"),
];

struct Setup {
    config: ConfigDir,
    ca: TestCa,
    other_ca: TestCa,
    /// Keep the servers alive for the test.
    _backend: Backend,
    gateway_port: u16,
}

fn setup() -> Setup {
    let ca = TestCa::new("probe policy CA");
    let other_ca = TestCa::new("probe other CA");
    let good = ca.issue(&[ROUTE_HOST]);
    let expired = ca.issue_with_validity(&[ROUTE_HOST], (2019, 1, 1), (2020, 1, 1));
    let from_other_ca = other_ca.issue(&[ROUTE_HOST]);
    let wrong_name = ca.issue(&["wrong.example.net"]);
    let backend = Backend::start(&[
        TlsServer::new(&good),
        TlsServer::new(&expired),
        TlsServer::new(&from_other_ca),
        TlsServer::new(&wrong_name),
        TlsServer::new(&good).tls12_only(),
        TlsServer::plaintext(),
    ]);
    let ports = [
        backend.port(0),
        backend.port(1),
        backend.port(2),
        backend.port(3),
        backend.port(5),
        free_port(),
        backend.port(4),
    ];
    let config = ConfigDir::new();
    let mut route = Route::new("probed");
    config.write("ca.yaml", &ca_config_map_yaml(CA_CONFIG_MAP, ca.cert_pem()));
    let gateway_port = free_port();
    let mut objects = vec![gateway_yaml(GATEWAY, gateway_port)];
    for ((service, _), port) in EXPECTED.iter().zip(ports) {
        objects.push(btls_service_yaml(service, port));
        let mut policy = Policy::new(service, service);
        if *service == "tls12-only" {
            policy = policy.option("backendtls.dev/min-tls-version", "1.3");
        }
        objects.push(policy.yaml());
        route =
            route.rule(&format!("/{service}"), service, backendtls_e2e::policy_support::BTLS_PORT);
    }
    objects.push(route.yaml());
    config.write("objects.yaml", &documents(&objects));
    Setup { config, ca, other_ca, _backend: backend, gateway_port }
}

/// `service -> report` from a list of probe reports (each policy is named after its Service).
fn by_policy(reports: &Value) -> BTreeMap<String, Value> {
    reports
        .as_array()
        .unwrap_or_else(|| panic!("probe reports: {reports}"))
        .iter()
        .map(|r| (r["policy"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn results(reports: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    reports.iter().map(|(p, r)| (p.clone(), r["result"].as_str().unwrap().to_string())).collect()
}

fn expected() -> BTreeMap<String, String> {
    EXPECTED.iter().map(|(s, r)| (s.to_string(), r.to_string())).collect()
}

fn probe_command(setup: &Setup, extra: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(loader_bin())
        .args(["probe", "--config-dir", setup.config.path().to_str().unwrap()])
        .args(["--probe-timeout", "3s"])
        .args(extra)
        .output()
        .expect("run backendtls-loader probe");
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn probe_command_classifies_every_endpoint() {
    let setup = setup();
    let (code, stdout, stderr) = probe_command(&setup, &["-o", "json"]);
    assert_eq!(code, Some(1), "any failed probe exits 1\n{stdout}\n{stderr}");
    let document: Value = serde_json::from_str(&stdout).unwrap();
    let reports = by_policy(&document["probes"]);
    assert_eq!(results(&reports), expected(), "{stdout}");

    let good = &reports["good"];
    assert_eq!(good["sni"], ROUTE_HOST);
    assert_eq!(
        good["certificate"]["subject_alt_names"],
        serde_json::json!([format!("dns:{ROUTE_HOST}")])
    );
    assert!(good["certificate"]["issuer"].as_str().unwrap().contains("probe policy CA"), "{good}");
    assert!(good["tls_version"].as_str().unwrap().starts_with("TLSv1."), "{good}");
    assert!(good["certificate"]["not_after_seconds"].as_u64().unwrap() > 1_800_000_000, "{good}");

    let expired = &reports["expired"];
    assert_eq!(expired["certificate"]["not_after"], "2020-01-01T00:00:00Z", "{expired}");
    assert!(expired["detail"].as_str().unwrap().contains("expired at 2020-01-01"), "{expired}");
    // The names the certificate does carry, so the fix is obvious.
    let wrong = &reports["wrong-name"];
    assert!(wrong["detail"].as_str().unwrap().contains("dns:wrong.example.net"), "{wrong}");
    assert_eq!(
        wrong["certificate"]["subject_alt_names"],
        serde_json::json!(["dns:wrong.example.net"])
    );
    assert!(reports["other-ca"]["certificate"]["issuer"]
        .as_str()
        .unwrap()
        .contains("probe other CA"));
    assert!(reports["plaintext"]["certificate"].is_null());
    assert!(reports["closed"]["detail"].as_str().unwrap().to_lowercase().contains("refused"));

    // One policy at a time, and a table for people.
    let (code, stdout, _) = probe_command(&setup, &["--policy", &format!("{NS}/good")]);
    assert_eq!(code, Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("POLICY") && lines[1].contains(" ok "), "{stdout}");
    let (code, _, stderr) = probe_command(&setup, &["--policy", &format!("{NS}/missing")]);
    assert_eq!(code, Some(2), "an unknown policy is a usage error: {stderr}");
}

#[test]
fn serve_probes_and_a_live_ca_fix_turns_green() {
    let setup = setup();
    // An hour between runs: only the configuration change below can trigger the second run.
    // Envoy's side of expiry too: the dynamic-module validator's gauge.
    use_module_search_path();
    let so = filter_so();
    let loader = Loader::start_with_args(
        setup.config.path(),
        free_port(),
        free_port(),
        &[
            "--probe-interval",
            "1h",
            "--probe-timeout",
            "3s",
            "--validator",
            "dynamic-module",
            "--filter",
            "dynamic-module",
            "--filter-path",
            so.to_str().expect("UTF-8 path"),
        ],
    );
    let admin = free_port();
    let envoy =
        Envoy::start(&ads_bootstrap(loader.xds_port(), admin, "e2e-probe", Ads::Delta), admin);
    let probed = |loader: &Loader| -> Option<BTreeMap<String, Value>> {
        let status = loader.status();
        let reports = by_policy(status.get("probes")?);
        (reports.len() == EXPECTED.len()).then_some(reports)
    };
    let reports =
        wait_until("the first probe run in /status", Duration::from_secs(30), || probed(&loader));
    assert_eq!(results(&reports), expected());

    let (status, metrics) = try_http_get(loader.admin_port(), "127.0.0.1", "/metrics").unwrap();
    assert_eq!(status, 200);
    for (service, result) in EXPECTED {
        let series =
            format!("backendtls_probe_result{{namespace=\"{NS}\",policy=\"{NS}/{service}\",");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("{series} in\n{metrics}"));
        assert!(line.ends_with(&format!("result=\"{result}\"}} 1")), "{line}");
    }
    let not_after = format!(
        "backendtls_backend_certificate_not_after_seconds{{namespace=\"{NS}\",policy=\"{NS}/expired\","
    );
    let line = metrics.lines().find(|l| l.starts_with(&not_after)).expect("expiry gauge");
    assert!(line.ends_with(" 1577836800"), "2020-01-01T00:00:00Z: {line}");

    let (status, page) = try_http_get(loader.admin_port(), "127.0.0.1", "/ui").unwrap();
    assert_eq!(status, 200);
    for (service, result) in EXPECTED {
        assert!(page.contains(&format!("data-policy=\"{NS}/{service}\"")), "{page}");
        assert!(page.contains(&format!("data-result=\"{result}\"")), "{page}");
    }

    // The same expiry as Envoy's validator reports it: one request to each of two backends
    // (refused at the handshake for the expired one, but its leaf is read all the same).
    for (service, status, not_after) in
        [("good", 200, 67_090_118_400u64), ("expired", 503, 1_577_836_800)]
    {
        wait_until(
            &format!("GET /{service} through Envoy: {status}"),
            Duration::from_secs(30),
            || {
                let got = try_http_get(setup.gateway_port, ROUTE_HOST, &format!("/{service}"))
                    .map(|(s, _)| s)
                    .ok();
                (got == Some(status)).then_some(()).ok_or(got)
            },
        );
        let gauge =
            format!("backendtls.backend_certificate_not_after_seconds.policy.{NS}/{service}");
        assert_eq!(envoy.stat(&gauge), not_after, "{gauge}");
    }

    // The fix: the CA ConfigMap also trusts the other CA. No restart, no probe interval.
    let both = format!("{}{}", setup.ca.cert_pem(), setup.other_ca.cert_pem());
    setup.config.write("ca.yaml", &ca_config_map_yaml(CA_CONFIG_MAP, &both));
    let reports = wait_until("the other-CA row to turn ok", Duration::from_secs(30), || {
        probed(&loader).filter(|r| r["other-ca"]["result"] == "ok")
    });
    let mut want = expected();
    want.insert("other-ca".into(), "ok".into());
    assert_eq!(results(&reports), want);
    let (_, page) = try_http_get(loader.admin_port(), "127.0.0.1", "/ui").unwrap();
    assert!(
        page.contains(&format!("class=\"probe good\" data-policy=\"{NS}/other-ca\"")),
        "{page}"
    );
}
