//! Acceptance tests: the kgateway "Backend TLS" guide against a real Envoy, real NGINX and the
//! real loader binary, plus the live changes the design promises (CA swap, policy delete and
//! re-create, loader restart) and the static `render` path.
//!
//! Every test owns its ports, temp dirs and Envoy base id, so they run in parallel. A failing test
//! prints the Envoy, loader and NGINX log tails (the harness does it from `Drop`).

use std::time::Duration;

use backendtls_e2e::guide::{
    wait_for_gateway_status, wait_for_host_status, GUIDE_HOST, HOSTNAME, NGINX_CLUSTER,
};
use backendtls_e2e::{
    ads_bootstrap, free_port, http_get, render_bootstrap, validate_bootstrap, wait_until, Ads,
    Envoy, GuideStack, HttpConnection, Loader, Manifests, Nginx, TestCa, NGINX_BODY,
};

/// Requests sent after a change has been observed, to show it holds on every connection.
const FOLLOW_UP_REQUESTS: usize = 20;

#[test]
fn guide_walkthrough() {
    let stack = GuideStack::start("e2e-guide-walkthrough");

    let body = stack.wait_for_status(200);
    assert_eq!(body, NGINX_BODY);

    assert!(
        stack.nginx_cluster_stat("ssl.handshake") >= 1,
        "no upstream TLS handshake counted for {NGINX_CLUSTER}"
    );
    let tls12 = stack.nginx_cluster_stat("ssl.versions.TLSv1.2");
    let tls13 = stack.nginx_cluster_stat("ssl.versions.TLSv1.3");
    assert!(tls12 + tls13 >= 1, "no TLS version counted (1.2: {tls12}, 1.3: {tls13})");

    // NGINX logs a request after answering it, so wait for the line.
    let nginx = &stack.nginx;
    wait_until(
        &format!("nginx to log a TLS request with SNI {HOSTNAME}"),
        Duration::from_secs(5),
        || {
            let lines = nginx.access_log_lines();
            let seen =
                lines.iter().any(|l| l.sni == HOSTNAME && l.scheme == "https" && l.status == 200);
            if seen {
                Ok(())
            } else {
                Err(lines)
            }
        },
    );
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
    assert_policy_condition_true(&stack, "Accepted");
    assert_policy_condition_true(&stack, "ResolvedRefs");
}

#[test]
fn ca_swap_and_restore() {
    let stack = GuideStack::start("e2e-ca-swap");
    stack.wait_for_status(200);
    // Opened and used before the swap: its worker holds a pooled upstream connection that was
    // verified against the old CA, and that connection must not keep serving.
    let mut old_connection = HttpConnection::connect(stack.gateway_port).expect("connect");
    assert_eq!(get_on(&mut old_connection), 200);
    let verify_errors_before = stack.nginx_cluster_stat("ssl.fail_verify_error");

    let unrelated = TestCa::new("unrelated CA");
    stack.manifests.set_ca(unrelated.cert_pem());
    stack.wait_for_status(503);
    assert_all_requests_answer(&stack, &mut old_connection, 503);
    assert!(
        stack.nginx_cluster_stat("ssl.fail_verify_error") > verify_errors_before,
        "ssl.fail_verify_error did not increase after the CA swap"
    );
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");

    stack.manifests.set_ca(stack.ca.cert_pem());
    stack.wait_for_status(200);
    assert_all_requests_answer(&stack, &mut old_connection, 200);
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}

/// The same walkthrough and CA change with Envoy on state-of-the-world ADS instead of delta.
#[test]
fn state_of_the_world_ads() {
    let stack = GuideStack::start_with("e2e-sotw", Ads::Sotw);
    assert_eq!(stack.wait_for_status(200), NGINX_BODY);
    let mut kept_alive = HttpConnection::connect(stack.gateway_port).expect("connect");
    assert_eq!(get_on(&mut kept_alive), 200);

    let unrelated = TestCa::new("unrelated CA");
    stack.manifests.set_ca(unrelated.cert_pem());
    stack.wait_for_status(503);
    assert_all_requests_answer(&stack, &mut kept_alive, 503);

    stack.manifests.set_ca(stack.ca.cert_pem());
    stack.wait_for_status(200);
    assert_all_requests_answer(&stack, &mut kept_alive, 200);
    let loader = &stack.loader;
    wait_until("Envoy to ACK the current snapshot over SotW", Duration::from_secs(10), || {
        loader.envoy_is_current(&stack.node_id)
    });
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}

