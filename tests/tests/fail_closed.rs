//! Never fail open: input the loader cannot use keeps every Service port a policy was meant for
//! encrypted or closed. Each test runs the real loader, a real Envoy over delta ADS and a TLS-only
//! NGINX that logs every request, including plaintext ones (which NGINX answers 400 and logs
//! without a TLS version): none may ever arrive.

use backendtls_e2e::policy_support::{
    btls_service_yaml, documents, run_check, run_loader_command, Fixture, Policy, PolicyStack,
    Route, BTLS_PORT, BTLS_PORT_NAME, CONVERGE_TIMEOUT, FAIL_CLOSED_PREFIX, NS, ROUTE_HOST,
};
use backendtls_e2e::NGINX_BODY;
use backendtls_e2e::{ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, Loader};

const SERVICE: &str = "fail-closed";
const PATH: &str = "/fail-closed";

/// The Service, its route, and nothing else of the policy's.
fn write_service_and_route(fixture: &Fixture) {
    let port = fixture.backend_port(0);
    fixture.config.write("service.yaml", &btls_service_yaml(SERVICE, port));
    fixture
        .config
        .write("route.yaml", &Route::new("fail-closed").rule(PATH, SERVICE, BTLS_PORT).yaml());
}

fn valid_policy(name: &str) -> String {
    Policy::new(name, SERVICE).section(BTLS_PORT_NAME).yaml()
}

/// Waits until the route fails closed and stays so; returns the body.
fn assert_fails_closed(stack: &PolicyStack, expected_in_body: &str) {
    let bodies = stack.assert_consistent_status(PATH, 503);
    for body in bodies {
        assert!(body.starts_with(FAIL_CLOSED_PREFIX), "{body:?}");
        assert!(body.contains(expected_in_body), "{expected_in_body:?} not in {body:?}");
    }
    stack.assert_no_plaintext();
}

fn assert_served_over_tls(stack: &PolicyStack) {
    let bodies = stack.assert_consistent_status(PATH, 200);
    assert!(bodies.iter().all(|b| b == NGINX_BODY), "{bodies:?}");
    let requests = stack.wait_for_backend_requests(PATH);
    assert!(requests.iter().all(|r| r.sni == ROUTE_HOST && !r.is_plaintext()), "{requests:?}");
    stack.assert_no_plaintext();
}

/// `check` exits 1 and `render` refuses (exit 1, nothing on stdout) on the current directory.
fn assert_check_and_render_fail(stack: &PolicyStack, expected: &str) {
    let check = run_check(stack.config.path(), "json");
    assert_eq!(check.code, Some(1), "check: {check:?}");
    let errors = check.json()["errors"].to_string();
    assert!(errors.contains(expected), "{expected:?} not in check's errors {errors}");
    let dir = stack.config.path().to_str().unwrap();
    let render = run_loader_command(&["render", "--config-dir", dir]);
    assert_eq!(render.code, Some(1), "render: {render:?}");
    assert_eq!(render.stdout, "", "render printed a bootstrap from broken input");
    assert!(render.stderr.contains(expected), "{expected:?} not in {}", render.stderr);
}

