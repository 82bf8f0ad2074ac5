//! `backendtls-loader`: see README for the full CLI reference.
//!
//! The library forbids `unsafe`; here it is denied but for the allocator's tuning at startup.
#![deny(unsafe_code)]

/// mimalloc rather than glibc's allocator: the loader rebuilds large, short-lived structures on
/// every change, and glibc's per-thread arenas kept about 70 MB more resident at 10,000 backends.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tunes mimalloc for a process whose every rebuild frees most of what the previous one built:
/// freed pages go back to the OS at once instead of after 10 ms, and arena memory is committed as
/// it is used rather than up front. At 10,000 backends the two took the serving loader's peak
/// resident memory from about 190 MB to under 150 MB (BENCHMARKS.md); the price is page faults,
/// about a fifth of a rebuild's time. The arena option only counts before the first allocation
/// reserves an arena, so this runs as an ELF constructor, before Rust's runtime allocates.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[allow(unsafe_code)]
extern "C" fn tune_allocator() {
    use libmimalloc_sys::{mi_option_set, mi_option_t};
    // Positions in mimalloc v2's `mi_option_e` (libmimalloc-sys 0.1.49 names neither).
    const MI_OPTION_ARENA_EAGER_COMMIT: mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: mi_option_t = 15;
    // SAFETY: writes process-wide options, which mimalloc allows at any time, even before its
    // own initialization.
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// For the commands that build once and exit (`check`, `render`, `probe`): freed pages are kept
/// for 10 ms (mimalloc's default) rather than returned at once. Nothing is rebuilt, so the
/// immediate purge saves no memory (the same peak at 100,000 backends) and its page faults cost
/// 0.3-0.4 s of system time there (BENCHMARKS.md, "Parsing at 100,000 backends").
fn tune_allocator_for_one_build() {
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    #[allow(unsafe_code)]
    // SAFETY: as in `tune_allocator`; the purge delay may change at any time.
    unsafe {
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

use backendtls_loader::{
    admin, certs, objects, pipeline, probe, resolve, serve, source::ConfigDir, xds,
};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xds::bootstrap::PrivateKeys;
use xds::bootstrap::XdsClientTls;
use xds::limits::Limits;
use xds::tls::TlsFiles;
use xds::translate::{Delivery, Filter, FilterBuild, TranslateOptions, Validator};

/// How long the runtime may take to stop once `serve` returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(
    name = "backendtls-loader",
    version,
    about = "Gateway API BackendTLSPolicy control plane for stock Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Translation {
    /// Directory of Kubernetes manifests: `.yaml`, `.yml` and `.json` files, multi-document YAML,
    /// subdirectories. Required except with `serve --source kubernetes`.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Serve only Gateways of this gatewayClassName (default: every Gateway in the directory).
    #[arg(long)]
    gateway_class: Option<String>,
    /// Address Envoy binds Gateway listeners to.
    #[arg(long, default_value = "127.0.0.1")]
    listener_address: String,
    /// Trust bundle used for `wellKnownCACertificates: System`.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    system_ca_bundle: PathBuf,
    /// Insert the backendtls HTTP filter into every Gateway listener.
    #[arg(long, value_enum, default_value = "none")]
    filter: FilterKind,
    /// The filter's file: the `.wasm` (required with `--filter wasm`) or the dynamic module's `.so`
    /// (optional: without it Envoy loads `libbackendtls_filter.so` from
    /// ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
    #[arg(long)]
    filter_path: Option<PathBuf>,
    /// Have the filter add this request header (the governing policy) to requests to backends.
    #[arg(long)]
    filter_header: Option<String>,
    /// Who verifies backend certificates during the handshake: Envoy, or the filter's dynamic
    /// module (rustls-webpki; Envoy must find libbackendtls_filter.so through
    /// ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
    #[arg(long, value_enum, default_value = "envoy")]
    validator: ValidatorKind,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ValidatorKind {
    Envoy,
    DynamicModule,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FilterKind {
    None,
    Wasm,
    DynamicModule,
}

/// A command line the loader cannot run (exit code 2).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("--config-dir DIR is required")]
    NoConfigDir,
    #[error("--filter-path needs --filter wasm or --filter dynamic-module")]
    FilterPathWithoutFilter,
    #[error("--filter wasm needs --filter-path FILE.wasm")]
    WasmWithoutPath,
    #[error("filter file {} does not exist", .0.display())]
    NoFilterFile(PathBuf),
    #[error("{}: {error}", path.display())]
    Path { path: PathBuf, error: std::io::Error },
    #[error("--xds-cert, --xds-key and --xds-client-ca go together (or give --xds-certs DIR)")]
    XdsServerFiles,
    #[error("xDS limits must be at least 1")]
    XdsLimits,
    #[error(
        "--xds-ca, --xds-client-cert and --xds-client-key go together (or give --xds-certs DIR)"
    )]
    XdsClientFiles,
}

/// A `--probe-timeout` or `--probe-interval` that is not a duration (clap prints it).
#[derive(Debug, thiserror::Error)]
enum DurationError {
    #[error("{0:?}: expected a number and a unit, e.g. 30s")]
    NoNumber(String),
    #[error("{0:?}: the unit must be ms, s, m or h")]
    Unit(String),
    #[error("{0:?}: must be more than zero")]
    Zero(String),
}

impl Translation {
    fn config_dir(&self) -> Result<&std::path::Path, CliError> {
        self.config_dir.as_deref().ok_or(CliError::NoConfigDir)
    }

    fn resolve_options(&self) -> resolve::Options {
        resolve::Options {
            gateway_class: self.gateway_class.clone(),
            system_ca_bundle: self.system_ca_bundle.clone(),
            listener_address: Some(self.listener_address.clone()),
        }
    }
    fn translate_options(&self, delivery: Delivery) -> Result<TranslateOptions, CliError> {
        let build = match (self.filter, &self.filter_path) {
            (FilterKind::None, None) => FilterBuild::None,
            (FilterKind::None, Some(_)) => return Err(CliError::FilterPathWithoutFilter),
            (FilterKind::Wasm, None) => return Err(CliError::WasmWithoutPath),
            (FilterKind::Wasm, Some(path)) => FilterBuild::Wasm { path: absolute(path)? },
            (FilterKind::DynamicModule, path) => {
                FilterBuild::DynamicModule { path: path.as_deref().map(absolute).transpose()? }
            }
        };
        let filter = Filter { build, request_header: self.filter_header.clone() };
        let validator = match self.validator {
            ValidatorKind::Envoy => Validator::Envoy,
            ValidatorKind::DynamicModule => Validator::DynamicModule,
        };
        if validator == Validator::DynamicModule && self.filter != FilterKind::DynamicModule {
            // The validator ABI has no metrics; the module counts through the HTTP filter's
            // config, which exists only when the filter is the dynamic module too.
            tracing::warn!(
                "--validator dynamic-module without --filter dynamic-module: backends are \
                 verified, but the per-policy handshake counters will not exist"
            );
        }
        Ok(TranslateOptions {
            listener_address: self.listener_address.clone(),
            delivery,
            filter,
            validator,
            private_keys: PrivateKeys::default(),
        })
    }
}

/// Envoy resolves relative paths against its own working directory, not ours.
fn absolute(path: &std::path::Path) -> Result<PathBuf, CliError> {
    if !path.is_file() {
        return Err(CliError::NoFilterFile(path.to_path_buf()));
    }
    std::path::absolute(path).map_err(|error| CliError::Path { path: path.to_path_buf(), error })
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeFormat {
    Table,
    Json,
}

/// How probes run (`probe`, `serve --probe-interval`).
#[derive(clap::Args)]
struct ProbeArgs {
    /// Per probe, for the connection and the handshake together.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    probe_timeout: Duration,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    probe_concurrency: u16,
}

impl ProbeArgs {
    fn options(&self) -> probe::Options {
        probe::Options { timeout: self.probe_timeout, concurrency: self.probe_concurrency.into() }
    }
}

/// `250ms`, `5s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| DurationError::NoNumber(text.to_string()))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return Err(DurationError::Unit(text.to_string())),
    };
    if duration.is_zero() {
        return Err(DurationError::Zero(text.to_string()));
    }
    Ok(duration)
}

