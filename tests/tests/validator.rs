//! Acceptance tests of the backendtls certificate validator (the dynamic module as
//! `envoy.tls.cert_validator.dynamic_modules`) in a real Envoy 1.40 with real NGINX backends:
//!
//! - the certificate matrix through Envoy's default validator and through ours, side by side:
//!   ours refuses everything the default refuses, every difference is one of the documented
//!   ones ([`STRICTER_THAN_DEFAULT`], also in filter/README.md), every refusal has the expected
//!   reason (counter and transport failure reason), and no request byte reaches a refused backend;
//! - the per-policy counters are exact: verified handshakes equal Envoy's
//!   `cluster.<c>.ssl.handshake`, failures equal `ssl.fail_verify_error`;
//! - without the backendtls HTTP filter the validator still verifies, but has no counters;
//! - through the loader (`--validator dynamic-module`): CA rotation and policy edits apply live.
//!
//! The module is built (release) on first use; `BACKENDTLS_FILTER_SO` points at a prebuilt one.

use std::collections::BTreeSet;
use std::time::Duration;

use backendtls_e2e::guide::{wait_for_gateway_status, GUIDE_HOST, HOSTNAME, NGINX_CLUSTER};
use backendtls_e2e::manifests::POLICY_FILE;
use backendtls_e2e::nginx::{Backend, TlsServer};
use backendtls_e2e::validator_support::{
    access_lines, filter_so, matrix, static_config, use_module_search_path, Case, ClusterSpec,
    Outcome, Validator,
};
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, HttpConnection, Loader,
    Manifests, Nginx, TestCa,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Cases the backendtls validator refuses although Envoy's default validator (configured as the
/// loader configures it) accepts them, each with why that is right. filter/README.md lists the
/// same. None in this matrix: BoringSSL also requires serverAuth (`client_auth_only`), refuses
/// an issuer that is not a CA, and accepts the policy's intermediate as an anchor.
const STRICTER_THAN_DEFAULT: &[(&str, &str)] = &[];

/// Cases the backendtls validator accepts although Envoy's default validator refuses them. None:
/// the one this matrix once found (`policy_wildcard_upper_case`, a case-sensitive policy wildcard
/// in the loader's SAN regex) was fixed in the loader.
const LAXER_THAN_DEFAULT: &[(&str, &str)] = &[];

/// `backendtls.<stat>.policy.<policy>` (the dynamic module's metrics namespace is `backendtls`).
fn stat_name(stat: &str, policy: &str) -> String {
    format!("backendtls.{stat}.policy.{policy}")
}

fn status_of(port: u16, host: &str, path: &str) -> u16 {
    try_http_get(port, host, path).unwrap_or_else(|e| panic!("GET {path}: {e}")).0
}

#[derive(Debug)]
struct Row {
    case: &'static str,
    about: &'static str,
    default: u16,
    ours: u16,
    detail: String,
}

