//! The gRPC side of the echo: the conformance suite's unary `GrpcEcho` service, answering with
//! the same facts as the HTTP echo ([`EchoReport`]) in its `Assertions` message, plus a small
//! client for tests.
//!
//! The messages are written by hand with prost's derive (no protoc), wire-compatible with the
//! upstream `gateway_api_conformance.echo_basic.grpcecho` package: `Echo` and `EchoTwo` answer,
//! `EchoThree` (and any other method) is `UNIMPLEMENTED`.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::Request;

use super::report::EchoReport;
use super::{BoxError, EchoBody};

pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
/// `/<service>/Echo`, the fully qualified method (also the HTTP/2 `:path`).
pub const ECHO: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";
pub const ECHO_TWO: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo";
/// Intentionally unimplemented, as upstream.
pub const ECHO_THREE: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoThree";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(message, optional, tag = "1")]
    pub assertions: Option<Assertions>,
    #[prost(message, optional, tag = "2")]
    pub request: Option<EchoRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Assertions {
    /// e.g. [`ECHO`].
    #[prost(string, tag = "1")]
    pub fully_qualified_method: String,
    /// Request metadata, one entry per value, lower-cased names (pseudo-headers excluded).
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<Header>,
    #[prost(string, tag = "3")]
    pub authority: String,
    #[prost(message, optional, tag = "4")]
    pub context: Option<Context>,
    #[prost(message, optional, tag = "5")]
    pub tls_assertions: Option<TlsAssertions>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Context {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub ingress: String,
    #[prost(string, tag = "3")]
    pub service_name: String,
    #[prost(string, tag = "4")]
    pub pod: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TlsAssertions {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub negotiated_protocol: String,
    #[prost(string, tag = "3")]
    pub server_name: String,
    #[prost(string, tag = "4")]
    pub cipher_suite: String,
    #[prost(string, repeated, tag = "5")]
    pub peer_certificates: Vec<String>,
}

impl Assertions {
    /// Every value of metadata `name` (any case), joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

pub(crate) fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Answers one gRPC request; `report` is what the HTTP echo would have answered.
pub(crate) async fn serve(
    request: Request<Incoming>,
    report: EchoReport,
) -> hyper::Response<EchoBody> {
    let path = request.uri().path().to_string();
    if path != ECHO && path != ECHO_TWO {
        return tonic::Status::unimplemented(format!("{path} is not implemented"))
            .into_http::<EchoBody>();
    }
    let service = Echo { assertions: assertions(&path, report) };
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
    grpc.unary(service, request).await.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

fn assertions(path: &str, report: EchoReport) -> Assertions {
    Assertions {
        fully_qualified_method: path.to_string(),
        headers: report
            .headers
            .iter()
            .flat_map(|(key, values)| {
                values.iter().map(|value| Header { key: key.clone(), value: value.clone() })
            })
            .collect(),
        authority: report.host,
        context: Some(Context {
            namespace: report.namespace,
            pod: report.pod,
            ..Default::default()
        }),
        tls_assertions: report.tls.map(|tls| TlsAssertions {
            version: tls.version,
            negotiated_protocol: tls.negotiated_protocol,
            server_name: tls.server_name,
            cipher_suite: tls.cipher_suite,
            peer_certificates: tls.peer_certificates,
        }),
    }
}

/// The unary handler: the answer is computed before the call (it depends only on the request's
/// metadata and connection, which tonic hands to the service apart from the decoded message).
#[derive(Clone)]
struct Echo {
    assertions: Assertions,
}

impl tonic::server::UnaryService<EchoRequest> for Echo {
    type Response = EchoResponse;
    type Future = std::future::Ready<Result<tonic::Response<EchoResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(EchoResponse {
            assertions: Some(self.assertions.clone()),
            request: Some(request.into_inner()),
        })))
    }
}

/// Calls `method` (e.g. [`ECHO`]) over plaintext HTTP/2 (h2c) on `address` with `:authority`
/// `authority` and the given metadata; 10 s budget for connecting and the call. Blocking: it runs
/// its own small runtime.
pub fn call(
    address: SocketAddr,
    authority: &str,
    method: &'static str,
    metadata: &[(&str, &str)],
) -> Result<EchoResponse, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("gRPC client runtime");
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            call_async(address, authority, method, metadata),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 10 s")))
    })
}

async fn call_async(
    address: SocketAddr,
    authority: &str,
    method: &'static str,
    metadata: &[(&str, &str)],
) -> Result<EchoResponse, tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(e.to_string());
    let origin: hyper::http::Uri =
        format!("http://{authority}").parse().map_err(|e| unavailable(&e))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| unavailable(&e))?
        .origin(origin)
        .connect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| unavailable(&e))?;
    let mut request = tonic::Request::new(EchoRequest {});
    for (name, value) in metadata {
        let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let value = value.parse().map_err(|_| tonic::Status::invalid_argument("metadata value"))?;
        request.metadata_mut().append(name, value);
    }
    let path = hyper::http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    client.unary(request, path, codec).await.map(tonic::Response::into_inner)
}
