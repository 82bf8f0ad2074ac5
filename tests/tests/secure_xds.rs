//! Secure xDS: mutual TLS on ADS with real Envoy 1.40 and real gRPC clients (tonic over rustls),
//! per-node identity, the SDS rule for secrets, certificate rotation, limits, and a prompt stop.
//!
//! Certificates come from the real `backendtls-loader certs`; Envoy bootstraps from the real
//! `backendtls-loader bootstrap --xds-certs`.

use std::path::Path;
use std::time::{Duration, Instant};

use backendtls_e2e::guide::{GUIDE_HOST, HOSTNAME};
use backendtls_e2e::loader::run_loader;
use backendtls_e2e::xds_client::{
    delta_request, fetch_clusters, idle_tls_connection_lifetime, memory_mb, AdsClient, ClientAuth,
    XdsCerts,
};
use backendtls_e2e::{
    ads_bootstrap_secure, free_port, try_http_get, wait_until, Ads, Envoy, GuideStack, Loader,
    Manifests, Nginx, TestCa, NGINX_BODY,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, UpstreamTlsContext};
use prost::{Message, Name};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Envoy's xDS cluster, as the bootstrap names it.
const XDS_CLUSTER: &str = "backendtls_xds";

/// The guide (NGINX, manifests, loader over mTLS with `certs`) and an Envoy for `node_id`.
fn guide_over_mtls(node_id: &str, ads: Ads, certs: &XdsCerts, loader_args: &[&str]) -> GuideStack {
    let ca = TestCa::new("backendtls e2e CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    let loader = Loader::start_secure(manifests.dir(), certs.dir(), loader_args);
    let envoy = start_envoy(&loader, node_id, ads, certs.dir());
    GuideStack { envoy, loader, manifests, nginx, ca, gateway_port, node_id: node_id.into() }
}

fn start_envoy(loader: &Loader, node_id: &str, ads: Ads, certs: &Path) -> Envoy {
    let admin = free_port();
    Envoy::start(&ads_bootstrap_secure(loader.xds_port(), admin, node_id, ads, certs), admin)
}

/// The loader's `/xds` entry for `node_id`, once it is there.
fn session(loader: &Loader, node_id: &str) -> serde_json::Value {
    wait_until(&format!("{node_id} in /xds"), Duration::from_secs(10), || {
        let xds = loader.xds();
        xds["envoys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["node"] == node_id)
            .cloned()
            .ok_or(xds)
    })
}

/// Loader and guide manifests without Envoy or NGINX, for the gRPC-client tests.
fn bare_loader(certs: &XdsCerts, args: &[&str]) -> (Manifests, Loader) {
    let ca = TestCa::new("backendtls e2e CA");
    let manifests = Manifests::write(free_port(), free_port(), ca.cert_pem());
    let loader = Loader::start_secure(manifests.dir(), certs.dir(), args);
    (manifests, loader)
}

#[test]
fn envoy_converges_over_mtls_with_delta_and_state_of_the_world() {
    let certs = XdsCerts::create(&["e2e-mtls-delta", "e2e-mtls-sotw"]);
    let mut stack = guide_over_mtls("e2e-mtls-delta", Ads::Delta, &certs, &[]);
    assert_eq!(stack.wait_for_status(200), NGINX_BODY);
    assert!(
        stack.envoy.stat(&format!("cluster.{XDS_CLUSTER}.ssl.handshake")) >= 1,
        "xDS went over TLS"
    );
    let entry = session(&stack.loader, "e2e-mtls-delta");
    assert_eq!(entry["protocol"], "delta");
    assert_eq!(
        entry["identity"]["uris"][0], "spiffe://backendtls.local/envoy/e2e-mtls-delta",
        "/xds shows who connected: {entry}"
    );
    assert_eq!(stack.nginx.plaintext_requests(), vec![], "plaintext reached nginx");

    // The same loader, a state-of-the-world Envoy with its own certificate.
    stack.envoy.shutdown();
    stack.envoy = start_envoy(&stack.loader, "e2e-mtls-sotw", Ads::Sotw, certs.dir());
    assert_eq!(stack.wait_for_status(200), NGINX_BODY);
    assert_eq!(session(&stack.loader, "e2e-mtls-sotw")["protocol"], "sotw");
    let loader = &stack.loader;
    wait_until("the SotW Envoy to ACK the snapshot", Duration::from_secs(10), || {
        loader.envoy_is_current("e2e-mtls-sotw")
    });
}

#[test]
fn clients_without_a_valid_certificate_or_identity_are_refused() {
    let certs = XdsCerts::create(&["e2e-client"]);
    let (_manifests, loader) = bare_loader(&certs, &[]);
    let port = loader.xds_port();
    let clusters = fetch_clusters(port, &certs.client("e2e-client"), "e2e-client")
        .expect("the right certificate gets clusters");
    assert!(!clusters.is_empty());

    let now = time::OffsetDateTime::now_utc();
    let expired = certs.issue_client(
        "e2e-client",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let other_ca = TestCa::new("another CA").issue_client("e2e-client");
    let trusting = |client| ClientAuth::Tls { server_ca_pem: certs.ca_pem(), client };
    for (what, auth) in [
        ("plaintext", ClientAuth::Plaintext),
        ("no client certificate", trusting(None)),
        ("a certificate from another CA", trusting(Some(other_ca))),
        ("an expired certificate", trusting(Some(expired))),
    ] {
        let result = fetch_clusters(port, &auth, "e2e-client");
        assert!(result.is_err(), "{what}: got {} clusters", result.unwrap().len());
    }
    let log = loader.log();
    for reason in ["InvalidContentType", "no certificates", "UnknownIssuer", "certificate expired"]
    {
        assert!(
            log.lines().any(|l| l.contains("xDS TLS handshake failed") && l.contains(reason)),
            "no refused handshake logged with {reason}:\n{log}"
        );
    }

    // A valid certificate, but for another node.
    let error = fetch_clusters(port, &certs.client("e2e-client"), "someone-else").unwrap_err();
    assert!(error.starts_with("PermissionDenied") && error.contains("someone-else"), "{error}");

    // Only the types the loader serves.
    let client = AdsClient::connect(port, &certs.client("e2e-client")).unwrap();
    let mut stream = client
        .delta(delta_request("type.googleapis.com/google.protobuf.Empty", &[], "e2e-client"))
        .unwrap();
    let status = stream.receive().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("unknown type URL"), "{status:?}");
}

#[test]
fn a_secret_is_sent_only_after_a_cluster_referencing_it() {
    let certs = XdsCerts::create(&["e2e-observer", "e2e-other"]);
    let ca = TestCa::new("backendtls e2e CA");
    let manifests = Manifests::write(free_port(), free_port(), ca.cert_pem());
    // The guide's Gateway presents a client certificate to its backends (GEP-3155).
    let gateway = std::fs::read_to_string(manifests.path("gateway.yaml")).unwrap().replace(
        "spec:\n",
        "spec:\n  tls:\n    backend:\n      clientCertificateRef:\n        kind: Secret\n        name: gateway-client\n",
    );
    manifests.write_file("gateway.yaml", &gateway);
    let client_cert = ca.issue_client("gateway");
    manifests.write_file(
        "client.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: gateway-client, namespace: kgateway-system}}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&client_cert.cert_pem),
            indent(&client_cert.key_pem)
        ),
    );
    let loader = Loader::start_secure(manifests.dir(), certs.dir(), &[]);
    let port = loader.xds_port();

    // Learn the client certificate's SDS name the way Envoy does: from a cluster.
    let clusters = fetch_clusters(port, &certs.client("e2e-observer"), "e2e-observer").unwrap();
    let secret = clusters
        .iter()
        .find_map(|c| {
            let socket = c.transport_socket.as_ref()?;
            let Some(
                envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                    any,
                ),
            ) = &socket.config_type
            else {
                return None;
            };
            let tls = UpstreamTlsContext::decode(&any.value[..]).ok()?;
            Some(tls.common_tls_context?.tls_certificate_sds_secret_configs.first()?.name.clone())
        })
        .expect("a cluster presents the Gateway's client certificate over SDS");

    // Another authenticated client asks for it by name, without having been sent the cluster.
    let client = AdsClient::connect(port, &certs.client("e2e-other")).unwrap();
    let mut stream =
        client.delta(delta_request(&Secret::type_url(), &[&secret], "e2e-other")).unwrap();
    let first = stream.next_of(&Secret::type_url()).unwrap();
    assert!(first.resources.is_empty(), "the secret was sent: {:?}", first.resources.len());
    let log = loader.log();
    assert!(
        log.lines().any(|l| l.contains("secret withheld") && l.contains(&secret)),
        "the loader logs the withheld secret:\n{log}"
    );
    assert!(
        !log.contains("BEGIN PRIVATE KEY")
            && !log.contains(client_cert.key_pem.lines().nth(1).unwrap())
    );

    // Once the stream has been sent the cluster, the same subscription gets the secret.
    stream.send(delta_request(&Cluster::type_url(), &[], "e2e-other"));
    let secret_response = stream.next_of(&Secret::type_url()).unwrap();
    let names: Vec<&str> = secret_response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [secret.as_str()]);
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// Replaces `dir/name` with `contents` atomically, as a Secret volume or `certs --renew` would.
fn replace_file(dir: &Path, name: &str, contents: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[test]
fn rotated_certificates_apply_to_new_connections_while_envoy_keeps_its_stream() {
    let old = XdsCerts::create(&["e2e-rotate"]);
    // The loader's own copy of its files, which the test rotates.
    let served = tempfile::tempdir().unwrap();
    for name in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(old.path(name), served.path().join(name)).unwrap();
    }
    let ca = TestCa::new("backendtls e2e CA");
    let nginx = Nginx::start(&ca.issue(&[HOSTNAME]));
    let gateway_port = free_port();
    let manifests = Manifests::write(gateway_port, nginx.https_port(), ca.cert_pem());
    let loader = Loader::start_secure(manifests.dir(), served.path(), &[]);
    let envoy = start_envoy(&loader, "e2e-rotate", Ads::Delta, old.dir());
    let stack = GuideStack {
        envoy,
        loader,
        manifests,
        nginx,
        ca,
        gateway_port,
        node_id: "e2e-rotate".into(),
    };
    stack.wait_for_status(200);
    let connections = stack.envoy.stat(&format!("cluster.{XDS_CLUSTER}.upstream_cx_total"));

    // A new CA: new server certificate and a new client CA, written over the old files.
    let new = XdsCerts::create(&["e2e-new-client"]);
    for name in ["server.key", "server.crt", "ca.crt"] {
        replace_file(served.path(), name, &std::fs::read(new.path(name)).unwrap());
    }
    let port = stack.loader.xds_port();
    // Trusting only the new CA and presenting a certificate from it proves both rotated.
    wait_until("a new connection to use the new certificates", Duration::from_secs(10), || {
        fetch_clusters(port, &new.client("e2e-new-client"), "e2e-new-client")
    });
    let old_client_new_trust =
        ClientAuth::Tls { server_ca_pem: new.ca_pem(), client: Some(old.envoy("e2e-rotate")) };
    assert!(
        fetch_clusters(port, &old_client_new_trust, "e2e-rotate").is_err(),
        "old client CA still accepted"
    );
    assert!(stack.loader.log().contains("xDS TLS certificates reloaded"));

    // The Envoy connected with the old certificates keeps its stream and still gets updates.
    let unrelated = TestCa::new("unrelated CA");
    stack.manifests.set_ca(unrelated.cert_pem());
    stack.wait_for_status(503);
    stack.manifests.set_ca(stack.ca.cert_pem());
    stack.wait_for_status(200);
    assert_eq!(
        stack.envoy.stat(&format!("cluster.{XDS_CLUSTER}.upstream_cx_total")),
        connections,
        "Envoy reconnected to the loader"
    );
    assert_eq!(session(&stack.loader, "e2e-rotate")["protocol"], "delta");
}

