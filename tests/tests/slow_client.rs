//! Large and slow xDS streams. An xDS client that stops reading must cost the others nothing:
//! while it sits on a full queue, a reading client still gets every change at once, and after
//! `--xds-send-timeout` the slow stream is ended (RESOURCE_EXHAUSTED, counted in /metrics) and its
//! queued responses are freed. A push larger than `--xds-max-response-bytes` goes in parts that a
//! real Envoy applies one by one.

use backendtls_e2e::scale::{self, ScaleSpec};
use backendtls_e2e::xds_client::{delta_request, AdsClient, ClientAuth};
use backendtls_e2e::{ads_bootstrap, free_port, try_http_get, wait_until, Ads, Envoy, Loader};
use backendtls_e2e::{Nginx, TestCa};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use prost::Name;
use std::time::{Duration, Instant};

const BACKENDS: usize = 200;

#[test]
fn a_client_that_stops_reading_delays_no_one_and_is_cut_off() {
    let dir = tempfile::Builder::new().prefix("btls-slow-client-").tempdir().unwrap();
    let cas = [TestCa::new("slow client CA one"), TestCa::new("slow client CA two")];
    fn spec(ca: &TestCa) -> ScaleSpec<'_> {
        ScaleSpec {
            backends: BACKENDS,
            layout: scale::Layout::default(),
            file_per_namespace: false,
            gateway_port: 1,
            backend_port: 2,
            ca_pem: ca.cert_pem(),
            hostname: "example.com",
        }
    }
    scale::write(dir.path(), &spec(&cas[0])).unwrap();
    let loader =
        Loader::start_with_args(dir.path(), free_port(), free_port(), &["--xds-send-timeout", "3"]);
    let cds = Cluster::type_url();

    // The slow client: subscribes to every cluster, then never reads a response.
    // With HTTP/2's minimum window (64 KiB), the first answer (all clusters) already fills it.
    let slow =
        AdsClient::connect_with_window(loader.xds_port(), &ClientAuth::Plaintext, Some(65_535))
            .unwrap();
    let _slow_stream = slow.delta(delta_request(&cds, &[], "slow")).unwrap();
    // The reading client.
    let reader = AdsClient::connect(loader.xds_port(), &ClientAuth::Plaintext).unwrap();
    let mut stream = reader.delta(delta_request(&cds, &[], "reader")).unwrap();
    let first = stream.next_of(&cds).unwrap();
    assert_eq!(first.resources.len(), BACKENDS, "every backend's cluster");

    // Enough changes to fill the slow stream's queue (16 responses) several times over; the
    // reader gets each one promptly all the same.
    let backend_file = dir
        .path()
        .join(scale::Layout::default().namespace_of(0))
        .join(format!("{}.yaml", scale::backend_name(0)));
    let mut slowest = Duration::ZERO;
    for change in 0..40 {
        let ca = &cas[(change + 1) % 2];
        let written = Instant::now();
        std::fs::write(&backend_file, scale::backend(0, &spec(ca))).unwrap();
        let response = stream.next_of(&cds).unwrap();
        slowest = slowest.max(written.elapsed());
        assert!(
            response.resources.iter().any(|r| r.name == scale::Layout::default().cluster_of(0)),
            "change {change}: the changed cluster"
        );
    }
    assert!(slowest < Duration::from_secs(2), "the reader waited {slowest:?} for a change");

    // The slow stream is ended once a response has waited 3 s for room.
    wait_until("the slow stream to be ended", Duration::from_secs(30), || {
        loader.metric("backendtls_loader_xds_slow_streams_total").filter(|n| *n >= 1.0)
    });
    let sessions = loader.xds();
    let nodes: Vec<&str> =
        sessions["envoys"].as_array().unwrap().iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(nodes, ["reader"], "only the reading client is still connected: {sessions}");
    // And the reader is unaffected (the last change above went to the first CA).
    std::fs::write(&backend_file, scale::backend(0, &spec(&cas[1]))).unwrap();
    stream.next_of(&cds).unwrap();
}

/// The first answer to a new Envoy (every cluster, then every endpoint and virtual host) is far
/// over a 16 KiB response limit: it goes in parts, each acknowledged, and the Envoy ends up with
/// all of it, serving every backend over TLS.
#[test]
fn envoy_applies_a_first_answer_sent_in_parts() {
    const BACKENDS: usize = 150;
    const RESPONSE_BYTES: usize = 16 << 10;
    let dir = tempfile::Builder::new().prefix("btls-parts-").tempdir().unwrap();
    let ca = TestCa::new("parts CA");
    let nginx = Nginx::start(&ca.issue(&["example.com"]));
    let gateway_port = free_port();
    let layout = scale::Layout::default();
    let spec = ScaleSpec {
        backends: BACKENDS,
        layout,
        file_per_namespace: false,
        gateway_port,
        backend_port: nginx.https_port(),
        ca_pem: ca.cert_pem(),
        hostname: "example.com",
    };
    scale::write(dir.path(), &spec).unwrap();
    let limit = RESPONSE_BYTES.to_string();
    let loader = Loader::start_with_args(
        dir.path(),
        free_port(),
        free_port(),
        &["--xds-max-response-bytes", &limit],
    );
    let envoy_admin = free_port();
    let envoy = Envoy::start(
        &ads_bootstrap(loader.xds_port(), envoy_admin, "parts", Ads::Delta),
        envoy_admin,
    );
    wait_until("the Envoy to acknowledge every part", Duration::from_secs(60), || {
        loader.envoy_is_current("parts")
    });

    // Envoy counts an update per response: at least one per 16 KiB of clusters sent.
    let cds_bytes = loader
        .metric("backendtls_loader_xds_bytes_sent_by_type_total{type=\"CDS\"}")
        .expect("CDS bytes metric") as usize;
    let parts = cds_bytes.div_ceil(RESPONSE_BYTES);
    assert!(parts >= 3, "{cds_bytes} bytes of clusters should need several parts");
    let updates = envoy.stat("cluster_manager.cds.update_success") as usize;
    assert!(updates >= parts, "Envoy applied {updates} CDS updates for {parts} parts");
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected"), 0);
    assert!(envoy.stat("cluster_manager.active_clusters") as usize >= BACKENDS);

    // Every backend answers through the gateway (its cluster, endpoints and virtual host all
    // arrived, whichever part carried them).
    for index in 0..BACKENDS {
        let host = layout.route_host(index);
        let status = try_http_get(gateway_port, &host, "/").map(|(status, _)| status);
        assert_eq!(status.ok(), Some(200), "backend {index} ({host})");
    }
    let handshakes = format!("cluster.{}.ssl.handshake", layout.cluster_of(0));
    assert!(envoy.stat(&handshakes) >= 1, "{handshakes}");
}