#[test]
fn matrix_default_validator_vs_ours() {
    let cases = matrix();
    let nginx =
        Backend::start(&cases.iter().map(|c| TlsServer::new(&c.server)).collect::<Vec<_>>());
    use_module_search_path();
    let clusters: Vec<ClusterSpec> = cases
        .iter()
        .zip(nginx.ports())
        .flat_map(|(case, port)| {
            [
                ClusterSpec::for_case(case, Validator::Default, *port),
                ClusterSpec::for_case(case, Validator::Module, *port),
            ]
        })
        .collect();
    let (listener, admin) = (free_port(), free_port());
    let envoy = Envoy::start(&static_config(listener, admin, true, &clusters), admin);

    let mut rows = Vec::new();
    for case in &cases {
        let default = status_of(listener, case.hostname, &format!("/default_{}/", case.name));
        let ours = status_of(listener, case.hostname, &format!("/module_{}/", case.name));
        for status in [default, ours] {
            assert!(status == 200 || status == 503, "{}: unexpected status {status}", case.name);
        }
        rows.push(Row { case: case.name, about: case.about, default, ours, detail: String::new() });
    }
    let log = wait_until("an access log line per request", TIMEOUT, || {
        let lines = access_lines(&envoy.log());
        let count = lines.len();
        (count >= 2 * cases.len()).then_some(lines).ok_or(count)
    });
    let stats = envoy.stats();
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);

    for (case, row) in cases.iter().zip(&mut rows) {
        let module_cluster = format!("module_{}", case.name);
        let (_, _, reason) =
            log.iter().find(|(cluster, _, _)| *cluster == module_cluster).expect("access line");
        row.detail = reason.clone();
        let failures: Vec<(&str, u64)> = backendtls_filter_reasons()
            .into_iter()
            .map(|r| {
                (r, stat(&stat_name(&format!("handshake_failures.reason.{r}"), &case.policy())))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let verified = stat(&stat_name("handshakes_verified", &case.policy()));
        match case.ours {
            Outcome::Accept => {
                assert_eq!(row.ours, 200, "{}: ours must accept ({reason})", case.name);
                assert_eq!(failures, [], "{}", case.name);
                assert_eq!(
                    verified,
                    stat(&format!("cluster.{module_cluster}.ssl.handshake")),
                    "{}: verified handshakes vs Envoy's",
                    case.name
                );
                assert!(verified >= 1, "{}", case.name);
            }
            Outcome::Reject(want) => {
                assert_eq!(row.ours, 503, "{}: ours must refuse", case.name);
                assert_eq!(failures, [(want, 1)], "{}: one refusal with reason {want}", case.name);
                assert_eq!(verified, 0, "{}", case.name);
                assert!(
                    reason.contains(&format!("backendtls:_{want}:"))
                        || reason.contains(&format!("backendtls: {want}:")),
                    "{}: transport failure reason {reason:?} lacks the validator's detail",
                    case.name
                );
                assert_eq!(
                    stat(&format!("cluster.{module_cluster}.ssl.fail_verify_error")),
                    1,
                    "{}",
                    case.name
                );
            }
        }
    }

    print_table(&rows);

    // Ours refuses everything the default refuses, but for the documented case; every other
    // difference is documented too.
    let differ = |ours: u16, default: u16| -> BTreeSet<&str> {
        rows.iter()
            .filter(|r| (r.ours == 200) == (ours == 200) && (r.default == 200) == (default == 200))
            .map(|r| r.case)
            .collect()
    };
    let documented = |list: &[(&'static str, &str)]| list.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        differ(200, 503),
        documented(LAXER_THAN_DEFAULT),
        "accepted by ours, refused by Envoy's default"
    );
    assert_eq!(
        differ(503, 200),
        documented(STRICTER_THAN_DEFAULT),
        "refused by ours, accepted by Envoy's default"
    );
    for (case, why) in LAXER_THAN_DEFAULT.iter().chain(STRICTER_THAN_DEFAULT) {
        println!("difference: {case}: {why}");
    }

    // No request byte reached a backend whose certificate was refused: NGINX logs every request
    // it read (even a malformed one, as 400), and it logged none for a refused route.
    let access = nginx.requests();
    for row in &rows {
        for (route, status) in [("module", row.ours), ("default", row.default)] {
            let path = format!("/{route}_{}/", row.case);
            let reached = access.iter().filter(|a| a.request.contains(&path)).count();
            match status {
                200 => assert_eq!(reached, 1, "{path} answered 200 but NGINX logged {reached}"),
                _ => assert_eq!(reached, 0, "{path} was refused but reached NGINX:\n{access:?}"),
            }
        }
    }
}

/// The `reason` label values the validator counts (from the contract, as the user sees them).
fn backendtls_filter_reasons() -> Vec<&'static str> {
    backendtls_contract::HandshakeFailure::ALL.iter().map(|reason| reason.label()).collect()
}

fn print_table(rows: &[Row]) {
    let verdict = |s: u16| if s == 200 { "accept" } else { "REJECT" };
    println!("\n| case | certificate | Envoy default | backendtls | backendtls detail |");
    println!("|---|---|---|---|---|");
    for row in rows {
        // Envoy's access log prints the reason with its spaces as underscores.
        let detail = row
            .detail
            .split("CERTIFICATE_VERIFY_FAILED:")
            .nth(1)
            .map(|d| d.trim_end_matches(":TLS_error_end").to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} | {} | {} | {} |",
            row.case,
            row.about,
            verdict(row.default),
            verdict(row.ours),
            detail
        );
    }
}

fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases.iter().find(|c| c.name == name).expect("case exists")
}