#[test]
fn oversized_messages_and_a_million_names_end_the_stream_with_bounded_memory() {
    let certs = XdsCerts::create(&["e2e-limits"]);
    let (_manifests, loader) = bare_loader(&certs, &[]);
    let pid = loader.pid().unwrap();
    let (rss_before, _) = memory_mb(pid);
    let client = AdsClient::connect(loader.xds_port(), &certs.client("e2e-limits")).unwrap();
    let eds = ClusterLoadAssignment::type_url();
    let names: Vec<String> = (0..1_000_000).map(|i| format!("cluster-{i:07}")).collect();

    // A million names in one message: about 17 MB, over the 4 MiB message limit.
    let mut request = delta_request(&eds, &[], "e2e-limits");
    request.resource_names_subscribe = names.clone();
    assert!(request.encoded_len() > 4 << 20);
    let mut stream = client.delta(request).unwrap();
    let status = stream.receive().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A million names in messages under the limit: the stream ends at the names limit (the
    // first 100,000 are allowed, the next batch is refused).
    let mut stream = client.delta(delta_request(&eds, &[], "e2e-limits")).unwrap();
    stream.receive().unwrap();
    for chunk in names.chunks(100_000) {
        let mut request = delta_request(&eds, &[], "e2e-limits");
        request.resource_names_subscribe = chunk.to_vec();
        stream.send(request);
    }
    let status = stream.receive().unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("100000"), "{status:?}");

    let (rss_after, peak) = memory_mb(pid);
    eprintln!(
        "loader memory: {rss_before:.1} MB before, {rss_after:.1} MB after, peak {peak:.1} MB"
    );
    assert!(peak < rss_before + 96.0, "peak {peak:.1} MB from {rss_before:.1} MB");
    assert!(rss_after < rss_before + 32.0, "{rss_after:.1} MB held after the streams ended");
    // Still serving.
    fetch_clusters(loader.xds_port(), &certs.client("e2e-limits"), "e2e-limits").unwrap();
}

