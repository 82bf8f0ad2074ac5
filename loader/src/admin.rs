//! The loader's own HTTP endpoints: `/healthz`, `/readyz`, `/status`, `/xds`, `/metrics`.
//!
//! What each endpoint answers is here; the HTTP server and its bounds against hostile clients
//! are in [`http`].

pub mod http;

use crate::xds::server::XdsState;
use http::{Limits, Reply};
use hyper::Method;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;

/// What the serve loop publishes for the admin endpoints.
#[derive(Default)]
pub struct LoaderStatus {
    pub ready: bool,
    pub snapshot_version: u64,
    /// `/status`'s body ([`crate::pipeline::StatusReport::render`]).
    pub status: Arc<String>,
    pub builds: u64,
    pub last_build_seconds: f64,
    pub snapshot_bytes: usize,
    /// Clusters failed closed because Envoy rejected them.
    pub failed_closed_clusters: usize,
}

pub struct Admin {
    pub status: Arc<RwLock<LoaderStatus>>,
    pub xds: Arc<XdsState>,
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
            (405, "text/plain", "only GET\n".to_string())
        } else {
            self.respond(path)
        };
        Reply { status, content_type, body }
    }

    fn respond(&self, path: &str) -> (u16, &'static str, String) {
        let status = self.status.read().unwrap();
        match path {
            "/healthz" => (200, "text/plain", "ok\n".into()),
            "/readyz" if status.ready => (200, "text/plain", "ready\n".into()),
            "/readyz" => (503, "text/plain", "no snapshot yet\n".into()),
            "/status" => (200, "application/json", status.status.to_string()),
            "/xds" => {
                let body = serde_json::json!({
                    "snapshot_version": status.snapshot_version,
                    "envoys": self.xds.sessions(),
                });
                (200, "application/json", format!("{body:#}\n"))
            }
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics(&status)),
            _ => (404, "text/plain", "not found\n".into()),
        }
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
        out
    }
}
