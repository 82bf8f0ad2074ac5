//! What operators look at, against a live stack (dynamic-module filter and validator, probes):
//!
//! - the Grafana dashboard (`deploy/grafana/backendtls.json`) queries only what exists: every
//!   metric and every label its PromQL names is found in a live scrape of Envoy's
//!   `/stats/prometheus` and the loader's `/metrics`, after traffic that makes each series appear
//!   (a verified backend, one from another CA, an invalid policy);
//! - the loader's `/ui` page, rendered by headless Chromium, shows each policy's conditions, its
//!   probe result and the Envoy's live counters for it (`serve --envoy-admin`).

use backendtls_e2e::paths::workspace_root;
use backendtls_e2e::policy_support::{
    btls_service_yaml, ca_config_map_yaml, documents, gateway_yaml, Backend, ConfigDir, Policy,
    Route, TlsServer, BTLS_PORT, CA_CONFIG_MAP, GATEWAY, NS, ROUTE_HOST,
};
use backendtls_e2e::validator_support::{filter_so, use_module_search_path};
use backendtls_e2e::{
    ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, Loader, TestCa,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Metric name -> the label names seen on it, from a Prometheus text exposition.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = metrics.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').expect("closing brace")];
            // Values are quoted; label names are what precedes each `="`.
            for part in body.split("\",") {
                if let Some((name, _)) = part.split_once("=\"") {
                    labels.insert(name.trim().to_string());
                }
            }
        }
    }
    metrics
}

/// The metric and label names one PromQL expression uses (enough PromQL for a dashboard: label
/// matchers, `by (...)`, functions, ranges, arithmetic).
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    const WORDS: &[&str] = &[
        "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "by", "without", "time",
        "topk", "bottomk", "on", "ignoring", "bool", "and", "or", "unless", "offset", "abs",
    ];
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut after_by = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1 + chars[i + 1..].iter().position(|&c| c == '"').expect("closing quote") + 1;
        } else if c == '[' {
            i += chars[i..].iter().position(|&c| c == ']').expect("closing bracket") + 1;
        } else if c == '{' {
            let end = i + chars[i..].iter().position(|&c| c == '}').expect("closing brace");
            let body: String = chars[i + 1..end].iter().collect();
            let mut rest = body.as_str();
            while let Some(op) = rest.find(['=', '!']) {
                let name = rest[..op].trim().trim_start_matches(',').trim();
                labels.insert(name.to_string());
                let quote = rest[op..].find('"').expect("quoted value") + op;
                let close = rest[quote + 1..].find('"').expect("closing quote") + quote + 1;
                rest = &rest[close + 1..];
            }
            i = end + 1;
        } else if c == '(' && after_by {
            let end = i + chars[i..].iter().position(|&c| c == ')').expect("closing paren");
            let list: String = chars[i + 1..end].iter().collect();
            labels.extend(list.split(',').map(|l| l.trim().to_string()));
            after_by = false;
            i = end + 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:$".contains(chars[i]))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "by" || word == "without" {
                after_by = true;
            } else if !WORDS.contains(&word.as_str()) && !word.starts_with('$') {
                metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

fn dashboard_expressions() -> Vec<String> {
    let path = workspace_root().join("deploy/grafana/backendtls.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("every target has an expr").to_string())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["definition"].as_str() {
            // label_values(metric, label)
            let inner = query.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            exprs.push(format!("sum by ({}) ({})", label.trim(), metric.trim()));
        }
    }
    assert!(exprs.len() >= 10, "the dashboard has its panels: {exprs:?}");
    exprs
}

#[test]
fn promql_names_are_read_right() {
    let (metrics, labels) = promql_names(
        "min by (namespace, policy) ((backendtls_x{policy=~\"$policy\", result!=\"ok\"} - time()) / 86400) or rate(y_total[$__rate_interval])",
    );
    assert_eq!(metrics, BTreeSet::from(["backendtls_x".to_string(), "y_total".to_string()]));
    assert_eq!(labels, BTreeSet::from(["namespace", "policy", "result"].map(String::from)));
}