#[test]
fn ten_thousand_streams_on_one_connection_are_refused_beyond_the_limit() {
    let certs = XdsCerts::create(&["e2e-streams"]);
    let (_manifests, loader) = bare_loader(&certs, &[]);
    let pid = loader.pid().unwrap();
    let (rss_before, _) = memory_mb(pid);
    let client = AdsClient::connect(loader.xds_port(), &certs.client("e2e-streams")).unwrap();
    let ads = client.ads();
    let (opened, refused, senders) = client.block_on(async move {
        let mut calls = tokio::task::JoinSet::new();
        let mut senders = Vec::new();
        for _ in 0..10_000 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.try_send(delta_request(&Cluster::type_url(), &[], "e2e-streams")).unwrap();
            senders.push(tx);
            let mut ads = ads.clone();
            calls.spawn(
                async move { ads.delta_aggregated_resources(ReceiverStream::new(rx)).await },
            );
        }
        // Refused by the loader (RESOURCE_EXHAUSTED), or by HTTP/2 itself when the client
        // opens a stream before it learns a slot was freed (REFUSED_STREAM, UNAVAILABLE).
        let (mut opened, mut exhausted, mut refused_by_http2) = (Vec::new(), 0, 0);
        while let Some(result) = calls.join_next().await {
            match result.unwrap() {
                Ok(response) => opened.push(response.into_inner()),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert!(status.message().contains("--xds-max-streams-per-connection"));
                    exhausted += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(format!("{status:?}").contains("REFUSED_STREAM"), "{status:?}");
                    refused_by_http2 += 1;
                }
            }
        }
        (opened, (exhausted, refused_by_http2), senders)
    });
    let (exhausted, refused_by_http2) = refused;
    eprintln!("{exhausted} streams RESOURCE_EXHAUSTED, {refused_by_http2} REFUSED_STREAM");
    assert_eq!(opened.len(), 4, "--xds-max-streams-per-connection is 4 by default");
    assert_eq!(exhausted + refused_by_http2, 9_996);
    assert!(exhausted > 0);
    let (_, peak) = memory_mb(pid);
    eprintln!("loader memory: {rss_before:.1} MB before, peak {peak:.1} MB");
    assert!(peak < rss_before + 64.0, "peak {peak:.1} MB from {rss_before:.1} MB");
    drop((opened, senders));
}

