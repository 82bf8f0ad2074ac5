//! `make bench-fleet`: one loader serving N backends (default 10,000) to one real Envoy and M
//! simulated Envoys (default 100) at once, plus one client that never reads.
//!
//! Each simulated Envoy is a real delta-ADS client over gRPC (tonic, one HTTP/2 connection each),
//! behaving like Envoy: it subscribes to every cluster and listener, then to the endpoints and
//! secrets the clusters name, acknowledges every response, and counts the bytes it receives.
//! Measured: the time until all M are in sync (every cluster, with the endpoints and secrets they
//! name), the loader's resident memory before and after (per connected client), and for CA
//! changes the time from rewriting a CA ConfigMap until each client holds the new CA secret
//! (p50, p99, max over all clients and changes). The client that never reads must not change any
//! of this, and is cut off after `--xds-send-timeout`. Results: stdout and docs/scaling.md.
#![forbid(unsafe_code)]

use backendtls_e2e::scale::{self, ScaleSpec};
use backendtls_e2e::xds_client::memory_mb;
use backendtls_e2e::{ads_bootstrap, free_port, wait_until, Ads, Envoy, Loader, TestCa};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{transport_socket::ConfigType, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HOSTNAME: &str = "example.com";
const CA_CHANGES: usize = 5;
/// The loader's send timeout in this bench (its default): the never-reading client is cut off
/// after it. Shorter ones also cut off live clients that are merely slow to decode a 10,000-cluster
/// first answer on a loaded machine.
const SEND_TIMEOUT_S: u64 = 30;

/// What one simulated Envoy has received, shared with the bench.
#[derive(Default)]
struct ClientState {
    synced_at: Option<Instant>,
    /// When each secret name first arrived.
    secrets: BTreeMap<String, Instant>,
    bytes: u64,
    error: Option<String>,
}

type Shared = Arc<Mutex<ClientState>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let backends: usize = args.next().map_or(10_000, |n| n.parse().expect("N backends"));
    let clients: usize = args.next().map_or(100, |n| n.parse().expect("M clients"));
    std::env::var("BACKENDTLS_LOADER_BIN")
        .expect("BACKENDTLS_LOADER_BIN must name the release loader (make bench-fleet sets it)");
    let ca = TestCa::new("fleet CA");
    let dir = tempfile::Builder::new().prefix("btls-fleet-").tempdir().expect("temp dir");
    // No traffic flows: the backend port only has to be a number.
    let base = ScaleSpec {
        backends,
        layout: scale::Layout::default(),
        file_per_namespace: false,
        gateway_port: free_port(),
        backend_port: free_port(),
        ca_pem: ca.cert_pem(),
        hostname: HOSTNAME,
    };
    scale::write(dir.path(), &base).expect("write the backends");

    eprintln!("== {backends} backends, 1 Envoy + {clients} simulated clients + 1 that never reads");
    let timeout = SEND_TIMEOUT_S.to_string();
    let loader = Loader::start_with_args(
        dir.path(),
        free_port(),
        free_port(),
        &["--xds-send-timeout", &timeout],
    );
    let pid = loader.pid().expect("loader pid");
    let admin = free_port();
    let started = Instant::now();
    let envoy = Envoy::start(&ads_bootstrap(loader.xds_port(), admin, "fleet", Ads::Delta), admin);
    wait_until("the real Envoy to hold every cluster", Duration::from_secs(300), || {
        let stats = envoy.stats();
        let active = stats.get("cluster_manager.active_clusters").copied().unwrap_or(0);
        let warming = stats.get("cluster_manager.warming_clusters").copied().unwrap_or(1);
        (active as usize > backends && warming == 0).then_some(()).ok_or((active, warming))
    });
    let envoy_sync = started.elapsed();
    let rss_before = memory_mb(pid).0;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let port = loader.xds_port();
    let states: Vec<Shared> = (0..clients).map(|_| Shared::default()).collect();
    let started = Instant::now();
    for (id, state) in states.iter().enumerate() {
        runtime.spawn(simulated_envoy(id, port, backends, state.clone()));
    }
    // The client that never reads: subscribes to every cluster and stops.
    let stalled = runtime.block_on(never_reading_client(port));
    wait_until("every simulated Envoy to be in sync", Duration::from_secs(300), || {
        let waiting = states.iter().filter(|s| s.lock().unwrap().synced_at.is_none()).count();
        let errors: Vec<String> =
            states.iter().filter_map(|s| s.lock().unwrap().error.clone()).collect();
        assert!(errors.is_empty(), "clients failed: {errors:?}");
        (waiting == 0).then_some(()).ok_or(waiting)
    });
    let sync_times: Vec<f64> = states
        .iter()
        .map(|s| (s.lock().unwrap().synced_at.unwrap() - started).as_secs_f64())
        .collect();
    let all_synced = sync_times.iter().cloned().fold(0.0, f64::max);
    let bytes_per_client =
        states.iter().map(|s| s.lock().unwrap().bytes).sum::<u64>() / clients.max(1) as u64;
    // Let the allocator settle before reading RSS again.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = memory_mb(pid).0;

    let mut latencies_ms = Vec::new();
    let mut rebuilds_ms = Vec::new();
    for change in 0..CA_CHANGES {
        let index = (change * 7919) % backends;
        let before: BTreeSet<String> = states[0].lock().unwrap().secrets.keys().cloned().collect();
        let written = Instant::now();
        // A CA never seen before: its secret is new to every client.
        let ca = TestCa::new(&format!("fleet CA, change {change}"));
        write_backend(dir.path(), index, &ScaleSpec { ca_pem: ca.cert_pem(), ..spec_of(&base) });
        let new_secret =
            wait_until("the new CA secret at a client", Duration::from_secs(60), || {
                let errors: Vec<String> =
                    states.iter().filter_map(|s| s.lock().unwrap().error.clone()).collect();
                assert!(errors.is_empty(), "clients failed: {errors:?}");
                let state = states[0].lock().unwrap();
                state.secrets.keys().find(|name| !before.contains(*name)).cloned()
            });
        let arrivals =
            wait_until("the new CA secret at every client", Duration::from_secs(60), || {
                let errors: Vec<String> =
                    states.iter().filter_map(|s| s.lock().unwrap().error.clone()).collect();
                assert!(errors.is_empty(), "clients failed: {errors:?}");
                let arrivals: Vec<Instant> = states
                    .iter()
                    .filter_map(|s| s.lock().unwrap().secrets.get(&new_secret).copied())
                    .collect();
                let count = arrivals.len();
                (count == clients).then_some(arrivals).ok_or(count)
            });
        latencies_ms.extend(arrivals.iter().map(|at| (*at - written).as_secs_f64() * 1000.0));
        // The part of that the loader spent building the snapshot (reading, resolving,
        // translating), before any stream saw it.
        let rebuild = loader.metric("backendtls_loader_translation_seconds").unwrap_or(0.0);
        rebuilds_ms.push(rebuild * 1000.0);
        // Put the backend back on the first CA for the next round's baseline.
        write_backend(dir.path(), index, &base);
        std::thread::sleep(Duration::from_millis(200));
    }
    latencies_ms.sort_by(f64::total_cmp);
    rebuilds_ms.sort_by(f64::total_cmp);
    let rebuild_p50 = rebuilds_ms[rebuilds_ms.len() / 2];
    let pct = |p: f64| latencies_ms[((latencies_ms.len() as f64 - 1.0) * p).round() as usize];
    // The never-reading client holds at most its queue (16 responses) until the loader cuts it
    // off; with only a few changes here its queue never fills (tests/tests/slow_client.rs drives
    // one past the timeout). What matters here is that the others never waited on it.
    let slow_cut = loader.metric("backendtls_loader_xds_slow_streams_total").unwrap_or(0.0);
    drop(stalled);

    let per_client_mb = (rss_after - rss_before) / clients.max(1) as f64;
    let report = format!(
        "| backends | clients | real Envoy in sync | all clients in sync | loader RSS before / after | per client | xDS bytes per client | CA change p50 / p99 / max | of which snapshot build (p50) | streams cut off for not reading |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n\
         | {backends} | {clients} + 1 Envoy | {:.1} s | {all_synced:.1} s | {rss_before:.0} / {rss_after:.0} MB | {per_client_mb:.2} MB | {:.1} MB | {:.0} / {:.0} / {:.0} ms | {rebuild_p50:.0} ms | {} |\n",
        envoy_sync.as_secs_f64(),
        bytes_per_client as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        slow_cut as u64,
    );
    println!("{report}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || backendtls_e2e::paths::workspace_root().join("target"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&target).expect("target dir");
    let path = target.join("bench-fleet.md");
    std::fs::write(&path, &report).expect("write target/bench-fleet.md");
    eprintln!("(also in {})", path.display());
    drop(envoy);
    drop(loader);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

fn spec_of<'a>(base: &ScaleSpec<'a>) -> ScaleSpec<'a> {
    ScaleSpec { ..*base }
}

