//! Who may ask for what over ADS.
//!
//! - **Identity**: over mutual TLS, an Envoy's node must be named by its client certificate: its
//!   `node.id` or `node.cluster` equals one of the certificate's DNS or URI subject alternative
//!   names, or the last path segment of a SPIFFE ID among them (`spiffe://<trust domain>/.../<id>`).
//!   `backendtls-loader certs` issues exactly such certificates. Plaintext (loopback-only)
//!   connections carry no identity and are not checked.
//! - **Secrets**: a stream is sent an SDS secret only if a cluster or listener the loader sent on
//!   that stream (or that the Envoy proved to hold, by naming its current version when it
//!   reconnected) references it. Clusters carry CA bundles and the Gateway's client certificate
//!   and key by SDS name, HTTPS listeners their certificates and keys: only the Envoys serving a
//!   Gateway's listener get its certificate's key. A client that skips CDS and LDS and asks for a
//!   secret by name gets nothing.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, DownstreamTlsContext, UpstreamTlsContext,
};
use prost::{Message, Name};

/// The names in a client certificate that can identify an Envoy.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerIdentity {
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

impl PeerIdentity {
    /// The subject alternative names of a DER certificate (the handshake has verified it).
    pub fn from_certificate(der: &[u8]) -> PeerIdentity {
        use x509_parser::extensions::GeneralName;
        let mut identity = PeerIdentity::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return identity;
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push(dns.to_string()),
                    GeneralName::URI(uri) => identity.uris.push(uri.to_string()),
                    _ => {}
                }
            }
        }
        identity
    }

    /// Whether this certificate names `candidate` (a node id or cluster).
    fn names(&self, candidate: &str) -> bool {
        !candidate.is_empty()
            && (self.dns_names.iter().any(|dns| dns.eq_ignore_ascii_case(candidate))
                || self.uris.iter().any(|uri| {
                    uri == candidate || spiffe_last_segment(uri).is_some_and(|s| s == candidate)
                }))
    }

    /// `DNS:a, URI:b` for logs and errors.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .dns_names
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(self.uris.iter().map(|u| format!("URI:{u}")))
            .collect();
        if names.is_empty() {
            "no DNS or URI names".into()
        } else {
            names.join(", ")
        }
    }
}

fn spiffe_last_segment(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    path.rsplit('/').next().filter(|s| !s.is_empty())
}

/// Why a node may not use this stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeRefused {
    #[error("the first request on a stream must carry the node (its id)")]
    NoNode,
    #[error(
        "client certificate ({names}) names neither node id {id:?} nor node cluster {cluster:?}"
    )]
    NotNamed { names: String, id: String, cluster: String },
    #[error("node id changed on the stream from {from:?} to {to:?}")]
    Changed { from: String, to: String },
}

/// Checks the node a request carries against the connection's certificate. `known` is the node
/// id already accepted on this stream, if any.
pub fn authorize_node(
    identity: Option<&PeerIdentity>,
    known: Option<&str>,
    node: Option<&Node>,
) -> Result<(), NodeRefused> {
    match (node, known) {
        (Some(node), Some(known)) if !node.id.is_empty() && node.id != known => {
            Err(NodeRefused::Changed { from: known.into(), to: node.id.clone() })
        }
        (_, Some(_)) => Ok(()),
        (None, None) => match identity {
            Some(_) => Err(NodeRefused::NoNode),
            None => Ok(()),
        },
        (Some(node), None) => match identity {
            None => Ok(()),
            Some(identity) if identity.names(&node.id) || identity.names(&node.cluster) => Ok(()),
            Some(identity) => Err(NodeRefused::NotNamed {
                names: identity.describe(),
                id: truncated(&node.id),
                cluster: truncated(&node.cluster),
            }),
        },
    }
}

/// Client-supplied text in messages, cut to a readable length.
pub fn truncated(text: &str) -> String {
    const MAX: usize = 128;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// What references secrets: clusters (CA bundles, client certificates) and listeners (their
/// certificates). Which secrets a resource references is decoded once per resource version
/// ([`super::served::Entry::secrets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Referrer {
    Cluster,
    Listener,
}

/// SDS names in a listener's TLS filter chains: its certificates.
pub(crate) fn secrets_of_encoded_listener(listener: &[u8]) -> Vec<String> {
    Listener::decode(listener).map(|l| listener_secrets(&l)).unwrap_or_default()
}

