//! The loader's Envoy SAN matchers in a real Envoy 1.40: the longest DNS identities the loader
//! serves with Envoy's validator (every regex at most `ENVOY_REGEX_MAX_LEN` bytes) produce
//! regexes that Envoy accepts under its default RE2 program size limit (100), so the loader's
//! length bound is a safe stand-in for the program size it cannot compute. (Which certificates
//! the matchers accept is `loader/tests/identity_cases.rs`; they run through Envoy end to end in
//! `tests/tests/filter.rs` and `tests/tests/validator.rs`.)

use backendtls_contract::Identity;
use backendtls_e2e::{static_listener_bootstrap, validate_bootstrap, TestCa};
use backendtls_loader::xds::identity::{san_matchers, ENVOY_REGEX_MAX_LEN};
use backendtls_loader::xds::json::to_json;
use serde_json::Value;

/// The matchers as Envoy's JSON (which is YAML).
fn matchers_json(identities: &[Identity]) -> Value {
    Value::Array(san_matchers(identities).iter().map(to_json).collect())
}

/// The longest regex among an identity's matchers.
fn longest_regex(identity: &Identity) -> usize {
    let matchers = matchers_json(std::slice::from_ref(identity));
    let regexes = matchers.as_array().unwrap().iter().map(|m| &m["matcher"]["safe_regex"]["regex"]);
    regexes.filter_map(Value::as_str).map(str::len).max().unwrap_or(0)
}

/// A static config whose one cluster verifies with the loader's matchers for `identities`.
fn config_with(identities: &[Identity], ca_path: &std::path::Path) -> String {
    let cluster = format!(
        r#"
  - name: limit
    type: STATIC
    load_assignment:
      cluster_name: limit
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }} }}] }}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: {} }}
            match_typed_subject_alt_names: {}"#,
        ca_path.display(),
        matchers_json(identities)
    );
    let routes = r#"
              - { match: { prefix: "/" }, route: { cluster: limit } }"#;
    static_listener_bootstrap(1, 2, "-", routes, "", &cluster)
}

/// The longest identity of the form `shape(label)` whose regexes fit the bound.
fn longest_fitting(shape: impl Fn(&str) -> String) -> Identity {
    (1..=63)
        .rev()
        .map(|n| Identity::dns(&shape(&"a".repeat(n))).expect("a DNS identity"))
        .find(|identity| longest_regex(identity) <= ENVOY_REGEX_MAX_LEN)
        .expect("some label length fits")
}

#[test]
fn the_longest_identities_the_loader_serves_are_accepted_by_envoy() {
    let identities = [
        // An exact name with a covering certificate wildcard (two regexes).
        longest_fitting(|label| format!("{label}.{}.example.com", "b".repeat(20))),
        // An exact name of two labels (one regex).
        longest_fitting(|label| format!("{label}.{}", "c".repeat(30))),
        // A policy wildcard.
        longest_fitting(|label| format!("*.{label}.example.com")),
    ];
    for identity in &identities {
        assert_eq!(longest_regex(identity), ENVOY_REGEX_MAX_LEN, "{identity} is not at the bound");
    }
    let dir = tempfile::Builder::new().prefix("btls-san-limit-").tempdir().expect("temp dir");
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, TestCa::new("limit CA").cert_pem()).expect("write ca.crt");
    let (ok, output) = validate_bootstrap(&config_with(&identities, &ca_path));
    assert!(ok, "Envoy refused the loader's longest SAN matchers:\n{output}");

    // The bound is not loose by much: a few bytes more and Envoy's default limit refuses.
    let over =
        Identity::dns(&format!("{}.{}.example.com", "a".repeat(63), "a".repeat(30))).unwrap();
    assert!(longest_regex(&over) > ENVOY_REGEX_MAX_LEN + 10);
    let (ok, output) = validate_bootstrap(&config_with(&[over], &ca_path));
    assert!(!ok && output.contains("RE2 program size"), "{output}");
}
