//! `serve`: watch the config directory, rebuild on every change, publish snapshots over ADS.

use crate::admin::status_text::StatusText;
use crate::admin::{Admin, LoaderStatus};
use crate::pipeline::{self, Input, StatusReport};
use crate::probe;
use crate::quarantine::Quarantine;
use crate::resolve;
use crate::source::{ConfigDir, FileEvents};
use crate::xds::limits::Limits;
use crate::xds::listener;
use crate::xds::server::{Rejection, XdsState};
use crate::xds::snapshot::Snapshot;
use crate::xds::tls::{ServerTls, TlsFiles};
use crate::xds::translate::{TranslateOptions, Translator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct ServeOptions {
    pub config_dir: PathBuf,
    /// `--source kubernetes`: watch the API server instead of `config_dir`.
    pub kubernetes: Option<crate::kube::KubeOptions>,
    pub xds_address: SocketAddr,
    pub admin_address: SocketAddr,
    pub resolve: resolve::Options,
    pub translate: TranslateOptions,
    pub xds: XdsServeOptions,
    /// Preflight probes of the backends, when asked for.
    pub probe: Option<ProbeSchedule>,
    /// An Envoy admin address (`host:port`) whose per-policy counters `/ui` shows.
    pub envoy_admin: Option<String>,
}

/// `--probe-interval` and how each probe runs.
#[derive(Clone, Debug)]
pub struct ProbeSchedule {
    pub interval: Duration,
    pub options: probe::Options,
}

/// How the ADS server is secured and limited.
#[derive(Clone, Debug, Default)]
pub struct XdsServeOptions {
    /// Mutual TLS; without it ADS is plaintext, which only a loopback address allows unless
    /// `insecure` says otherwise.
    pub tls: Option<TlsFiles>,
    /// Serve plaintext ADS on a non-loopback address (`--insecure-xds`).
    pub insecure: bool,
    pub limits: Limits,
}

/// Quiet time after a file event before rebuilding, so that the events of one save (an editor's
/// write and rename) become one rebuild. Short, since it adds to every change's latency and a
/// rebuild that catches a half-done multi-file edit is followed by another.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// How long a stop waits for xDS connections to close after their streams were ended; whatever is
/// still open then is cut. Together with the runtime's own shutdown this keeps a stop under 2 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why `serve` cannot start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to serve xDS in plaintext on {0}, which is not a loopback address: xDS carries private keys. Give --xds-certs DIR (see `backendtls-loader certs`), or --insecure-xds to serve plaintext anyway")]
    PlaintextOnNetwork(SocketAddr),
    #[error("xDS TLS: {0}")]
    Tls(#[from] crate::xds::tls::TlsError),
    #[error(transparent)]
    Kubernetes(Box<crate::kube::StartError>),
    #[error(transparent)]
    ConfigDir(#[from] pipeline::ReloadError),
    #[error("cannot start the rebuild thread: {0}")]
    RebuildThread(std::io::Error),
    #[error("cannot watch: {0}")]
    Watcher(notify::Error),
    #[error("cannot watch {}: {error}", dir.display())]
    Watch { dir: PathBuf, error: notify::Error },
    /// `what`: `xDS` or `admin`.
    #[error("cannot listen for {what} on {address}: {error}")]
    Listen { what: &'static str, address: SocketAddr, error: std::io::Error },
    #[error("xDS server failed: {0}")]
    Server(tonic::transport::Error),
}

/// Refuses plaintext ADS where anything but this machine could reach it: xDS carries the
/// Gateway's client certificate keys.
fn check_transport(address: SocketAddr, options: &XdsServeOptions) -> Result<(), ServeError> {
    if options.tls.is_some() || address.ip().is_loopback() {
        return Ok(());
    }
    if options.insecure {
        tracing::warn!(
            xds = %address,
            "serving xDS WITHOUT TLS on a non-loopback address (--insecure-xds): anyone who can \
             reach it can read every secret the loader serves, private keys included"
        );
        return Ok(());
    }
    Err(ServeError::PlaintextOnNetwork(address))
}

pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    check_transport(options.xds_address, &options.xds)?;
    let tls = match &options.xds.tls {
        Some(files) => Some(ServerTls::load(files.clone())?),
        None => None,
    };
    // Rebuilds read files and resolve everything: they run on a thread of their own, so that
    // neither a slow disk nor a large directory ever holds up the tasks serving xDS and admin.
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    let mut watcher = None;
    let config: Box<dyn Input> = match &options.kubernetes {
        Some(kube) => {
            let changed = events_tx.clone();
            let notify = move || drop(changed.send(Event::FilesChanged));
            let started = crate::kube::start(kube.clone(), Arc::new(notify)).await;
            Box::new(started.map_err(|e| ServeError::Kubernetes(Box::new(e)))?)
        }
        None => {
            // The watcher starts before the first listing, so that no change falls between
            // them: from then on a reload checks only the paths events name.
            let watching = watch_dir(&options.config_dir, events_tx.clone());
            let mut config = ConfigDir::new(&options.config_dir);
            config.watch_events();
            // A directory that cannot be read is reported as such, before the watcher's error.
            Input::reload(&mut config)?;
            watcher = Some(watching?);
            Box::new(config)
        }
    };

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let limits = options.xds.limits.clone();
    let xds = XdsState::with_limits(snapshot_rx, limits.clone());
    let status = Arc::new(RwLock::new(LoaderStatus::default()));
    let (probe_plan_tx, probe_plan_rx) = watch::channel(Arc::new(Vec::new()));
    let probe_results =
        options.probe.as_ref().map(|_| Arc::new(RwLock::new(probe::Results::default())));
    let mut rebuild = Rebuilder {
        probe_plan: options.probe.is_some().then_some(probe_plan_tx),
        config,
        quarantine: Quarantine::default(),
        resolver: resolve::Incremental::new(options.resolve.clone()),
        quarantined: false,
        translate: options.translate.clone(),
        translator: Translator::default(),
        snapshot_tx,
        status: status.clone(),
    };
    rebuild.run();

    let rejections_tx = std::sync::Mutex::new(events_tx.clone());
    xds.report_rejections_to(move |rejection| {
        let _ = rejections_tx.lock().unwrap().send(Event::Rejected(rejection));
    });
    drop(events_tx);
    std::thread::Builder::new()
        .name("rebuild".into())
        .spawn(move || {
            // The paths file events named since the last rebuild.
            let mut files = FileEvents::default();
            let on_event = |rebuild: &mut Rebuilder, files: &mut FileEvents, event| match event {
                Event::Rejected(rejection) => rebuild.quarantine.add(rejection),
                Event::FilesChanged => {}
                Event::Files(events) => files.merge(events),
            };
            while let Ok(event) = events_rx.recv() {
                on_event(&mut rebuild, &mut files, event);
                // Debounce: wait until the directory has been quiet for a moment.
                while let Ok(event) = events_rx.recv_timeout(DEBOUNCE) {
                    on_event(&mut rebuild, &mut files, event);
                }
                rebuild.config.files_changed(std::mem::take(&mut files));
                rebuild.run();
            }
        })
        .map_err(ServeError::RebuildThread)?;

    let listen = |what, address| async move {
        let error = |error| ServeError::Listen { what, address, error };
        tokio::net::TcpListener::bind(address).await.map_err(error)
    };
    let xds_listener = listen("xDS", options.xds_address).await?;
    let admin_listener = listen("admin", options.admin_address).await?;
    tracing::info!(
        xds = %options.xds_address, admin = %options.admin_address, dir = %options.config_dir.display(),
        xds_transport = if tls.is_some() { "mTLS" } else { "plaintext" }, "serving"
    );

    if let (Some(schedule), Some(results)) = (&options.probe, &probe_results) {
        let schedule = schedule.clone();
        tokio::spawn(probe::keep_probing(
            probe_plan_rx,
            schedule.interval,
            schedule.options,
            results.clone(),
        ));
    }
    let envoy = options.envoy_admin.clone().map(|address| {
        let counters = Arc::new(RwLock::new(crate::admin::envoy_stats::PolicyCounters::default()));
        tokio::spawn(crate::admin::envoy_stats::keep_reading(address, counters.clone()));
        counters
    });
    let admin = Arc::new(Admin { status, xds: xds.clone(), probes: probe_results, envoy });
    tokio::spawn(admin.serve(admin_listener));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch());
    }
    let incoming = listener::incoming(xds_listener, tls, &limits, xds.connections.clone());
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.http2_max_concurrent_streams())
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .add_service(xds.service())
        .serve_with_incoming_shutdown(incoming, xds.shutting_down());
    let mut grpc = std::pin::pin!(grpc);
    let stop = shutdown_signal();
    let result = tokio::select! {
        result = &mut grpc => result.map_err(ServeError::Server),
        () = stop => {
            // Every stream ends with UNAVAILABLE and tonic stops accepting and sends GOAWAY;
            // clients then close their connections. Whatever is open after the grace period
            // is cut when the runtime stops.
            xds.shut_down();
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut grpc).await.is_err() {
                tracing::warn!("xDS connections still open after {SHUTDOWN_GRACE:?}; closing them");
            }
            Ok(())
        }
    };
    drop(watcher);
    result
}