/// `serve`'s ADS transport and limits (README, "Secure xDS").
#[derive(clap::Args)]
struct XdsServeArgs {
    /// Serve ADS over mutual TLS with the files `backendtls-loader certs --out-dir DIR` writes:
    /// server.crt and server.key (the loader's), ca.crt (the CA Envoys' client certificates must
    /// chain to). They are read again when they change.
    #[arg(long, value_name = "DIR")]
    xds_certs: Option<PathBuf>,
    /// The loader's xDS certificate chain, PEM (instead of DIR/server.crt).
    #[arg(long, value_name = "FILE")]
    xds_cert: Option<PathBuf>,
    /// Its private key, PEM (instead of DIR/server.key).
    #[arg(long, value_name = "FILE")]
    xds_key: Option<PathBuf>,
    /// CA bundle that Envoys' client certificates must chain to (instead of DIR/ca.crt).
    #[arg(long, value_name = "FILE")]
    xds_client_ca: Option<PathBuf>,
    /// Allow plaintext ADS on a non-loopback --xds-address (refused otherwise: xDS carries
    /// private keys).
    #[arg(long)]
    insecure_xds: bool,
    /// xDS connections at once; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    xds_max_connections: usize,
    /// ADS streams at once on one connection; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams_per_connection)]
    xds_max_streams_per_connection: usize,
    /// Resource names one stream may subscribe to, at the least (twice what the snapshot serves
    /// if that is more); more end it with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_names_per_stream)]
    xds_max_names: usize,
    /// Largest request message, at the least (128 bytes per resource of the most numerous type
    /// served if that is more); larger ones end the stream with OUT_OF_RANGE.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_message_bytes)]
    xds_max_message_bytes: usize,
    /// Seconds a connection may stay without an open stream before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().idle_timeout.as_secs())]
    xds_idle_timeout: u64,
    /// End an ADS stream whose client has not read for this long (its queue is full): what was
    /// queued for it is freed, and no other stream ever waits on it.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().send_timeout.as_secs())]
    xds_send_timeout: u64,
    /// Close a connection whose client has not answered an HTTP/2 PING (sent every 30 s) for
    /// this long. Envoy answers none while it applies an update: up to 87 s for 100,000 clusters.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().keepalive_timeout.as_secs())]
    xds_keepalive_timeout: u64,
    /// Encoded resources in one delta response, at most: a larger push (the first answer to a
    /// new Envoy) is sent as several responses, each acknowledged on its own.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().response_bytes)]
    xds_max_response_bytes: usize,
}