/// A BackendTLSPolicy that does not parse (misspelt field, unsupported apiVersion, a repeated key,
/// in YAML or JSON) or that names an IP address as hostname fails its targets closed with the
/// reason, from the first configuration on and when it replaces a valid policy live; `check` and
/// `render` fail. Fixing it serves over TLS again.
#[test]
fn policies_that_cannot_be_used_fail_their_targets_closed() {
    let fixture = Fixture::conformance();
    write_service_and_route(&fixture);
    // Served from the start with the guide's typo: `hostnam`.
    fixture.config.write("policy.yaml", &valid_policy("typo").replace("hostname:", "hostnam:"));
    let stack = fixture.start("e2e-fail-closed-parse");
    assert_fails_closed(&stack, "hostnam");
    stack.wait_for_condition("typo", "Accepted", "False", Some("Invalid"));
    assert_check_and_render_fail(&stack, "hostnam");

    let v1alpha2 = format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendTLSPolicy\n\
         metadata: {{name: old, namespace: {NS}}}\nspec:\n  targetRef: {{group: '', kind: Service, \
         name: {SERVICE}, sectionName: {BTLS_PORT_NAME}}}\n  tls: {{hostname: {ROUTE_HOST}}}\n"
    );
    let repeated = valid_policy("twice").replace(
        &format!("    hostname: {ROUTE_HOST}\n"),
        &format!("    hostname: {ROUTE_HOST}\n    hostname: evil.example.com\n"),
    );
    let ip = valid_policy("ip").replace(&format!("hostname: {ROUTE_HOST}"), "hostname: 10.0.0.5");
    let variants: [(&str, &str, String, &str); 4] = [
        ("policy.yaml", "old", v1alpha2, "v1alpha2"),
        ("policy.yaml", "twice", repeated, "duplicate key"),
        ("policy.yaml", "ip", ip, "no IP addresses"),
        (
            "policy.json",
            "json",
            yaml_to_json_text(&valid_policy("json").replace("hostname:", "hostnam:")),
            "hostnam",
        ),
    ];
    for (file, name, text, reason) in variants {
        // From a valid policy (200 over TLS) to the broken one, never leaving the Service
        // without a policy in between.
        stack.config.write("policy.yaml", &valid_policy("good"));
        assert_served_over_tls(&stack);
        stack.config.write(file, &text);
        if file != "policy.yaml" {
            stack.config.remove("policy.yaml");
        }
        assert_fails_closed(&stack, reason);
        stack.wait_for_condition(name, "Accepted", "False", Some("Invalid"));
        if name == "ip" {
            // Read fine, but not a usable policy: `check` says so; `render` renders it closed.
            let check = run_check(stack.config.path(), "json");
            assert_eq!(check.code, Some(1), "check: {check:?}");
            assert!(check.stdout.contains(reason), "{}", check.stdout);
        } else {
            assert_check_and_render_fail(&stack, reason);
        }
        if file != "policy.yaml" {
            stack.config.write("policy.yaml", &valid_policy("good"));
            stack.config.remove(file);
        }
    }
    stack.config.write("policy.yaml", &valid_policy("good"));
    assert_served_over_tls(&stack);
}

/// A file that cannot be parsed at all (here: broken YAML beside a valid policy) could hold the
/// policy of any Service. The loader does not serve a first configuration until it has read every
/// file (Envoy gets nothing, so nothing is routed, let alone in plaintext); once it has, a file
/// broken later keeps its last good content.
#[test]
fn a_file_never_read_blocks_the_first_configuration() {
    let fixture = Fixture::conformance();
    write_service_and_route(&fixture);
    let broken = documents(&[valid_policy("good"), "kind: [unclosed\n".to_string()]);
    fixture.config.write("policy.yaml", &broken);
    let loader = Loader::start_unready(fixture.config.path());
    let stack = stack_with(fixture, loader, "e2e-fail-closed-unread", Ads::Delta);
    let status = wait_until("the broken file in /status", CONVERGE_TIMEOUT, || {
        let status = stack.loader.status();
        let errors = status["errors"].to_string();
        let found = errors.contains("policy.yaml") && errors.contains("\"document\":2");
        found.then_some(status).ok_or(errors)
    });
    assert_eq!(status["snapshot_version"], 0, "{status}");
    assert_eq!(stack.loader.readyz(), Some(503));
    // Envoy has nothing to serve: the Gateway's port is not even open.
    for _ in 0..3 {
        let answer = try_http_get(stack.gateway_port, ROUTE_HOST, PATH);
        assert!(answer.is_err(), "the Gateway answered before the loader served: {answer:?}");
    }
    assert_check_and_render_fail(&stack, "invalid YAML");
    assert!(stack.backend.requests().is_empty(), "{:?}", stack.backend.requests());

    stack.config.write("policy.yaml", &valid_policy("good"));
    assert_served_over_tls(&stack);
    assert_eq!(stack.loader.readyz(), Some(200));

    // Broken again while serving: its last good content (the policy) stays in use.
    stack.config.write("policy.yaml", &broken);
    wait_until("the broken file in /status again", CONVERGE_TIMEOUT, || {
        let errors = stack.loader.status()["errors"].to_string();
        errors.contains("policy.yaml").then_some(()).ok_or(errors)
    });
    assert_served_over_tls(&stack);
}