/// Watches the config directory: every change wakes the rebuild thread with the paths it named
/// (or word that the events cannot be trusted to name every change: see [`FileEvents`]).
fn watch_dir(
    dir: &std::path::Path,
    files_tx: std::sync::mpsc::Sender<Event>,
) -> Result<notify::RecommendedWatcher, ServeError> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files ourselves raises access events; only changes matter.
        if let Some(events) = FileEvents::from_notify(event) {
            let _ = files_tx.send(Event::Files(events));
        }
    })
    .map_err(ServeError::Watcher)?;
    use notify::Watcher;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(|error| ServeError::Watch { dir: dir.to_path_buf(), error })?;
    Ok(watcher)
}

/// gRPC request headers from Envoy are a few hundred bytes.
const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// What wakes the rebuild thread.
enum Event {
    /// The Kubernetes objects changed (`--source kubernetes`).
    FilesChanged,
    /// The watcher saw these changes in the config directory.
    Files(FileEvents),
    /// Envoy refused resources: fail the clusters affected closed.
    Rejected(Rejection),
}

struct Rebuilder {
    config: Box<dyn Input>,
    quarantine: Quarantine,
    /// Keeps the last resolution, and re-resolves only what each change touches.
    resolver: resolve::Incremental,
    /// The last build's IR was changed by the quarantine (so the translator's last input was not
    /// the resolver's).
    quarantined: bool,
    translate: TranslateOptions,
    translator: Translator,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    status: Arc<RwLock<LoaderStatus>>,
    /// Where the probe task learns what to probe (`--probe-interval` only).
    probe_plan: Option<watch::Sender<Arc<Vec<probe::Target>>>>,
}