impl XdsServeArgs {
    fn options(&self) -> Result<serve::XdsServeOptions, CliError> {
        let tls = match (&self.xds_certs, &self.xds_cert, &self.xds_key, &self.xds_client_ca) {
            (None, None, None, None) => None,
            (Some(dir), cert, key, ca) => {
                let defaults = TlsFiles::in_dir(dir);
                Some(TlsFiles {
                    cert: cert.clone().unwrap_or(defaults.cert),
                    key: key.clone().unwrap_or(defaults.key),
                    client_ca: ca.clone().unwrap_or(defaults.client_ca),
                })
            }
            (None, Some(cert), Some(key), Some(ca)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: ca.clone() })
            }
            (None, ..) => return Err(CliError::XdsServerFiles),
        };
        if self.xds_max_connections == 0
            || self.xds_max_streams_per_connection == 0
            || self.xds_max_names == 0
            || self.xds_max_message_bytes == 0
            || self.xds_idle_timeout == 0
            || self.xds_send_timeout == 0
            || self.xds_keepalive_timeout == 0
            || self.xds_max_response_bytes == 0
        {
            return Err(CliError::XdsLimits);
        }
        Ok(serve::XdsServeOptions {
            tls,
            insecure: self.insecure_xds,
            limits: Limits {
                max_connections: self.xds_max_connections,
                max_streams_per_connection: self.xds_max_streams_per_connection,
                max_names_per_stream: self.xds_max_names,
                max_message_bytes: self.xds_max_message_bytes,
                idle_timeout: Duration::from_secs(self.xds_idle_timeout),
                send_timeout: Duration::from_secs(self.xds_send_timeout),
                keepalive_timeout: Duration::from_secs(self.xds_keepalive_timeout),
                response_bytes: self.xds_max_response_bytes,
                ..Limits::default()
            },
        })
    }
}