#[test]
fn connections_over_the_limit_and_idle_connections_are_closed() {
    let certs = XdsCerts::create(&["e2e-conns"]);
    let (_manifests, loader) =
        bare_loader(&certs, &["--xds-max-connections", "2", "--xds-idle-timeout", "1"]);
    let port = loader.xds_port();
    let auth = certs.client("e2e-conns");

    // Idle: a TCP connection that never starts TLS, and a TLS connection that opens no stream.
    let started = Instant::now();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(std::io::Read::read(&mut tcp, &mut [0; 16]).unwrap_or(0), 0, "closed");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let lasted = idle_tls_connection_lifetime(port, &auth);
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(5),
        "an idle TLS connection lasted {lasted:?} with --xds-idle-timeout 1"
    );

    // Two connections hold streams; a third is told the limit.
    let first = AdsClient::connect(port, &auth).unwrap();
    let _a = first.delta(delta_request(&Cluster::type_url(), &[], "e2e-conns")).unwrap();
    let second = AdsClient::connect(port, &auth).unwrap();
    let _b = second.delta(delta_request(&Cluster::type_url(), &[], "e2e-conns")).unwrap();
    let third = AdsClient::connect(port, &auth).unwrap();
    let Err(status) = third.delta(delta_request(&Cluster::type_url(), &[], "e2e-conns")) else {
        panic!("a third connection was served");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--xds-max-connections"), "{status:?}");
}