impl Rebuilder {
    fn run(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.config.reload() {
            // The directory itself went away or became unreadable: keep serving what we have.
            tracing::error!(error = %e, "keeping the current configuration");
            return;
        }
        if !self.config.ready() {
            tracing::debug!("input not complete yet; not building");
            return;
        }
        let reloaded = started.elapsed();
        let (store, errors) = self.config.objects();
        let build = self.resolver.update(store);
        let resolution = self.resolver.resolution();
        let resolved_at = started.elapsed();
        let current = self.snapshot_tx.borrow().clone();
        // Failing clusters closed that Envoy refused changes the IR: a copy, so that the
        // resolver's own stays what the objects say (the quarantine is rarely in use).
        let quarantined;
        let quarantined_now = !self.quarantine.is_idle();
        let ir = if !quarantined_now {
            &resolution.ir
        } else {
            let mut ir = resolution.ir.clone();
            self.quarantine.apply(&mut ir, &current);
            quarantined = ir;
            &quarantined
        };
        if current.version == 0 {
            let unusable = self.config.unusable();
            if !unusable.is_empty() {
                // What an unreadable file holds is unknown: it could be the BackendTLSPolicy of a
                // Service that would otherwise be served in plaintext. Nothing is served until
                // every file has been read once; later, a broken file keeps its last good content.
                tracing::error!(
                    files = ?unusable,
                    "not serving a first configuration while files cannot be read (see /status); fix or remove them"
                );
                let report = StatusReport::of(resolution, errors);
                for error in &report.errors {
                    tracing::warn!(%error, "input problem");
                }
                let mut status = self.status.write().unwrap();
                status.status = StatusText::compress(|w| report.write_to(0, w));
                status.builds += 1;
                return;
            }
        }
        // What the resolution changed, unless a quarantine changed the IR now or last time.
        let changes = self.resolver.changes().filter(|_| !quarantined_now && !self.quarantined);
        self.quarantined = quarantined_now;
        let version = current.version + 1;
        let mut next = self.translator.snapshot(ir, &self.translate, changes, version);
        let translated_at = started.elapsed();
        if let Some(plan) = &self.probe_plan {
            // What Envoy is told is what gets probed (quarantined clusters included, as served).
            plan.send_replace(Arc::new(probe::targets(ir, None)));
        }
        let mut report = StatusReport::of(resolution, errors);
        report.rejected = self.quarantine.reports();
        let changed = !next.same_content(&current) || current.version == 0;
        if !changed {
            next.version = current.version;
        }
        let (version, bytes) = (next.version, next.total_bytes());
        let elapsed = started.elapsed();
        // Envoy first; logs, status and freeing this build's data after.
        if changed {
            self.snapshot_tx.send_replace(Arc::new(next));
        }
        tracing::debug!(
            ?reloaded,
            ?resolved_at,
            ?translated_at,
            ?elapsed,
            ?build,
            "rebuild phases"
        );
        if changed {
            tracing::info!(version, seconds = elapsed.as_secs_f64(), "new snapshot");
        }
        for error in &report.errors {
            tracing::warn!(%error, "input problem (the file's last good content stays in use)");
        }
        for problem in report.problems {
            tracing::warn!(object = %problem.object, reason = %problem.reason, "not served as written");
        }
        self.config.built(&report);
        // Rendered before the lock is taken (admin requests are answered meanwhile), compressed
        // as it is written: the text (about 100 MB at 100,000 backends) never exists whole.
        let rendering = std::time::Instant::now();
        let text = StatusText::compress(|w| report.write_to(version, w));
        tracing::debug!(
            bytes = text.len(), compressed = text.compressed_len(), elapsed = ?rendering.elapsed(),
            "status rendered"
        );
        let mut status = self.status.write().unwrap();
        status.status = text;
        drop(report);
        status.ready = true;
        status.snapshot_version = version;
        status.builds += 1;
        status.last_build_seconds = elapsed.as_secs_f64();
        status.snapshot_bytes = bytes;
        status.failed_closed_clusters = self.quarantine.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_xds_only_on_loopback_unless_insecure() {
        let plaintext = XdsServeOptions::default();
        let insecure = XdsServeOptions { insecure: true, ..XdsServeOptions::default() };
        let tls = XdsServeOptions {
            tls: Some(TlsFiles::in_dir(std::path::Path::new("/certs"))),
            ..XdsServeOptions::default()
        };
        for loopback in ["127.0.0.1:18000", "127.3.4.5:1", "[::1]:18000"] {
            assert!(check_transport(loopback.parse().unwrap(), &plaintext).is_ok());
        }
        for open in ["0.0.0.0:18000", "[::]:18000", "10.1.2.3:18000"] {
            let address = open.parse().unwrap();
            let error = check_transport(address, &plaintext).unwrap_err();
            assert!(matches!(error, ServeError::PlaintextOnNetwork(a) if a == address));
            let error = error.to_string();
            assert!(error.contains("--insecure-xds") && error.contains(open), "{error}");
            assert!(check_transport(address, &insecure).is_ok());
            assert!(check_transport(address, &tls).is_ok());
        }
    }
}