/// `bootstrap`'s TLS to the loader.
#[derive(clap::Args)]
struct XdsClientArgs {
    /// Connect to the loader over mutual TLS with the files `backendtls-loader certs` wrote into
    /// DIR, at the path Envoy sees them: DIR/ca.crt, DIR/envoy-<node id>.crt and .key.
    #[arg(long, value_name = "DIR")]
    xds_certs: Option<String>,
    /// CA that signed the loader's certificate (instead of DIR/ca.crt).
    #[arg(long, value_name = "FILE")]
    xds_ca: Option<String>,
    /// Envoy's client certificate (instead of DIR/envoy-<node id>.crt).
    #[arg(long, value_name = "FILE")]
    xds_client_cert: Option<String>,
    /// Its private key (instead of DIR/envoy-<node id>.key).
    #[arg(long, value_name = "FILE")]
    xds_client_key: Option<String>,
    /// The name Envoy sends as SNI and requires in the loader's certificate.
    #[arg(long, value_name = "NAME", default_value = certs::DEFAULT_SERVER_NAME)]
    xds_server_name: String,
}

impl XdsClientArgs {
    fn tls(&self, node_id: &str) -> Result<Option<XdsClientTls>, CliError> {
        let files = (&self.xds_ca, &self.xds_client_cert, &self.xds_client_key);
        Ok(match (&self.xds_certs, files) {
            (None, (None, None, None)) => None,
            (Some(dir), (ca, cert, key)) => {
                let defaults = XdsClientTls::in_dir(dir, node_id, &self.xds_server_name);
                Some(XdsClientTls {
                    ca: ca.clone().unwrap_or(defaults.ca),
                    cert: cert.clone().unwrap_or(defaults.cert),
                    key: key.clone().unwrap_or(defaults.key),
                    server_name: defaults.server_name,
                })
            }
            (None, (Some(ca), Some(cert), Some(key))) => Some(XdsClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                server_name: self.xds_server_name.clone(),
            }),
            (None, _) => return Err(CliError::XdsClientFiles),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// The `--config-dir` directory.
    Files,
    /// The Kubernetes API server (kubeconfig or in-cluster).
    Kubernetes,
}

/// `serve --source kubernetes`.
#[derive(clap::Args)]
struct KubeArgs {
    /// Where objects come from.
    #[arg(long, value_enum, default_value = "files")]
    source: SourceKind,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch only these namespaces (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Watch only the Secrets with these labels (a label selector such as
    /// `backendtls.dev/client-certificate=true`), so that a cluster's Secrets are not all held.
    #[arg(long)]
    secret_selector: Option<String>,
    /// Do not write status back (every replica then only serves xDS).
    #[arg(long)]
    no_status: bool,
    /// Namespace of the leader election Lease (default: POD_NAMESPACE, else backendtls-system).
    #[arg(long)]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "backendtls-loader")]
    lease_name: String,
    /// This replica's identity in the Lease (default: HOSTNAME, else a random one).
    #[arg(long)]
    identity: Option<String>,
    /// Lease duration: a new leader takes over at most this long after the last one stopped
    /// renewing.
    #[arg(long, default_value = "15")]
    lease_duration_seconds: u64,
}

impl KubeArgs {
    fn options(&self, translation: &Translation) -> Option<backendtls_loader::kube::KubeOptions> {
        if self.source != SourceKind::Kubernetes {
            return None;
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let identity = self.identity.clone().or_else(|| env("HOSTNAME")).unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            format!("backendtls-loader-{}-{nanos}", std::process::id())
        });
        Some(backendtls_loader::kube::KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            namespaces: self.namespaces.clone(),
            secret_selector: self.secret_selector.clone(),
            controller_name: backendtls_loader::status::CONTROLLER_NAME.into(),
            gateway_class: translation.gateway_class.clone(),
            write_status: !self.no_status,
            lease_namespace: self
                .lease_namespace
                .clone()
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "backendtls-system".into()),
            lease_name: self.lease_name.clone(),
            identity,
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
        })
    }
}

// Parsed once per process: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Watch the directory and serve Envoy configuration over ADS (delta and state of the world).
    Serve {
        #[command(flatten)]
        translation: Translation,
        /// Where Envoys connect for ADS.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        /// The loader's own HTTP endpoints: /healthz, /readyz, /status, /xds, /metrics.
        #[arg(long, default_value = "127.0.0.1:18001")]
        admin_address: SocketAddr,
        #[command(flatten)]
        xds: XdsServeArgs,
        /// Probe every endpoint a policy governs this often (e.g. `30s`, `5m`), and whenever the
        /// configuration changes; results in /status, /metrics and /ui. Off by default.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        probe_interval: Option<Duration>,
        #[command(flatten)]
        probe: ProbeArgs,
        /// An Envoy's admin address (`http://127.0.0.1:19000`): /ui shows its per-policy counters.
        #[arg(long, value_name = "URL")]
        envoy_admin: Option<String>,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// TLS-handshake every endpoint each BackendTLSPolicy governs, as Envoy would (SNI, CA
    /// certificates, names, ALPN, TLS versions, the Gateway's client certificate), without sending
    /// any request. Exit 0 when every probe is ok, 1 when any is not, 2 on a usage error.
    Probe {
        #[command(flatten)]
        translation: Translation,
        /// Only the endpoints of this policy (`namespace/name`).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        policy: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ProbeFormat,
        #[command(flatten)]
        probe: ProbeArgs,
    },
    /// Print a complete static Envoy bootstrap for the directory (CAs inline).
    Render {
        #[command(flatten)]
        translation: Translation,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
        /// Envoy's admin address in the rendered bootstrap.
        #[arg(long, default_value = "127.0.0.1:19000")]
        admin_address: SocketAddr,
        /// Put the private keys of client certificates (Gateway clientCertificateRef Secrets)
        /// into the bootstrap. Without it the bootstrap names a file for each key instead.
        #[arg(long)]
        include_private_keys: bool,
        /// Where Envoy reads the private keys left out of the bootstrap:
        /// DIR/<namespace>/<secret name>/tls.key.
        #[arg(
            long,
            default_value = xds::bootstrap::DEFAULT_PRIVATE_KEY_DIR,
            conflicts_with = "include_private_keys"
        )]
        private_key_dir: PathBuf,
    },
    /// Validate and resolve the directory without serving: policy status and input errors.
    /// Exit 0 when everything parsed and every policy is Accepted and ResolvedRefs, 1 when not,
    /// 2 on a usage error or an unreadable directory.
    Check {
        #[command(flatten)]
        translation: Translation,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Print the bootstrap that points a stock Envoy at this loader over ADS.
    Bootstrap {
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_address: SocketAddr,
        /// Envoy's admin address.
        #[arg(long, default_value = "127.0.0.1:19000")]
        admin_address: SocketAddr,
        #[arg(long, default_value = "backendtls-envoy")]
        node_id: String,
        /// State-of-the-world ADS instead of delta.
        #[arg(long)]
        sotw: bool,
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
        #[command(flatten)]
        tls: XdsClientArgs,
    },
    /// Create a local CA, the loader's xDS server certificate and Envoy client certificates (for
    /// `serve --xds-certs DIR` and `bootstrap --xds-certs DIR`). Keeps what exists.
    Certs {
        /// Where to write ca.crt/ca.key, server.crt/server.key and envoy-<id>.crt/.key.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// A DNS name or IP address for the loader's certificate (repeatable; default
        /// backendtls-loader and localhost). Envoy checks it (`bootstrap --xds-server-name`).
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// The node id of an Envoy to issue a client certificate for (repeatable; default
        /// backendtls-envoy). The certificate names it as a DNS name and as
        /// spiffe://backendtls.local/envoy/<id>.
        #[arg(long = "envoy-id", value_name = "ID")]
        envoy_ids: Vec<String>,
        /// Validity of the server and Envoy certificates, in days (the CA's is ten years).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Issue the server and Envoy certificates again from the same CA.
        #[arg(long)]
        renew: bool,
    },
}