/// Writes one backend's file atomically (a hidden temporary name, then a rename).
fn write_backend(dir: &std::path::Path, index: usize, spec: &ScaleSpec<'_>) {
    let ns_dir = dir.join(spec.layout.namespace_of(index));
    let path = ns_dir.join(format!("{}.yaml", scale::backend_name(index)));
    let temp = ns_dir.join(format!(".{}.tmp", scale::backend_name(index)));
    std::fs::write(&temp, scale::backend(index, spec)).expect("write backend");
    std::fs::rename(&temp, &path).expect("rename backend");
}

fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.into(), cluster: "backendtls".into(), ..Default::default() })
}

fn request(type_url: &str, subscribe: Vec<String>, node_id: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(node_id),
        type_url: type_url.into(),
        resource_names_subscribe: subscribe,
        ..Default::default()
    }
}

async fn connect(
    port: u16,
    window: Option<u32>,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .initial_stream_window_size(window)
        .connect()
        .await
        .expect("connect to the loader");
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(512 << 20)
}

/// Like Envoy: every cluster and listener, then the endpoints and secrets the clusters name.
async fn simulated_envoy(id: usize, port: u16, backends: usize, state: Shared) {
    if let Err(e) = run_simulated_envoy(id, port, backends, &state).await {
        state.lock().unwrap().error = Some(format!("client {id}: {e}"));
    }
}

