//! The loader's own HTTP endpoints: `/healthz`, `/readyz`, `/status`, `/xds`, `/metrics`, `/ui`.
//!
//! What each endpoint answers is here; the HTTP server and its bounds against hostile clients
//! are in [`http`].

pub mod envoy_stats;
pub mod http;
pub mod status_text;
pub mod ui;

use crate::probe;
use crate::xds::server::{TypeSent, XdsMetrics, XdsState, SENT_TYPES};
use http::{Limits, Reply, ReplyBody};
use hyper::body::Bytes;
use hyper::Method;
use status_text::StatusText;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;

/// What the serve loop publishes for the admin endpoints.
#[derive(Default)]
pub struct LoaderStatus {
    pub ready: bool,
    pub snapshot_version: u64,
    /// `/status`'s body ([`crate::pipeline::StatusReport::render`]), compressed.
    pub status: StatusText,
    pub builds: u64,
    pub last_build_seconds: f64,
    pub snapshot_bytes: usize,
    /// Clusters failed closed because Envoy rejected them.
    pub failed_closed_clusters: usize,
}

pub struct Admin {
    pub status: Arc<RwLock<LoaderStatus>>,
    pub xds: Arc<XdsState>,
    /// The latest probe results (`serve --probe-interval`).
    pub probes: Option<Arc<RwLock<probe::Results>>>,
    /// One Envoy's per-policy counters (`serve --envoy-admin`), for `/ui`.
    pub envoy: Option<Arc<RwLock<envoy_stats::PolicyCounters>>>,
}

impl Admin {
    /// Serves the endpoints on `listener` with the default [`Limits`].
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        http::serve(listener, Limits::default(), move |method: &Method, path: &str| {
            self.answer(method, path)
        })
        .await
    }

    fn answer(&self, method: &Method, path: &str) -> Reply {
        let (status, content_type, body) = if method != Method::GET {
            (405, "text/plain", Bytes::from_static(b"only GET\n").into())
        } else {
            self.respond(path)
        };
        Reply { status, content_type, body }
    }

    fn respond(&self, path: &str) -> (u16, &'static str, ReplyBody) {
        let status = self.status.read().unwrap();
        match path {
            "/healthz" => (200, "text/plain", Bytes::from_static(b"ok\n").into()),
            "/readyz" if status.ready => (200, "text/plain", Bytes::from_static(b"ready\n").into()),
            "/readyz" => (503, "text/plain", Bytes::from_static(b"no snapshot yet\n").into()),
            "/status" => (200, "application/json", self.status_body(&status)),
            "/ui" => (200, "text/html; charset=utf-8", self.ui(&status).into()),
            "/xds" => {
                let body = serde_json::json!({
                    "snapshot_version": status.snapshot_version,
                    "envoys": self.xds.sessions(),
                });
                (200, "application/json", format!("{body:#}\n").into())
            }
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics(&status).into()),
            _ => (404, "text/plain", Bytes::from_static(b"not found\n").into()),
        }
    }

    /// `/status`: the rebuild's text, decompressed as it is sent (about 100 MB at 100,000
    /// backends), with the latest probe results as its last member `probes` when probing.
    fn status_body(&self, status: &LoaderStatus) -> ReplyBody {
        // The document is rendered once per rebuild and probes finish on their own schedule, so
        // they are added as it is sent.
        let probes = self.probes.as_ref().map(|probes| {
            serde_json::to_string(&probes.read().unwrap().reports).expect("reports serialize")
        });
        ReplyBody::Status { text: status.status.clone(), probes }
    }

    fn ui(&self, status: &LoaderStatus) -> String {
        let document: serde_json::Value =
            serde_json::from_str(&status.status.text()).unwrap_or(serde_json::Value::Null);
        let probes = self.probes.as_ref().map(|p| p.read().unwrap());
        let envoy = self.envoy.as_ref().map(|e| e.read().unwrap());
        ui::page(&document, probes.as_deref(), envoy.as_deref(), status.snapshot_version)
    }

    fn metrics(&self, status: &LoaderStatus) -> String {
        let m = &self.xds.metrics;
        let sessions = self.xds.sessions();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "backendtls_loader_snapshot_version",
            "gauge",
            "Version of the current xDS snapshot.",
            status.snapshot_version.to_string(),
        );
        metric(
            "backendtls_loader_snapshot_bytes",
            "gauge",
            "Encoded size of all resources in the snapshot.",
            status.snapshot_bytes.to_string(),
        );
        metric(
            "backendtls_loader_builds_total",
            "counter",
            "Translations of the config directory.",
            status.builds.to_string(),
        );
        metric(
            "backendtls_loader_translation_seconds",
            "gauge",
            "Duration of the last translation.",
            format!("{:.6}", status.last_build_seconds),
        );
        metric(
            "backendtls_loader_failed_closed_clusters",
            "gauge",
            "Clusters failed closed because Envoy rejected their configuration (see /status rejected).",
            status.failed_closed_clusters.to_string(),
        );
        metric(
            "backendtls_loader_connected_envoys",
            "gauge",
            "Envoys with an open ADS stream.",
            sessions.len().to_string(),
        );
        metric(
            "backendtls_loader_xds_pushes_total",
            "counter",
            "xDS responses sent.",
            m.responses_sent.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "backendtls_loader_xds_resources_sent_total",
            "counter",
            "Resources sent in xDS responses.",
            m.resources_sent.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "backendtls_loader_xds_bytes_sent_total",
            "counter",
            "Encoded resource bytes sent in xDS responses.",
            m.bytes_sent.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "backendtls_loader_xds_acks_total",
            "counter",
            "xDS responses Envoy accepted.",
            m.acks.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "backendtls_loader_xds_nacks_total",
            "counter",
            "xDS responses Envoy rejected.",
            m.nacks.load(Ordering::Relaxed).to_string(),
        );
        let c = &self.xds.connections;
        for (name, help, value) in [
            ("backendtls_loader_xds_limited_streams_total", "ADS streams refused or ended by a limit (connections, streams, names, message size).", &m.limited_streams),
            ("backendtls_loader_xds_slow_streams_total", "ADS streams ended because the client stopped reading (--xds-send-timeout).", &m.slow_streams),
            ("backendtls_loader_xds_unauthorized_streams_total", "ADS streams ended because the node is not the one the client certificate names.", &m.unauthorized_streams),
            ("backendtls_loader_xds_unknown_types_total", "xDS requests for a type URL the loader does not serve.", &m.unknown_types),
            ("backendtls_loader_xds_secrets_withheld_total", "Secrets asked for by a stream that was sent no cluster referencing them.", &m.secrets_withheld),
            ("backendtls_loader_xds_connections_accepted_total", "xDS connections accepted.", &c.accepted),
            ("backendtls_loader_xds_connections_over_limit_total", "xDS connections refused by the connection limit.", &c.over_limit),
            ("backendtls_loader_xds_tls_handshake_failures_total", "xDS connections whose TLS handshake failed.", &c.handshake_failures),
        ] {
            metric(name, "counter", help, value.load(Ordering::Relaxed).to_string());
        }
        sent_by_type_metrics(&mut out, m);
        if let Some(probes) = &self.probes {
            probe_metrics(&mut out, &probes.read().unwrap());
        }
        out
    }
}

