//! A real gRPC ADS client (tonic over rustls, Envoy's generated client from envoy-types) for the
//! tests that talk to the loader's xDS server directly, and the certificates they present.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::{Message, Name};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::certs::CertifiedKey;
use crate::loader::create_xds_certs;

/// The name the loader's certificate carries by default (`certs --server-name`).
pub const SERVER_NAME: &str = "backendtls-loader";
/// How long a test waits for one xDS answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory `backendtls-loader certs` wrote: a CA, the loader's certificate, and one client
/// certificate per Envoy node id.
pub struct XdsCerts {
    dir: TempDir,
}

impl XdsCerts {
    /// Runs the real `backendtls-loader certs` for `envoy_ids`.
    pub fn create(envoy_ids: &[&str]) -> XdsCerts {
        let dir = tempfile::Builder::new().prefix("btls-xds-certs-").tempdir().expect("temp dir");
        create_xds_certs(dir.path(), envoy_ids);
        XdsCerts { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    pub fn ca_pem(&self) -> String {
        self.read("ca.crt")
    }

    /// Envoy `id`'s client certificate, as `certs` issued it.
    pub fn envoy(&self, id: &str) -> CertifiedKey {
        CertifiedKey {
            cert_pem: self.read(&format!("envoy-{id}.crt")),
            key_pem: self.read(&format!("envoy-{id}.key")),
        }
    }

    /// A client presenting Envoy `id`'s certificate and trusting this CA.
    pub fn client(&self, id: &str) -> ClientAuth {
        ClientAuth::Tls { server_ca_pem: self.ca_pem(), client: Some(self.envoy(id)) }
    }

    /// A client certificate for `id` from this CA, valid from `not_before` to `not_after`
    /// (e.g. one that has expired).
    pub fn issue_client(
        &self,
        id: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> CertifiedKey {
        let ca_key = KeyPair::from_pem(&self.read("ca.key")).expect("CA key");
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem(), ca_key).expect("CA");
        client_certificate(&issuer, id, not_before, not_after)
    }
}

/// A clientAuth certificate naming `id` as a DNS name, signed by `issuer`.
pub fn client_certificate(
    issuer: &Issuer<'_, KeyPair>,
    id: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> CertifiedKey {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, id);
    params.subject_alt_names.push(SanType::DnsName(id.try_into().expect("DNS name")));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// How the client connects.
#[derive(Clone)]
pub enum ClientAuth {
    Plaintext,
    /// TLS trusting `server_ca_pem` for the loader's certificate (named [`SERVER_NAME`]),
    /// presenting `client` if given.
    Tls {
        server_ca_pem: String,
        client: Option<CertifiedKey>,
    },
}

/// One HTTP/2 connection to the loader's ADS server, with its own runtime.
pub struct AdsClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl AdsClient {
    /// Connects to 127.0.0.1:`port`; Err describes a refused connection or failed handshake.
    pub fn connect(port: u16, auth: &ClientAuth) -> Result<AdsClient, String> {
        AdsClient::connect_with_window(port, auth, None)
    }

    /// Like [`AdsClient::connect`], advertising an HTTP/2 stream window of `window` bytes
    /// (hyper's default is 2 MiB): a client that does not read then blocks the server sooner.
    pub fn connect_with_window(
        port: u16,
        auth: &ClientAuth,
        window: Option<u32>,
    ) -> Result<AdsClient, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .initial_stream_window_size(window);
        let channel = match auth {
            ClientAuth::Plaintext => runtime.block_on(endpoint.connect()),
            ClientAuth::Tls { server_ca_pem, client } => {
                let connector = tls_connector(server_ca_pem, client.as_ref())?;
                let connect = tower::service_fn(move |_: tonic::codegen::http::Uri| {
                    let connector = connector.clone();
                    async move {
                        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
                            .expect("server name");
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                });
                runtime.block_on(endpoint.connect_with_connector(connect))
            }
        }
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        Ok(AdsClient { runtime, channel })
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The ADS client on this connection (clones share it).
    pub fn ads(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(256 << 20)
    }

    /// Opens a delta stream and sends `first`.
    pub fn delta(&self, first: DeltaDiscoveryRequest) -> Result<DeltaStream<'_>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.try_send(first).expect("room for the first request");
        let mut ads = self.ads();
        let responses = self.block_on(async move {
            tokio::time::timeout(
                ANSWER_TIMEOUT,
                ads.delta_aggregated_resources(ReceiverStream::new(rx)),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no response headers")))
        })?;
        Ok(DeltaStream { client: self, requests: tx, responses: responses.into_inner() })
    }
}

fn tls_connector(
    server_ca_pem: &str,
    client: Option<&CertifiedKey>,
) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                .map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens a TLS connection, completes the handshake, opens no stream and returns how long the
/// loader kept it open (at most 30 s).
pub fn idle_tls_connection_lifetime(port: u16, auth: &ClientAuth) -> Duration {
    let ClientAuth::Tls { server_ca_pem, client } = auth else {
        panic!("a TLS client is needed");
    };
    let connector = tls_connector(server_ca_pem, client.as_ref()).expect("TLS client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        use tokio::io::AsyncReadExt;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let started = std::time::Instant::now();
        let mut buf = [0; 1024];
        let read_until_closed = async {
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), read_until_closed).await;
        started.elapsed()
    })
}

/// A delta ADS stream: requests in, responses out.
pub struct DeltaStream<'a> {
    client: &'a AdsClient,
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream<'_> {
    pub fn send(&self, request: DeltaDiscoveryRequest) {
        let requests = self.requests.clone();
        self.client.block_on(async move {
            let _ = requests.send(request).await;
        });
    }

    /// The next response; Err with the status that ended the stream (OK when it just ended), or
    /// DEADLINE_EXCEEDED after [`ANSWER_TIMEOUT`].
    pub fn receive(&mut self) -> Result<DeltaDiscoveryResponse, Status> {
        let responses = &mut self.responses;
        self.client.block_on(async move {
            match tokio::time::timeout(ANSWER_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(response))) => Ok(response),
                Ok(Ok(None)) => Err(Status::ok("stream ended")),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded("no answer in time")),
            }
        })
    }

    /// The next response of `type_url`, acknowledging (ACK) every response on the way.
    pub fn next_of(&mut self, type_url: &str) -> Result<DeltaDiscoveryResponse, Status> {
        loop {
            let response = self.receive()?;
            self.send(DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            });
            if response.type_url == type_url {
                return Ok(response);
            }
        }
    }
}

/// A delta request for `type_url` subscribing to `names`, from node `node_id`.
pub fn delta_request(type_url: &str, names: &[&str], node_id: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node { id: node_id.into(), cluster: "backendtls".into(), ..Default::default() }),
        type_url: type_url.into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// Connects, asks for every cluster as node `node_id` and returns the first answer's clusters; Err
/// says what failed (connecting, the handshake, or the stream's status).
pub fn fetch_clusters(port: u16, auth: &ClientAuth, node_id: &str) -> Result<Vec<Cluster>, String> {
    let client = AdsClient::connect(port, auth)?;
    let mut stream = client
        .delta(delta_request(&Cluster::type_url(), &[], node_id))
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let response = stream.receive().map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response
        .resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .map(|any| Cluster::decode(&any.value[..]).expect("a Cluster"))
        .collect())
}

/// The loader process's resident memory and its peak, in MB, from /proc.
pub fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
