//! Golden files, one directory per case under `tests/golden/`: `input/` (manifests) beside the
//! expected output of each layer: `ir.json` (resolve), `envoy.json` (xDS translation, ADS form),
//! `status.json` (policy status and input problems). `UPDATE_GOLDEN=1 cargo test` rewrites them;
//! review the diff like code.

use backendtls_loader::xds::translate::Translator;
use backendtls_loader::{pipeline, resolve, source::ConfigDir, xds};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::{Message, Name};
use std::path::{Path, PathBuf};

fn check(case: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let mut config = ConfigDir::new(dir.join("input"));
    config.reload().unwrap();
    let options = resolve::Options {
        gateway_class: Some("backendtls".into()).filter(|_| {
            matches!(case, "routes" | "http_core" | "https" | "grpc_routes" | "tls_routes")
        }),
        ..Default::default()
    };
    let build = pipeline::build(&config, &options, &Default::default());
    let resources = &build.resources;
    let envoy = serde_json::json!({
        "clusters": resources.clusters.iter().map(|r| xds::json::to_json(&r.resource)).collect::<Vec<_>>(),
        "endpoints": resources.endpoints.iter().map(|r| xds::json::to_json(&r.resource)).collect::<Vec<_>>(),
        "secrets": resources.secrets.iter().map(|r| xds::json::to_json(&r.resource)).collect::<Vec<_>>(),
        "listeners": resources.listeners.iter().map(|r| xds::json::to_json(&r.resource)).collect::<Vec<_>>(),
        "routes": resources.routes.iter().map(|r| xds::json::to_json(&r.resource)).collect::<Vec<_>>(),
    });
    // Paths in errors are relative to the case, so the files read the same on every machine.
    let mut status = build.resolved.status_json();
    for error in status["errors"].as_array_mut().unwrap() {
        let file = error["file"].as_str().unwrap().to_string();
        error["file"] = Path::new(&file).strip_prefix(&dir).unwrap().display().to_string().into();
    }
    // `serve`'s translation (encoded directly, per virtual host) gives the same bytes.
    let packed =
        Translator::default().translate(&build.resolved.resolution.ir, &Default::default());
    for routes in &resources.routes {
        let served = &packed[&RouteConfiguration::type_url()][&routes.resource.name];
        assert_eq!(served.resource.value, routes.resource.encode_to_vec(), "{case}: RDS bytes");
    }
    for cluster in &resources.clusters {
        let served = &packed[&Cluster::type_url()][&cluster.resource.name];
        assert_eq!(served.version, cluster.version, "{case}: cluster versions");
    }
    compare(&dir.join("ir.json"), &serde_json::to_value(&build.resolved.resolution.ir).unwrap());
    compare(&dir.join("envoy.json"), &envoy);
    compare(&dir.join("status.json"), &status);
}

fn compare(path: &Path, actual: &serde_json::Value) {
    let actual = format!("{actual:#}\n");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display())
    });
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn guide() {
    check("guide");
}

#[test]
fn policies() {
    check("policies");
}

#[test]
fn http_core() {
    check("http_core");
}

#[test]
fn routes() {
    check("routes");
}

#[test]
fn gateways() {
    check("gateways");
}

#[test]
fn https() {
    check("https");
}

/// envoy/bootstrap.yaml is what `backendtls-loader bootstrap --xds-certs .demo/xds` prints (the
/// certificates `make demo` creates; relative paths, so Envoy runs from the repository root).
#[test]
fn shipped_bootstrap_is_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("envoy/bootstrap.yaml");
    let bootstrap = xds::bootstrap::ads_bootstrap(&xds::bootstrap::AdsBootstrapOptions {
        xds_address: "127.0.0.1:18000".parse().unwrap(),
        admin_address: "127.0.0.1:19000".parse().unwrap(),
        node_id: "backendtls-envoy".into(),
        delta: true,
        tls: Some(xds::bootstrap::XdsClientTls::in_dir(
            ".demo/xds",
            "backendtls-envoy",
            "backendtls-loader",
        )),
    });
    let actual = xds::json::to_yaml(&xds::json::to_json(&bootstrap));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "regenerate with: backendtls-loader bootstrap --xds-certs .demo/xds > envoy/bootstrap.yaml"
    );
}

/// `--validator dynamic-module`: the module verifies chain and identity, so the cluster carries
/// the policy's anchors and identities in the validator's config instead of SDS and SAN matchers.
#[test]
fn dynamic_module_validator_config() {
    use backendtls_loader::xds::translate::{TranslateOptions, Validator};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/guide/input");
    let mut config = ConfigDir::new(dir);
    config.reload().unwrap();
    let options = TranslateOptions { validator: Validator::DynamicModule, ..Default::default() };
    let build = pipeline::build(&config, &Default::default(), &options);
    let cluster = xds::json::to_json(&build.resources.clusters[0].resource);
    let tls = &cluster["transport_socket"]["typed_config"];
    let validation = &tls["common_tls_context"]["validation_context"];
    let validator = &validation["custom_validator_config"];
    assert_eq!(validator["name"], "envoy.tls.cert_validator.dynamic_modules");
    assert_eq!(validator["typed_config"]["dynamic_module_config"]["name"], "backendtls_filter");
    let config: serde_json::Value = serde_json::from_str(
        validator["typed_config"]["validator_config"]["value"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(config["policy"], "default/nginx-tls-policy");
    assert_eq!(config["identities"], serde_json::json!(["dns:example.com"]));
    assert!(config["trust_anchors_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(validation.get("match_typed_subject_alt_names").is_none());
    assert!(tls["common_tls_context"].get("combined_validation_context").is_none());
    assert_eq!(tls["sni"], "example.com");
}

#[test]
fn grpc_routes() {
    check("grpc_routes");
}

#[test]
fn tls_routes() {
    check("tls_routes");
}