/// The counters are exact: one `handshakes_verified` per handshake Envoy counts, resumed or
/// not, and one `handshake_failures` per refused handshake.
#[test]
fn counters_equal_envoy_handshake_stats() {
    let cases = matrix();
    let (valid, wrong) = (case(&cases, "valid_leaf"), case(&cases, "wrong_ca"));
    let nginx = Backend::start(&[TlsServer::new(&valid.server), TlsServer::new(&wrong.server)]);
    use_module_search_path();
    let spec = |name: &str, policy: &str, case: &Case, port: u16, session_keys: Option<u32>| {
        let mut spec = ClusterSpec::for_case(case, Validator::Module, port);
        spec.name = name.into();
        spec.policy = policy.into();
        spec.max_requests_per_connection = Some(1);
        spec.max_session_keys = session_keys;
        spec
    };
    let (ok_port, wrong_port) = (nginx.ports()[0], nginx.ports()[1]);
    let mut default_resumed = ClusterSpec::for_case(valid, Validator::Default, ok_port);
    default_resumed.max_requests_per_connection = Some(1);
    let clusters = [
        spec("full", "count/full", valid, ok_port, Some(0)),
        spec("resumed", "count/resumed", valid, ok_port, None),
        spec("refused", "count/refused", wrong, wrong_port, None),
        default_resumed,
    ];
    let (listener, admin) = (free_port(), free_port());
    let envoy = Envoy::start(&static_config(listener, admin, true, &clusters), admin);

    const N: u64 = 20;
    const K: u64 = 5;
    let mut connection = HttpConnection::connect(listener).expect("connect");
    for _ in 0..N {
        for path in ["/full/", "/resumed/", "/default_valid_leaf/"] {
            assert_eq!(connection.get(HOSTNAME, path).expect("GET").0, 200, "{path}");
        }
    }
    for _ in 0..K {
        assert_eq!(connection.get(HOSTNAME, "/refused/").expect("GET").0, 503);
    }
    let s = |name: &str| envoy.stat(name);
    wait_until("Envoy to count every handshake", TIMEOUT, || {
        let counted = s("cluster.full.ssl.handshake") + s("cluster.resumed.ssl.handshake");
        (counted == 2 * N).then_some(()).ok_or(counted)
    });
    println!(
        "full: handshakes {} verified {} | resumed: handshakes {} (session_reused {}) verified {} \
         | default: handshakes {} (session_reused {}) | refused: fail_verify_error {} counted {}",
        s("cluster.full.ssl.handshake"),
        s(&stat_name("handshakes_verified", "count/full")),
        s("cluster.resumed.ssl.handshake"),
        s("cluster.resumed.ssl.session_reused"),
        s(&stat_name("handshakes_verified", "count/resumed")),
        s("cluster.default_valid_leaf.ssl.handshake"),
        s("cluster.default_valid_leaf.ssl.session_reused"),
        s("cluster.refused.ssl.fail_verify_error"),
        s(&stat_name("handshake_failures.reason.unknown_issuer", "count/refused")),
    );

    // Full handshakes only: every one verified, exactly once.
    assert_eq!(s("cluster.full.ssl.session_reused"), 0);
    assert_eq!(s("cluster.full.ssl.handshake"), N);
    assert_eq!(s(&stat_name("handshakes_verified", "count/full")), N);
    // With resumption (Envoy's default), Envoy has the validator check a resumed session's
    // chain again, so the counts still agree.
    assert_eq!(
        s(&stat_name("handshakes_verified", "count/resumed")),
        s("cluster.resumed.ssl.handshake")
    );
    // Refusals: one per refused handshake, as Envoy counts them.
    assert_eq!(s("cluster.refused.ssl.fail_verify_error"), K);
    assert_eq!(s(&stat_name("handshake_failures.reason.unknown_issuer", "count/refused")), K);
    assert_eq!(s(&stat_name("handshakes_verified", "count/refused")), 0);
}

/// Without the backendtls HTTP filter in any listener the validator has nowhere to count: it
/// still verifies every handshake (Envoy's `ssl.*` stats count them) and says once in the log
/// why the `backendtls.*` counters are missing.
#[test]
fn without_the_http_filter_the_validator_verifies_but_cannot_count() {
    let cases = matrix();
    let (valid, wrong) = (case(&cases, "valid_leaf"), case(&cases, "wrong_ca"));
    let nginx = Backend::start(&[TlsServer::new(&valid.server), TlsServer::new(&wrong.server)]);
    use_module_search_path();
    let clusters = [
        ClusterSpec::for_case(valid, Validator::Module, nginx.ports()[0]),
        ClusterSpec::for_case(wrong, Validator::Module, nginx.ports()[1]),
    ];
    let (listener, admin) = (free_port(), free_port());
    let envoy = Envoy::start(&static_config(listener, admin, false, &clusters), admin);
    assert_eq!(status_of(listener, HOSTNAME, "/module_valid_leaf/"), 200);
    assert_eq!(status_of(listener, HOSTNAME, "/module_wrong_ca/"), 503);
    assert_eq!(envoy.stat("cluster.module_valid_leaf.ssl.handshake"), 1);
    assert_eq!(envoy.stat("cluster.module_wrong_ca.ssl.fail_verify_error"), 1);
    let stats = envoy.stats();
    let ours: Vec<&String> = stats.keys().filter(|k| k.starts_with("backendtls.")).collect();
    assert_eq!(ours, Vec::<&String>::new(), "no HTTP filter, no backendtls counters");
    let log = envoy.log();
    assert_eq!(
        log.matches("need the backendtls HTTP filter").count(),
        1,
        "the validator explains the missing counters once"
    );
    assert!(nginx.requests().iter().all(|a| !a.request.contains("/module_wrong_ca/")));
}