#[test]
fn delete_and_recreate_policy() {
    let stack = GuideStack::start("e2e-delete-recreate");
    stack.wait_for_status(200);

    // Without a policy the cluster is plain HTTP, and NGINX answers plaintext on its TLS port
    // with 400: correct, since no policy applies any more.
    stack.manifests.delete_policy();
    stack.wait_for_status(400);
    // NGINX writes its access-log line after the response has gone out, so wait for it.
    let nginx = &stack.nginx;
    wait_until("NGINX to log the plaintext request behind the 400", Duration::from_secs(5), || {
        let plaintext = nginx.plaintext_requests();
        if plaintext.is_empty() {
            Err(nginx.access_log_lines())
        } else {
            Ok(())
        }
    });
    let mut keep_alive = HttpConnection::connect(stack.gateway_port).expect("connect");
    assert_eq!(get_on(&mut keep_alive), 400);

    // Once TLS is back, no request may fall back to plaintext (kgateway issue #11146).
    stack.manifests.recreate_policy();
    stack.wait_for_status(200);
    let plaintext_before = stack.nginx.plaintext_requests().len();
    assert_all_requests_answer(&stack, &mut keep_alive, 200);
    for _ in 0..10 {
        assert_eq!(get_new(&stack), 200);
    }
    let late_plaintext = stack.nginx.plaintext_requests().split_off(plaintext_before);
    assert_eq!(late_plaintext, vec![], "plaintext reached nginx after the policy came back");
}

/// Over delta ADS, virtual hosts come one by one over VHDS: a new route's host starts routing,
/// and a deleted route's host stops (Envoy removes the virtual host by name), while the others keep
/// working.
#[test]
fn routes_come_and_go_over_vhds() {
    let stack = GuideStack::start("e2e-vhds");
    stack.wait_for_status(200);
    let route = std::fs::read_to_string(stack.manifests.path("route.yaml")).expect("read route");
    let second = route
        .replace("name: nginx-route", "name: second-route")
        .replace("\"example.com\"", "\"second.example.com\"");
    assert_ne!(second, route, "the example route changed shape; update this test");
    let second_host = "second.example.com:8080";
    assert_eq!(http_get(stack.gateway_port, second_host, "/").0, 404);
    let listener = format!("gateway_kgateway-system_http_{}", stack.gateway_port);
    let vhds_reloads =
        || stack.envoy.stat(&format!("http.{listener}.rds.vhds.{listener}.config_reload"));
    let reloads_before = vhds_reloads();

    stack.manifests.write_file("second-route.yaml", &second);
    wait_for_host_status(stack.gateway_port, second_host, 200);
    let reloads_added = vhds_reloads();
    assert!(reloads_added > reloads_before, "the new host came over VHDS");

    std::fs::remove_file(stack.manifests.path("second-route.yaml")).expect("delete route");
    wait_for_host_status(stack.gateway_port, second_host, 404);
    assert!(vhds_reloads() > reloads_added, "the removal came over VHDS");
    assert_eq!(get_new(&stack), 200, "the guide's host keeps routing");
}

