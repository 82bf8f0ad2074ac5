//! What the echo backend saw, as the JSON body it answers with (and the record it keeps).
//!
//! Field names follow the upstream conformance `echo-basic` server, so an expectation written
//! from the upstream assertions reads the same fields: `path` is the raw request target with its
//! query, `proto` is `HTTP/1.1` or `HTTP/2.0` (Go's spelling), `headers` maps lower-cased names to
//! every value in arrival order (the Host header is not among them: it is `host`), and `tls` is
//! present only when the connection was TLS. Our additions: `httpPort` is the port the request
//! arrived on (upstream: the configured HTTP port), `tls.alpnOffered` lists what the client offered
//! and `tls.clientCertificate` is the presented leaf's subject and SANs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `proto` of an HTTP/1.1 request.
pub const HTTP_1_1: &str = "HTTP/1.1";
/// `proto` of an HTTP/2 request (Go's `Request.Proto`, which the upstream echo reports).
pub const HTTP_2: &str = "HTTP/2.0";

/// One request as the echo saw it: the body of its 200 answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EchoReport {
    /// The raw request target, query included (`/v2/example?x=1`).
    pub path: String,
    /// The Host header (HTTP/1.1) or `:authority` (HTTP/2), port included when sent.
    pub host: String,
    pub method: String,
    /// [`HTTP_1_1`] or [`HTTP_2`].
    pub proto: String,
    /// Lower-cased names; several values of one name kept apart, in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The namespace this backend was configured with.
    pub namespace: String,
    /// The pod name this backend was configured with (tests match on its prefix, as upstream).
    pub pod: String,
    /// The local port the request arrived on.
    pub http_port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
}

impl EchoReport {
    /// Every value of header `name` (any case), joined with `,` as the upstream harness compares
    /// them; `None` when the header was absent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).map(|values| values.join(","))
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The SNI the client sent, `None` without TLS or without SNI.
    pub fn sni(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.server_name.as_str()).filter(|sni| !sni.is_empty())
    }
}

/// The TLS side of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsReport {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The SNI the client sent ("" without SNI).
    pub server_name: String,
    /// The ALPN protocol agreed on; absent when none was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negotiated_protocol: String,
    pub cipher_suite: String,
    /// Each certificate the client presented, leaf first, as PEM (`-----BEGIN CERTIFICATE-----`,
    /// 64-column base64, `\n` line ends).
    #[serde(default)]
    pub peer_certificates: Vec<String>,
    /// The ALPN protocols the client offered, in its order.
    #[serde(default)]
    pub alpn_offered: Vec<String>,
    /// The presented leaf certificate's names; absent when the client presented none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificateNames>,
}

/// A certificate's subject and subject alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateNames {
    /// RFC 4514 form, e.g. `CN=backendtls e2e gateway client`.
    pub subject: String,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub uris: Vec<String>,
}