#[test]
fn the_loader_stops_within_two_seconds_while_envoy_holds_a_stream() {
    let certs = XdsCerts::create(&["e2e-stop"]);
    let mut stack = guide_over_mtls("e2e-stop", Ads::Delta, &certs, &[]);
    stack.wait_for_status(200);
    session(&stack.loader, "e2e-stop");
    let (status, took) =
        stack.loader.terminate(Duration::from_secs(2)).expect("stopped within 2 s");
    assert!(status.success(), "{status}");
    eprintln!("the loader stopped {took:?} after SIGTERM");
    // Envoy keeps serving its last configuration meanwhile.
    assert_eq!(try_http_get(stack.gateway_port, GUIDE_HOST, "/").unwrap().0, 200);
}

#[test]
fn plaintext_xds_off_loopback_is_refused() {
    let ca = TestCa::new("backendtls e2e CA");
    let manifests = Manifests::write(free_port(), free_port(), ca.cert_pem());
    let output = std::process::Command::new(backendtls_e2e::paths::loader_bin())
        .args(["serve", "--config-dir"])
        .arg(manifests.dir())
        .args(["--xds-address", &format!("0.0.0.0:{}", free_port())])
        .args(["--admin-address", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve xDS in plaintext") && stderr.contains("--insecure-xds"),
        "{stderr}"
    );
    // The bootstrap for it names the files `certs` wrote.
    let bootstrap =
        run_loader(&["bootstrap", "--xds-certs", "/etc/envoy/xds", "--node-id", "edge"]);
    for path in
        ["/etc/envoy/xds/ca.crt", "/etc/envoy/xds/envoy-edge.crt", "/etc/envoy/xds/envoy-edge.key"]
    {
        assert!(bootstrap.contains(path), "{path} not in\n{bootstrap}");
    }
}