fn print(value: &serde_json::Value, format: Format) {
    match format {
        Format::Yaml => print!("{}", xds::json::to_yaml(value)),
        Format::Json => println!("{value:#}"),
    }
}

/// Writes a document to stdout as it is made, buffered (stdout alone flushes every line); false
/// (reported) when stdout fails.
fn write_document(document: &pipeline::Streamed<'_>, format: Format) -> bool {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = match format {
        Format::Yaml => document.write_yaml(&mut out),
        Format::Json => document.write_json(&mut out),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("backendtls-loader: cannot write the output: {e}");
            false
        }
    }
}

/// Ends a one-shot command without freeing what it built: at ten thousand backends, tearing the
/// object graph down takes longer than anything but parsing.
fn exit_without_teardown(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("backendtls-loader: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Check { .. } | Command::Render { .. } | Command::Probe { .. })
    {
        tune_allocator_for_one_build();
    }
    match cli.command {
        Command::Serve {
            translation,
            xds_address,
            admin_address,
            xds,
            probe_interval,
            probe,
            envoy_admin,
            kube,
        } => {
            let envoy_admin = match envoy_admin.as_deref().map(admin::envoy_stats::parse_address) {
                None => None,
                Some(Ok(address)) => Some(address),
                Some(Err(e)) => return usage_error(format!("--envoy-admin {e}")),
            };
            let translate = match translation.translate_options(Delivery::Ads) {
                Ok(options) => options,
                Err(e) => return usage_error(&e),
            };
            let xds = match xds.options() {
                Ok(options) => options,
                Err(e) => return usage_error(&e),
            };
            let kubernetes = kube.options(&translation);
            let config_dir = match (&kubernetes, translation.config_dir()) {
                (Some(_), _) => PathBuf::new(),
                (None, Ok(dir)) => dir.to_path_buf(),
                (None, Err(e)) => return usage_error(&e),
            };
            let options = serve::ServeOptions {
                config_dir,
                kubernetes,
                xds_address,
                admin_address,
                resolve: translation.resolve_options(),
                translate,
                xds,
                probe: probe_interval
                    .map(|interval| serve::ProbeSchedule { interval, options: probe.options() }),
                envoy_admin,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = runtime.block_on(serve::serve(options));
            // Tasks still running (streams of clients that did not hang up) are dropped, not
            // waited for: a stop takes at most serve::SHUTDOWN_GRACE plus this.
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backendtls-loader: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Render {
            translation,
            output,
            admin_address,
            include_private_keys,
            private_key_dir,
        } => {
            let mut translate = match translation.translate_options(Delivery::Inline) {
                Ok(options) => options,
                Err(e) => return usage_error(&e),
            };
            translate.private_keys = if include_private_keys {
                PrivateKeys::Inline
            } else {
                // Envoy resolves relative paths against its own working directory, not ours.
                match std::path::absolute(&private_key_dir) {
                    Ok(dir) => PrivateKeys::Files { dir },
                    Err(e) => return usage_error(format!("{}: {e}", private_key_dir.display())),
                }
            };
            let dir = match translation.config_dir() {
                Ok(dir) => dir,
                Err(e) => return usage_error(&e),
            };
            let mut config = ConfigDir::new(dir);
            if let Err(e) = config.reload() {
                eprintln!("backendtls-loader: cannot read {}: {e}", dir.display());
                return ExitCode::from(2);
            }
            // Translated as it is written (`pipeline::render_document`), not all at once.
            let resolved = pipeline::resolve(&config, &translation.resolve_options());
            if !resolved.errors.is_empty() {
                // A broken file could hold a policy: a bootstrap without it could send
                // plaintext where TLS was meant. Nothing is rendered until the input is fixed.
                for error in &resolved.errors {
                    eprintln!("error: {error}");
                }
                eprintln!("backendtls-loader: not rendering: the input has errors (see above)");
                exit_without_teardown(1)
            }
            for problem in resolved.problems() {
                eprintln!("warning: {}: {}", problem.object, problem.reason);
            }
            if let PrivateKeys::Files { dir } = &translate.private_keys {
                let ir = &resolved.resolution.ir;
                for certificate in
                    ir.client_certificates.values().chain(ir.listener_certificates.values())
                {
                    let path = xds::bootstrap::private_key_path(dir, &certificate.source);
                    eprintln!(
                        "note: Envoy reads the private key of Secret {} from {} \
                         (--include-private-keys puts it in the bootstrap instead)",
                        certificate.source,
                        path.display()
                    );
                }
            }
            let ir = &resolved.resolution.ir;
            let document = pipeline::render_document(ir, &translate, admin_address);
            exit_without_teardown(if write_document(&document, output) { 0 } else { 1 })
        }
        Command::Check { translation, output } => {
            // The filter flags are checked like `serve` would, though nothing is translated.
            if let Err(e) = translation.translate_options(Delivery::Ads) {
                return usage_error(&e);
            }
            let dir = match translation.config_dir() {
                Ok(dir) => dir,
                Err(e) => return usage_error(&e),
            };
            let mut config = ConfigDir::new(dir);
            if let Err(e) = config.reload() {
                return usage_error(format!("cannot read {}: {e}", dir.display()));
            }
            let resolved = pipeline::resolve(&config, &translation.resolve_options());
            if !write_document(&resolved.status_document(), output) {
                exit_without_teardown(1)
            }
            exit_without_teardown(if resolved.is_healthy() { 0 } else { 1 })
        }
        Command::Probe { translation, policy, output, probe } => {
            let policy = match policy.as_deref().map(|p| p.split_once('/')) {
                None => None,
                Some(Some((namespace, name))) if !namespace.is_empty() && !name.is_empty() => {
                    Some(objects::ObjectKey::new(namespace, name))
                }
                Some(_) => return usage_error("--policy takes NAMESPACE/NAME"),
            };
            let dir = match translation.config_dir() {
                Ok(dir) => dir,
                Err(e) => return usage_error(&e),
            };
            let mut config = ConfigDir::new(dir);
            if let Err(e) = config.reload() {
                return usage_error(format!("cannot read {}: {e}", dir.display()));
            }
            let resolved = pipeline::resolve(&config, &translation.resolve_options());
            for error in &resolved.errors {
                eprintln!("backendtls-loader: input problem: {error}");
            }
            let targets = probe::targets(&resolved.resolution.ir, policy.as_ref());
            if let Some(policy) = &policy {
                if !resolved
                    .resolution
                    .policies
                    .iter()
                    .any(|p| p.namespace == policy.namespace && p.name == policy.name)
                {
                    return usage_error(format!("no BackendTLSPolicy {policy} in the directory"));
                }
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let reports = runtime.block_on(probe::run(&targets, &probe.options()));
            match output {
                ProbeFormat::Json => {
                    println!("{:#}", serde_json::json!({ "probes": reports }))
                }
                ProbeFormat::Table => print!("{}", probe::table(&reports)),
            }
            let all_ok = reports.iter().all(|r| r.result == probe::Outcome::Ok);
            exit_without_teardown(if all_ok { 0 } else { 1 })
        }
        Command::Bootstrap { xds_address, admin_address, node_id, sotw, output, tls } => {
            let tls = match tls.tls(&node_id) {
                Ok(tls) => tls,
                Err(e) => return usage_error(&e),
            };
            let bootstrap = xds::bootstrap::ads_bootstrap(&xds::bootstrap::AdsBootstrapOptions {
                xds_address,
                admin_address,
                node_id,
                delta: !sotw,
                tls,
            });
            print(&xds::json::to_json(&bootstrap), output);
            ExitCode::SUCCESS
        }
        Command::Certs { out_dir, server_names, envoy_ids, days, renew } => {
            let mut options = certs::CertsOptions::new(out_dir);
            if !server_names.is_empty() {
                options.server_names = server_names;
            }
            if !envoy_ids.is_empty() {
                options.envoy_ids = envoy_ids;
            }
            options.days = days;
            options.renew = renew;
            match certs::create(&options) {
                Ok(report) => {
                    for path in &report.created {
                        eprintln!("created {}", path.display());
                    }
                    for path in &report.kept {
                        eprintln!("kept    {}", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backendtls-loader: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