/// The fixture's objects served by `loader` (started the way the test needs) to a new Envoy.
fn stack_with(fixture: Fixture, loader: Loader, node: &str, ads: Ads) -> PolicyStack {
    let envoy_admin_port = free_port();
    let envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin_port, node, ads),
        envoy_admin_port,
    );
    PolicyStack {
        envoy,
        loader,
        config: fixture.config,
        backend: fixture.backend,
        pki: fixture.pki,
        gateway_port: fixture.gateway_port,
    }
}

/// The JSON form of a YAML document, as text.
fn yaml_to_json_text(yaml: &str) -> String {
    let value: serde_json::Value = serde_norway::from_str(yaml).expect("valid YAML");
    serde_json::to_string_pretty(&value).unwrap()
}

/// A plain-HTTP server on loopback that answers 200 to anything and counts the requests it got:
/// the "Service served in plaintext" a policy is then added to.
struct PlainHttpServer {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl PlainHttpServer {
    fn start() -> PlainHttpServer {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        // One request head per iteration (keep-alive), no bodies.
                        let mut line = String::new();
                        let mut head_lines = 0;
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                            head_lines += 1;
                            if line == "\r\n" {
                                break;
                            }
                            line.clear();
                        }
                        if head_lines == 0 {
                            return;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = "plaintext backend\n";
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        PlainHttpServer { port, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// When Envoy rejects a cluster (a NACK) it keeps the previous version, here the plaintext
/// cluster of a Service a policy was just added to. The loader fails such clusters closed with a
/// configuration Envoy accepts, reports the rejection in `/status` and `/metrics`, and tries the
/// policy again once its input changes. Envoy is made to reject by a cause only Envoy knows: the
/// loader hands verification to the dynamic module, which this Envoy cannot find.
#[test]
fn a_cluster_envoy_rejects_fails_closed() {
    // Envoy inherits the environment, and must not find the module: not on its search path
    // (an empty directory), and not through LD_LIBRARY_PATH, where `cargo test` puts the target
    // directory holding a debug build of it.
    let empty = tempfile::tempdir().expect("temp dir");
    std::env::set_var("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", empty.path());
    std::env::remove_var("LD_LIBRARY_PATH");
    for ads in [Ads::Delta, Ads::Sotw] {
        let plain = PlainHttpServer::start();
        let fixture = Fixture::conformance();
        fixture.config.write("service.yaml", &btls_service_yaml(SERVICE, plain.port));
        fixture
            .config
            .write("route.yaml", &Route::new("fail-closed").rule(PATH, SERVICE, BTLS_PORT).yaml());
        let loader = Loader::start_with_args(
            fixture.config.path(),
            free_port(),
            free_port(),
            &["--validator", "dynamic-module"],
        );
        let node = format!("e2e-fail-closed-nack-{ads:?}");
        let stack = stack_with(fixture, loader, &node, ads);
        // No policy yet: plaintext, as the user wrote it.
        assert_eq!(stack.wait_for_status(PATH, 200), "plaintext backend\n");

        stack.config.write("policy.yaml", &valid_policy("nacked"));
        let bodies = stack.assert_consistent_status(PATH, 503);
        assert!(bodies.iter().all(|b| b.contains("Envoy rejected")), "{bodies:?}");
        let served_in_plaintext = plain.requests();
        for _ in 0..5 {
            assert_eq!(stack.get(PATH).unwrap().0, 503);
        }
        assert_eq!(plain.requests(), served_in_plaintext, "plaintext after the NACK was handled");
        let status = stack.loader.status();
        let rejected = &status["rejected"];
        assert!(rejected.to_string().contains(&format!("{NS}/nacked")), "{status}");
        assert!(rejected.to_string().contains(&node), "{status}");
        assert_eq!(stack.loader.metric("backendtls_loader_failed_closed_clusters"), Some(1.0));

        // The input changes (the policy goes): the cluster is tried again, here plaintext.
        stack.config.remove("policy.yaml");
        assert_eq!(stack.wait_for_status(PATH, 200), "plaintext backend\n");
        wait_until("no cluster failed closed", CONVERGE_TIMEOUT, || {
            let value = stack.loader.metric("backendtls_loader_failed_closed_clusters");
            (value == Some(0.0)).then_some(()).ok_or(value)
        });
    }
}