/// `backendtls_loader_xds_*` by resource type (`type="CDS"`, ...): what was sent of each, the
/// time spent answering its requests, and when its last response was (a benchmark reads when the
/// loader finished an initial sync).
fn sent_by_type_metrics(out: &mut String, m: &XdsMetrics) {
    let seconds = |micros: &AtomicU64| {
        let micros = micros.load(Ordering::Relaxed);
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    };
    let count = |n: &AtomicU64| n.load(Ordering::Relaxed).to_string();
    type Series<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&TypeSent) -> String);
    let series: [Series; 5] = [
        (
            "backendtls_loader_xds_pushes_by_type_total",
            "counter",
            "xDS responses sent, by resource type.",
            &|t| count(&t.responses),
        ),
        (
            "backendtls_loader_xds_resources_sent_by_type_total",
            "counter",
            "Resources sent in xDS responses, by resource type.",
            &|t| count(&t.resources),
        ),
        (
            "backendtls_loader_xds_bytes_sent_by_type_total",
            "counter",
            "Encoded resource bytes sent in xDS responses, by resource type.",
            &|t| count(&t.bytes),
        ),
        (
            "backendtls_loader_xds_answering_seconds_total",
            "counter",
            "Time spent answering xDS requests that got a response, from the decoded request \
             until its response was built, by resource type.",
            &|t| seconds(&t.answering_micros),
        ),
        (
            "backendtls_loader_xds_last_push_timestamp_seconds",
            "gauge",
            "When the last xDS response of the type was built and queued for its stream \
             (Unix seconds; 0: none yet).",
            &|t| seconds(&t.last_sent_unix_micros),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (short, sent) in SENT_TYPES.iter().zip(&m.sent_by_type) {
            let _ = writeln!(out, "{name}{{type=\"{short}\"}} {}", value(sent));
        }
    }
}

/// `backendtls_probe_*` and `backendtls_backend_certificate_not_after_seconds`: one series per
/// probed endpoint. `policy` is `<namespace>/<name>`, as in Envoy's per-policy stats, so that
/// dashboards can join the two.
fn probe_metrics(out: &mut String, results: &probe::Results) {
    let labels = |r: &probe::Report| {
        format!(
            "namespace=\"{}\",policy=\"{}/{}\",endpoint=\"{}\"",
            escape_label(&r.namespace),
            escape_label(&r.namespace),
            escape_label(&r.policy),
            escape_label(&r.endpoint)
        )
    };
    let _ = writeln!(
        out,
        "# HELP backendtls_probe_result 1 for the result of the latest probe of each endpoint a \
         BackendTLSPolicy governs (result=\"ok\" when the handshake would succeed).\n\
         # TYPE backendtls_probe_result gauge"
    );
    for report in &results.reports {
        let _ = writeln!(
            out,
            "backendtls_probe_result{{{},result=\"{}\"}} 1",
            labels(report),
            report.result.label()
        );
    }
    let _ = writeln!(
        out,
        "# HELP backendtls_backend_certificate_not_after_seconds When the certificate each \
         endpoint presented expires (Unix seconds).\n\
         # TYPE backendtls_backend_certificate_not_after_seconds gauge"
    );
    for report in &results.reports {
        if let Some(certificate) = &report.certificate {
            let _ = writeln!(
                out,
                "backendtls_backend_certificate_not_after_seconds{{{}}} {}",
                labels(report),
                certificate.not_after_seconds
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP backendtls_probe_runs_total Completed probe runs.\n\
         # TYPE backendtls_probe_runs_total counter\nbackendtls_probe_runs_total {}\n\
         # HELP backendtls_probe_run_seconds Duration of the latest probe run.\n\
         # TYPE backendtls_probe_run_seconds gauge\nbackendtls_probe_run_seconds {:.6}",
        results.runs, results.last_run_seconds
    );
}

/// Prometheus label values escape `\\`, `"` and newlines.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