#[test]
fn every_metric_and_label_the_dashboard_queries_exists() {
    use_module_search_path();
    let so = filter_so();
    let ca = TestCa::new("dashboard CA");
    let other_ca = TestCa::new("dashboard other CA");
    let backend = Backend::start(&[
        TlsServer::new(&ca.issue(&[ROUTE_HOST])),
        TlsServer::new(&other_ca.issue(&[ROUTE_HOST])),
    ]);
    let gateway_port = free_port();
    let config = ConfigDir::new();
    let route = Route::new("dashboard")
        .rule("/good", "good", BTLS_PORT)
        .rule("/other-ca", "other-ca", BTLS_PORT)
        .rule("/broken", "broken", BTLS_PORT);
    config.write(
        "objects.yaml",
        &documents(&[
            gateway_yaml(GATEWAY, gateway_port),
            ca_config_map_yaml(CA_CONFIG_MAP, ca.cert_pem()),
            btls_service_yaml("good", backend.port(0)),
            btls_service_yaml("other-ca", backend.port(1)),
            btls_service_yaml("broken", backend.port(0)),
            Policy::new("good", "good").yaml(),
            Policy::new("other-ca", "other-ca").yaml(),
            Policy::new("broken", "broken").ca_config_map("no-such-config-map").yaml(),
            route.yaml(),
            // A weighted split onto the invalid policy: Envoy forwards that share to its cluster,
            // where the filter refuses it (`rejections{reason="invalid_policy"}`).
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: \
                 split, namespace: {NS}}}\nspec:\n  parentRefs: [{{name: {GATEWAY}}}]\n  \
                 hostnames: [{ROUTE_HOST}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, \
                 value: /split}}}}]\n    backendRefs:\n    - {{name: good, port: {BTLS_PORT}, \
                 weight: 1}}\n    - {{name: broken, port: {BTLS_PORT}, weight: 999}}\n"
            ),
        ]),
    );
    let so_arg = so.to_str().expect("UTF-8 path");
    let admin = free_port();
    let envoy_admin = format!("http://127.0.0.1:{admin}");
    let loader = Loader::start_with_args(
        config.path(),
        free_port(),
        free_port(),
        &[
            "--validator",
            "dynamic-module",
            "--filter",
            "dynamic-module",
            "--filter-path",
            so_arg,
            "--probe-interval",
            "1h",
            "--envoy-admin",
            &envoy_admin,
        ],
    );
    let envoy =
        Envoy::start(&ads_bootstrap(loader.xds_port(), admin, "e2e-dashboard", Ads::Delta), admin);
    for (path, status) in [("/good", 200), ("/other-ca", 503), ("/broken", 503)] {
        wait_until(&format!("GET {path} to answer {status}"), TIMEOUT, || {
            let got = try_http_get(gateway_port, ROUTE_HOST, path).map(|(s, _)| s).ok();
            (got == Some(status)).then_some(()).ok_or(got)
        });
    }
    wait_until("the filter to refuse a request for the invalid policy", TIMEOUT, || {
        let _ = try_http_get(gateway_port, ROUTE_HOST, "/split");
        envoy.admin_get("/stats?filter=rejections").contains("invalid_policy").then_some(())
    });
    wait_until("the first probe run", TIMEOUT, || {
        loader.metric("backendtls_probe_runs_total").filter(|runs| *runs >= 1.0)
    });

    let (status, envoy_text) = try_http_get(admin, "127.0.0.1", "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    let (status, loader_text) = try_http_get(loader.admin_port(), "127.0.0.1", "/metrics").unwrap();
    assert_eq!(status, 200);
    // The validator's expiry gauge: the backend's leaf, as Envoy saw it (rcgen's default
    // not-after, 4096-01-01).
    let gauge =
        format!("envoy_backendtls_backend_certificate_not_after_seconds{{policy=\"{NS}/good\"}} ");
    let line = envoy_text
        .lines()
        .find(|l| l.starts_with(&gauge))
        .unwrap_or_else(|| panic!("{gauge} in Envoy's scrape"));
    assert_eq!(line.strip_prefix(&gauge), Some("67090118400"), "{line}");
    let mut scraped = exposition(&envoy_text);
    for (name, labels) in exposition(&loader_text) {
        scraped.entry(name).or_default().extend(labels);
    }
    let mut missing = Vec::new();
    for expr in dashboard_expressions() {
        let (metrics, labels) = promql_names(&expr);
        let mut available = BTreeSet::new();
        for metric in &metrics {
            match scraped.get(metric) {
                Some(names) => available.extend(names.iter().cloned()),
                None => missing.push(format!("metric {metric} (in `{expr}`)")),
            }
        }
        for label in labels.difference(&available) {
            missing.push(format!("label {label} (in `{expr}`)"));
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what no scrape has:\n{}\n\nEnvoy:\n{}\n\nloader:\n{}",
        missing.join("\n"),
        envoy_text
            .lines()
            .filter(|l| l.contains("backendtls") || l.contains("ssl_handshake"))
            .collect::<Vec<_>>()
            .join("\n"),
        loader_text
    );

    // The status page, as a browser renders it: conditions, probe results and Envoy's counters
    // (read every 5 s), for each policy.
    let dom = wait_until("/ui to show Envoy's counters for the policies", TIMEOUT, || {
        let dom = chromium(&["--dump-dom"], loader.admin_port());
        (dom.contains("handshakes_verified 1")
            && dom.contains("handshake_failures.reason.unknown_issuer"))
        .then_some(dom.clone())
        .ok_or(dom)
    });
    for (policy, result) in
        [("good", "ok"), ("other-ca", "unknown_issuer"), ("broken", "policy_invalid")]
    {
        let row = format!(
            "class=\"probe {}\" data-policy=\"{NS}/{policy}\"",
            if result == "ok" { "good" } else { "bad" }
        );
        assert!(dom.contains(&row), "{row} in\n{dom}");
        assert!(dom.contains(&format!("data-result=\"{result}\"")), "{dom}");
    }
    assert!(dom.contains("NoValidCACertificate"), "the invalid policy's condition:\n{dom}");
    let dir = tempfile::tempdir().unwrap();
    let screenshot = dir.path().join("ui.png");
    let flag = format!("--screenshot={}", screenshot.display());
    chromium(&[&flag, "--window-size=1400,1300"], loader.admin_port());
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::write(workspace_root().join("docs/ui.png"), &png).unwrap();
    }
    drop(envoy);
}

/// Headless Chromium on the loader's `/ui` with `flags`; its stdout.
fn chromium(flags: &[&str], admin_port: u16) -> String {
    let output = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .args(["--no-first-run", "--hide-scrollbars", "--timeout=10000"])
        .args(flags)
        .arg(format!("http://127.0.0.1:{admin_port}/ui"))
        .output()
        .expect("run chromium (Debian package chromium; `make setup` installs it)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