async fn run_simulated_envoy(
    id: usize,
    port: u16,
    backends: usize,
    state: &Shared,
) -> Result<(), String> {
    let node_id = format!("sim-{id}");
    let mut ads = connect(port, None).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let send = |r: DeltaDiscoveryRequest| tx.send(r).map_err(|e| e.to_string());
    send(request(&Cluster::type_url(), Vec::new(), &node_id))?;
    send(request(&Listener::type_url(), Vec::new(), &node_id))?;
    let mut responses = ads
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut clusters = BTreeSet::new();
    let (mut eds_wanted, mut eds_have) = (BTreeSet::new(), BTreeSet::new());
    let (mut sds_wanted, mut sds_have) = (BTreeSet::new(), BTreeSet::new());
    while let Some(response) = responses.message().await.map_err(|e| e.to_string())? {
        let now = Instant::now();
        state.lock().unwrap().bytes += response.encoded_len() as u64;
        send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })?;
        let (mut new_eds, mut new_sds) = (Vec::new(), Vec::new());
        for resource in &response.resources {
            let Some(any) = &resource.resource else { continue };
            if response.type_url == Cluster::type_url() {
                let cluster = Cluster::decode(&any.value[..]).map_err(|e| e.to_string())?;
                clusters.insert(cluster.name.clone());
                let eds = ClusterDiscoveryType::Type(DiscoveryType::Eds as i32);
                if cluster.cluster_discovery_type == Some(eds)
                    && eds_wanted.insert(cluster.name.clone())
                {
                    new_eds.push(cluster.name.clone());
                }
                for secret in secret_names(&cluster) {
                    if sds_wanted.insert(secret.clone()) {
                        new_sds.push(secret);
                    }
                }
            } else if response.type_url == ClusterLoadAssignment::type_url() {
                eds_have.insert(resource.name.clone());
            } else if response.type_url == Secret::type_url() {
                sds_have.insert(resource.name.clone());
                state.lock().unwrap().secrets.entry(resource.name.clone()).or_insert(now);
            }
        }
        if !new_eds.is_empty() {
            send(request(&ClusterLoadAssignment::type_url(), new_eds, &node_id))?;
        }
        if !new_sds.is_empty() {
            send(request(&Secret::type_url(), new_sds, &node_id))?;
        }
        let synced = clusters.len() >= backends
            && eds_wanted.is_subset(&eds_have)
            && sds_wanted.is_subset(&sds_have);
        if synced {
            let mut state = state.lock().unwrap();
            state.synced_at.get_or_insert(now);
        }
    }
    Err("the stream ended".into())
}

/// The SDS names a cluster's upstream TLS context refers to.
fn secret_names(cluster: &Cluster) -> Vec<String> {
    let Some(socket) = &cluster.transport_socket else { return Vec::new() };
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else { return Vec::new() };
    let Ok(tls) = UpstreamTlsContext::decode(&any.value[..]) else { return Vec::new() };
    let Some(common) = tls.common_tls_context else { return Vec::new() };
    let mut names: Vec<String> =
        common.tls_certificate_sds_secret_configs.iter().map(|s| s.name.clone()).collect();
    match common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => names.push(sds.name),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            names.extend(combined.validation_context_sds_secret_config.map(|s| s.name))
        }
        _ => {}
    }
    names
}

/// The request sender and response stream of a client that never reads: holding them keeps the
/// stream open.
type Stalled = (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
);

/// Opens a stream with the smallest HTTP/2 window, subscribes to every cluster and never reads.
async fn never_reading_client(port: u16) -> Stalled {
    let mut ads = connect(port, Some(65_535)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(&Cluster::type_url(), Vec::new(), "never-reads")).await.expect("queue");
    let responses = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("the stream opens")
        .into_inner();
    (tx, responses)
}