/// SDS names in a listener's downstream TLS contexts.
pub fn listener_secrets(listener: &Listener) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let mut names = Vec::new();
    let chains = listener.filter_chains.iter().chain(listener.default_filter_chain.as_ref());
    for socket in chains.filter_map(|c| c.transport_socket.as_ref()) {
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else { continue };
        if any.type_url != DownstreamTlsContext::type_url() {
            continue;
        }
        let Ok(tls) = DownstreamTlsContext::decode(&any.value[..]) else { continue };
        let Some(common) = tls.common_tls_context else { continue };
        names.extend(common.tls_certificate_sds_secret_configs.into_iter().map(|s| s.name));
    }
    names.sort();
    names.dedup();
    names
}

/// The two fields of `envoy.config.cluster.v3.Cluster` that hold transport sockets (same tags):
/// decoding only these skips the rest of the cluster, which at 10,000 backends is most of the cost.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterTransportSockets {
    #[prost(message, optional, tag = "24")]
    transport_socket: Option<TransportSocket>,
    #[prost(message, repeated, tag = "43")]
    transport_socket_matches: Vec<TransportSocketMatch>,
}

/// SDS names in an encoded cluster's TLS transport sockets.
pub(crate) fn secrets_of_encoded(cluster: &[u8]) -> Vec<String> {
    ClusterTransportSockets::decode(cluster)
        .map(|c| secrets_in(c.transport_socket.as_ref(), &c.transport_socket_matches))
        .unwrap_or_default()
}

/// SDS names in a cluster's TLS transport sockets: its client certificate and its CA bundle.
pub fn secrets_of(cluster: &Cluster) -> Vec<String> {
    secrets_in(cluster.transport_socket.as_ref(), &cluster.transport_socket_matches)
}

fn secrets_in(socket: Option<&TransportSocket>, matches: &[TransportSocketMatch]) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let sockets =
        socket.into_iter().chain(matches.iter().filter_map(|m| m.transport_socket.as_ref()));
    let mut names = Vec::new();
    for socket in sockets {
        let Some(ConfigType::TypedConfig(any)) = &socket.config_type else { continue };
        if any.type_url != UpstreamTlsContext::type_url() {
            continue;
        }
        let Ok(tls) = UpstreamTlsContext::decode(&any.value[..]) else { continue };
        let Some(common) = tls.common_tls_context else { continue };
        names.extend(common.tls_certificate_sds_secret_configs.into_iter().map(|s| s.name));
        match common.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => names.push(s.name),
            Some(ValidationContextType::CombinedValidationContext(c)) => {
                names.extend(c.validation_context_sds_secret_config.map(|s| s.name))
            }
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dns: &[&str], uris: &[&str]) -> PeerIdentity {
        PeerIdentity {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn node(id: &str, cluster: &str) -> Node {
        Node { id: id.into(), cluster: cluster.into(), ..Default::default() }
    }

    #[test]
    fn node_must_be_named_by_the_certificate() {
        let cert = identity(&["edge-1"], &["spiffe://backendtls.local/envoy/edge-1"]);
        let ok = |id, cluster| authorize_node(Some(&cert), None, Some(&node(id, cluster)));
        assert_eq!(ok("edge-1", "x"), Ok(()));
        assert_eq!(ok("x", "EDGE-1"), Ok(()), "DNS names compare case-insensitively");
        assert!(matches!(ok("edge-2", "backendtls"), Err(NodeRefused::NotNamed { .. })));
        assert!(matches!(ok("", ""), Err(NodeRefused::NotNamed { .. })));

        let spiffe = identity(&[], &["spiffe://td/ns/default/sa/gateway"]);
        assert_eq!(authorize_node(Some(&spiffe), None, Some(&node("gateway", ""))), Ok(()));
        assert_eq!(
            authorize_node(
                Some(&spiffe),
                None,
                Some(&node("spiffe://td/ns/default/sa/gateway", ""))
            ),
            Ok(())
        );
        assert!(authorize_node(Some(&spiffe), None, Some(&node("sa", ""))).is_err());
        assert!(authorize_node(
            Some(&identity(&[], &["https://x/gateway"])),
            None,
            Some(&node("gateway", ""))
        )
        .is_err());

        assert_eq!(authorize_node(Some(&cert), None, None), Err(NodeRefused::NoNode));
        assert_eq!(authorize_node(None, None, None), Ok(()), "plaintext: nothing to check");
        assert_eq!(authorize_node(Some(&cert), Some("edge-1"), None), Ok(()));
        assert!(matches!(
            authorize_node(Some(&cert), Some("edge-1"), Some(&node("other", ""))),
            Err(NodeRefused::Changed { .. })
        ));
    }

    #[test]
    fn truncates_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = truncated(&long);
        assert!(cut.ends_with("...") && cut.len() <= 131);
    }
}