/// Envoy keeps a listener warming until its VHDS subscription receives a virtual host, and passes
/// it no empty update; the loader always has one per route configuration (a placeholder without
/// routes), so a Gateway whose routes do not exist yet serves (404) without waiting out Envoy's
/// 15 s fetch timeout, and its first route then routes.
#[test]
fn a_listener_without_routes_serves_at_once() {
    let ca = TestCa::new("backendtls e2e CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    let route = std::fs::read_to_string(manifests.path("route.yaml")).expect("read route");
    std::fs::remove_file(manifests.path("route.yaml")).expect("delete route");
    let loader = Loader::start(manifests.dir());
    let admin_port = free_port();
    let envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), admin_port, "e2e-no-routes", Ads::Delta),
        admin_port,
    );
    wait_for_gateway_status(gateway_port, 404);
    let listener = format!("gateway_kgateway-system_http_{gateway_port}");
    let timeouts = format!("http.{listener}.rds.vhds.{listener}.init_fetch_timeout");
    let stats = envoy.stats();
    assert_eq!(stats.get(&timeouts), Some(&0), "the listener waited out VHDS's fetch timeout");
    manifests.write_file("route.yaml", &route);
    wait_for_gateway_status(gateway_port, 200);
}

#[test]
fn loader_restart() {
    let mut stack = GuideStack::start("e2e-loader-restart");
    stack.wait_for_status(200);

    // Envoy keeps serving its last configuration while the control plane is gone.
    stack.loader.stop();
    for _ in 0..10 {
        assert_eq!(get_new(&stack), 200);
    }

    stack.loader.start_again();
    let loader = &stack.loader;
    wait_until(
        "Envoy to reconnect and ACK the restarted loader's snapshot",
        Duration::from_secs(30),
        || loader.envoy_is_current(&stack.node_id),
    );
    for _ in 0..10 {
        assert_eq!(get_new(&stack), 200);
    }

    // A change after the resync still reaches Envoy.
    let unrelated = TestCa::new("unrelated CA");
    stack.manifests.set_ca(unrelated.cert_pem());
    stack.wait_for_status(503);
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");
}

#[test]
fn render_validates_and_serves() {
    let ca = TestCa::new("backendtls e2e CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    let admin_port = free_port();

    let bootstrap = render_bootstrap(manifests.dir(), admin_port);
    let (valid, output) = validate_bootstrap(&bootstrap);
    assert!(valid, "envoy --mode validate rejected the rendered bootstrap:\n{output}\n{bootstrap}");

    let envoy = Envoy::start(&bootstrap, admin_port);
    assert_eq!(wait_for_gateway_status(gateway_port, 200), NGINX_BODY);
    let handshakes = envoy.stat(&format!("cluster.{NGINX_CLUSTER}.ssl.handshake"));
    assert!(handshakes >= 1, "no upstream TLS handshake counted for {NGINX_CLUSTER}");
}

/// The loader's `/status` reports condition `type` as "True" for the guide's policy.
fn assert_policy_condition_true(stack: &GuideStack, condition_type: &str) {
    let status = stack.loader.status();
    let policy = status["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|policy| policy["namespace"] == "default" && policy["name"] == "nginx-tls-policy")
        .unwrap_or_else(|| {
            panic!("policy default/nginx-tls-policy missing from /status: {status}")
        });
    let conditions = policy["status"]["ancestors"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|ancestor| ancestor["conditions"].as_array().into_iter().flatten());
    let holds = conditions
        .filter(|condition| condition["type"] == condition_type)
        .any(|condition| condition["status"] == "True");
    assert!(holds, "condition {condition_type} is not True in {policy}");
}

/// The status of the guide's request on a new connection; I/O errors fail the test.
fn get_new(stack: &GuideStack) -> u16 {
    stack.get().expect("GET through the gateway").0
}

/// The status of the guide's request on an existing keep-alive connection.
fn get_on(connection: &mut HttpConnection) -> u16 {
    connection
        .get(GUIDE_HOST, "/")
        .expect("GET on the kept-alive client connection (did Envoy close it?)")
        .0
}

/// `FOLLOW_UP_REQUESTS` requests on new connections and as many on `kept_alive` all answer `status`.
fn assert_all_requests_answer(stack: &GuideStack, kept_alive: &mut HttpConnection, status: u16) {
    for round in 0..FOLLOW_UP_REQUESTS {
        assert_eq!(get_new(stack), status, "new connection, request {round}");
        assert_eq!(get_on(kept_alive), status, "kept-alive connection, request {round}");
    }
}