/// A configuration the validator cannot use is refused when Envoy builds the cluster, with the
/// validator's reason (never a cluster that verifies nothing).
#[test]
fn an_unusable_validator_configuration_rejects_the_cluster() {
    let cases = matrix();
    let valid = case(&cases, "valid_leaf");
    use_module_search_path();
    let mut spec = ClusterSpec::for_case(valid, Validator::Module, free_port());
    spec.anchors_pem = "not a certificate".into();
    let (ok, output) =
        backendtls_e2e::validate_bootstrap(&static_config(free_port(), free_port(), true, &[spec]));
    assert!(!ok, "Envoy accepted a validator without trust anchors:\n{output}");
    assert!(
        output.contains("Failed to initialize dynamic module cert validator config"),
        "{output}"
    );
    assert!(output.contains("trust_anchors_pem holds no CERTIFICATE block"), "{output}");
}

/// The guide through the loader with `--validator dynamic-module`: the handshake is verified by
/// the module (counted per policy, equal to Envoy's handshakes); a CA rotation and a policy edit
/// apply live; no request reaches NGINX while its certificate does not satisfy the policy.
#[test]
fn through_the_loader_rotation_and_policy_edits_apply_live() {
    use_module_search_path();
    let so = filter_so();
    let ca = TestCa::new("backendtls validator e2e CA");
    let mut nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    let so_arg = so.to_str().expect("UTF-8 path");
    let _loader = Loader::start_with_args(
        manifests.dir(),
        free_port(),
        free_port(),
        &["--validator", "dynamic-module", "--filter", "dynamic-module", "--filter-path", so_arg],
    );
    let admin = free_port();
    let envoy = Envoy::start(
        &ads_bootstrap(_loader.xds_port(), admin, "e2e-validator-loader", Ads::Delta),
        admin,
    );
    const POLICY: &str = "default/nginx-tls-policy";
    let verified = || envoy.stat(&stat_name("handshakes_verified", POLICY));
    let failures = |reason: &str| {
        envoy.stat(&stat_name(&format!("handshake_failures.reason.{reason}"), POLICY))
    };
    let handshakes = || envoy.stat(&format!("cluster.{NGINX_CLUSTER}.ssl.handshake"));

    wait_for_gateway_status(gateway_port, 200);
    let dump = envoy.admin_get("/config_dump?resource=dynamic_active_clusters");
    assert!(
        dump.contains("envoy.tls.cert_validator.dynamic_modules"),
        "the loader's cluster:\n{dump}"
    );
    assert!(verified() >= 1);
    assert_eq!(verified(), handshakes(), "every handshake went through the module");

    // CA rotation. First the backend moves to a certificate from a new CA: refused at the
    // handshake, and nothing reaches NGINX.
    let new_ca = TestCa::new("backendtls validator e2e CA, rotated");
    nginx.replace_certificate(&new_ca.issue(&[HOSTNAME]));
    let served = nginx.access_log_lines().len();
    wait_for_gateway_status(gateway_port, 503);
    for _ in 0..3 {
        assert_eq!(try_http_get(gateway_port, GUIDE_HOST, "/").expect("GET").0, 503);
    }
    assert!(failures("unknown_issuer") >= 4);
    assert_eq!(nginx.access_log_lines().len(), served, "a refused backend received a request");
    // Then the policy's CA ConfigMap follows: the cluster is replaced, traffic flows again.
    manifests.set_ca(new_ca.cert_pem());
    wait_for_gateway_status(gateway_port, 200);

    // A policy edit: the hostname moves to a name the certificate does not carry.
    let policy = std::fs::read_to_string(manifests.path(POLICY_FILE)).expect("read policy");
    let edited = policy.replacen("hostname: example.com", "hostname: other.example", 1);
    assert_ne!(edited, policy, "the guide's policy names example.com");
    manifests.write_file(POLICY_FILE, &edited);
    wait_for_gateway_status(gateway_port, 503);
    let served = nginx.access_log_lines().len();
    for _ in 0..3 {
        assert_eq!(try_http_get(gateway_port, GUIDE_HOST, "/").expect("GET").0, 503);
    }
    assert!(failures("name_mismatch") >= 4);
    assert_eq!(nginx.access_log_lines().len(), served, "a refused backend received a request");
    // And back.
    manifests.recreate_policy();
    wait_for_gateway_status(gateway_port, 200);

    wait_until("the counters to match Envoy's handshakes", TIMEOUT, || {
        let (v, h) = (verified(), handshakes());
        (v == h).then_some(()).ok_or((v, h))
    });
    assert_eq!(nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}
