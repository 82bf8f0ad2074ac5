//! Clusters Envoy refused, failed closed until their input changes.
//!
//! When Envoy rejects a cluster (a NACK), it keeps the previous version, which can be a plaintext
//! cluster for a Service a policy was just added to. The loader validates what it can before
//! sending, but Envoy may refuse for reasons only Envoy knows (an extension it lacks, a module it
//! cannot load). So a rejected cluster, or the clusters using a rejected secret or endpoints, are
//! replaced by ones that fail closed (no hosts, a 503 with the reason), which Envoy accepts, until
//! the cluster's input changes and the loader can try again.

use crate::ir::{BackendTls, Ir, RouteAction, Trust};
use crate::xds::server::Rejection;
use crate::xds::snapshot::{short_name, Snapshot};
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Name;
use std::collections::{BTreeMap, VecDeque};

/// Envoy's messages can be long; status and bodies keep this much of one.
const MAX_MESSAGE_CHARS: usize = 1000;
/// Rejections kept for `/status`.
const MAX_REPORTS: usize = 50;

/// A rejection as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RejectionReport {
    pub node: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub resources: Vec<String>,
    pub message: String,
    /// The clusters failed closed because of it, with the policies that govern them.
    pub failed_closed: Vec<String>,
    pub policies: Vec<String>,
}

struct Quarantined {
    /// Digest of the cluster's IR when it was rejected: a different one means its input changed.
    digest: [u8; 16],
    reason: String,
}

#[derive(Default)]
pub struct Quarantine {
    /// Rejections not yet matched to a build.
    incoming: Vec<Rejection>,
    clusters: BTreeMap<String, Quarantined>,
    reports: VecDeque<RejectionReport>,
}

impl Quarantine {
    pub fn add(&mut self, rejection: Rejection) {
        self.incoming.push(rejection);
    }

    /// Clusters currently failed closed.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Recent rejections, newest last.
    pub fn reports(&self) -> Vec<RejectionReport> {
        self.reports.iter().cloned().collect()
    }

    /// Fails closed, in a freshly resolved `ir`, every cluster Envoy rejected in the form the
    /// `published` snapshot holds. A cluster whose IR changed since is released (tried again).
    /// Nothing refused and nothing failed closed: [`Self::apply`] would change nothing.
    pub fn is_idle(&self) -> bool {
        self.incoming.is_empty() && self.clusters.is_empty()
    }

    pub fn apply(&mut self, ir: &mut Ir, published: &Snapshot) {
        for rejection in std::mem::take(&mut self.incoming) {
            self.admit(rejection, ir, published);
        }
        self.clusters.retain(|name, q| {
            ir.clusters.get(name).is_some_and(|c| crate::digest::digest(c) == q.digest)
        });
        if self.clusters.is_empty() {
            return;
        }
        for (name, quarantined) in &self.clusters {
            let cluster = ir.clusters.get_mut(name).expect("retained above");
            if let Some(tls) = &mut cluster.tls {
                tls.trust = Trust::Unusable { reason: quarantined.reason.clone() };
            }
        }
        // A route whose every backend is failed closed answers 503 with the reason.
        for route in
            ir.listeners.iter_mut().flat_map(|l| &mut l.virtual_hosts).flat_map(|v| &mut v.routes)
        {
            let RouteAction::Forward(backends) = &route.action else { continue };
            let reasons: Option<Vec<&str>> = backends
                .iter()
                .map(|b| self.clusters.get(&b.cluster).map(|q| q.reason.as_str()))
                .collect();
            if let Some(reasons) = reasons {
                let mut reasons = reasons;
                reasons.dedup();
                route.action = RouteAction::Respond {
                    status: 503,
                    body: format!("backendtls: {}\n", reasons.join("; ")),
                };
            }
        }
    }

    /// Matches one rejection to the clusters it affects, if what Envoy rejected is still what is
    /// published.
    fn admit(&mut self, rejection: Rejection, ir: &Ir, published: &Snapshot) {
        let current = published.of_type(&rejection.type_url);
        let still_published = |name: &str, version: &str| {
            current.and_then(|r| r.get(name)).is_some_and(|r| r.version == version)
        };
        let message: String = rejection.message.chars().take(MAX_MESSAGE_CHARS).collect();
        let mut failed_closed = Vec::new();
        let mut policies = Vec::new();
        for (name, version) in &rejection.resources {
            if !still_published(name, version) {
                continue; // already replaced by a newer version
            }
            for cluster in affected_clusters(&rejection.type_url, name, ir) {
                let Some(tls) = &ir.clusters[&cluster].tls else { continue };
                let reason = format!(
                    "BackendTLSPolicy {} cannot be met: Envoy rejected the configuration of cluster {cluster} ({} {name}): {message}",
                    tls.policy,
                    short_name(&rejection.type_url)
                );
                policies.push(tls.policy.to_string());
                let digest = crate::digest::digest(&ir.clusters[&cluster]);
                self.clusters.insert(cluster.clone(), Quarantined { digest, reason });
                failed_closed.push(cluster);
            }
        }
        tracing::warn!(
            node = %rejection.node, r#type = short_name(&rejection.type_url), ?failed_closed, %message,
            "Envoy rejected resources; the clusters a policy governs among them fail closed until their input changes"
        );
        if self.reports.len() == MAX_REPORTS {
            self.reports.pop_front();
        }
        self.reports.push_back(RejectionReport {
            node: rejection.node,
            kind: short_name(&rejection.type_url),
            resources: rejection.resources.into_iter().map(|(name, _)| name).collect(),
            message,
            failed_closed,
            policies,
        });
    }
}

/// The clusters a rejected resource belongs to: itself or its endpoints, or the clusters that use
/// a rejected secret. Listeners and routes carry no TLS settings, so none.
fn affected_clusters(type_url: &str, name: &str, ir: &Ir) -> Vec<String> {
    let is = |message_name: String| type_url.ends_with(&message_name);
    if is(Cluster::full_name()) || is(ClusterLoadAssignment::full_name()) {
        return ir.clusters.contains_key(name).then(|| name.to_string()).into_iter().collect();
    }
    if is(Secret::full_name()) {
        let uses = |tls: &BackendTls| {
            matches!(&tls.trust, Trust::Ca { secret } if secret == name)
                || tls.client_certificate.as_deref() == Some(name)
        };
        return ir
            .clusters
            .values()
            .filter(|c| c.tls.as_ref().is_some_and(uses))
            .map(|c| c.name.clone())
            .collect();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{
        Cluster, Endpoints, Listener, PathMatch, Route, TlsParams, VirtualHost, WeightedCluster,
    };
    use crate::objects::ObjectKey;
    use crate::xds::snapshot::VersionedResource;
    use envoy_types::pb::google::protobuf::Any;
    use std::sync::Arc;

    fn ir(hostname: &str) -> Ir {
        let mut ir = Ir::default();
        let tls = BackendTls {
            policy: ObjectKey::new("apps", "p"),
            hostname: hostname.into(),
            subject_alt_names: Vec::new(),
            params: TlsParams::default(),
            trust: Trust::Ca { secret: "backendtls_ca_1".into() },
            client_certificate: None,
        };
        for (name, tls) in [("kube_apps_a_443", Some(tls)), ("kube_apps_b_80", None)] {
            let cluster = Cluster {
                name: name.into(),
                service: ObjectKey::new("apps", name),
                port: 443,
                endpoints: Endpoints::Static(vec!["127.0.0.1:1".parse().unwrap()]),
                tls,
                protocol: Default::default(),
            };
            ir.clusters.insert(name.into(), cluster);
        }
        let route = |cluster: &str| Route {
            name: cluster.into(),
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
            filters: Default::default(),
            action: RouteAction::Forward(vec![WeightedCluster {
                cluster: cluster.into(),
                weight: 1,
            }]),
        };
        ir.listeners.push(Listener {
            name: "l".into(),
            port: 80,
            virtual_hosts: vec![VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: vec![route("kube_apps_a_443"), route("kube_apps_b_80")],
            }],
            tls: Vec::new(),
            tcp_proxies: Vec::new(),
        });
        ir
    }

    fn published(type_url: &str, names: &[(&str, &str)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let resources = names
            .iter()
            .map(|(name, version)| {
                let resource = VersionedResource {
                    version: version.to_string(),
                    resource: Any::default().into(),
                };
                (name.to_string(), Arc::new(resource))
            })
            .collect();
        snapshot.resources.insert(type_url.into(), resources);
        snapshot
    }

    fn rejection(type_url: &str, name: &str, version: &str) -> Rejection {
        Rejection {
            node: "envoy-1".into(),
            type_url: type_url.into(),
            resources: vec![(name.into(), version.into())],
            message: format!("Error adding/updating cluster(s) {name}: no such module"),
        }
    }

    #[test]
    fn a_rejected_cluster_fails_closed_until_its_input_changes() {
        let cds = format!("type.googleapis.com/{}", super::Cluster::full_name());
        let snapshot = published(&cds, &[("kube_apps_a_443", "v1"), ("kube_apps_b_80", "v1")]);
        let mut quarantine = Quarantine::default();
        // Rejected, but a newer version is already published: nothing to do.
        quarantine.add(rejection(&cds, "kube_apps_a_443", "v0"));
        let mut built = ir("a.example.com");
        quarantine.apply(&mut built, &snapshot);
        assert!(quarantine.is_empty());
        assert_eq!(built, ir("a.example.com"));

        quarantine.add(rejection(&cds, "kube_apps_a_443", "v1"));
        // A cluster without a policy is reported, not changed: Envoy keeps what it had.
        quarantine.add(rejection(&cds, "kube_apps_b_80", "v1"));
        let mut built = ir("a.example.com");
        quarantine.apply(&mut built, &snapshot);
        assert_eq!(quarantine.len(), 1);
        let tls = built.clusters["kube_apps_a_443"].tls.as_ref().unwrap();
        assert!(
            matches!(&tls.trust, Trust::Unusable { reason } if reason.contains("no such module"))
        );
        let routes = &built.listeners[0].virtual_hosts[0].routes;
        assert!(
            matches!(&routes[0].action, RouteAction::Respond { status: 503, body } if body.contains("Envoy rejected"))
        );
        assert!(matches!(&routes[1].action, RouteAction::Forward(_)));
        assert_eq!(quarantine.reports().len(), 3);
        assert_eq!(quarantine.reports()[1].policies, ["apps/p"]);

        // The same input again: still closed. A changed policy: released, tried again.
        let mut again = ir("a.example.com");
        quarantine.apply(&mut again, &snapshot);
        assert_eq!(again, built);
        let mut changed = ir("b.example.com");
        quarantine.apply(&mut changed, &snapshot);
        assert!(quarantine.is_empty());
        assert_eq!(changed, ir("b.example.com"));
    }

    #[test]
    fn a_rejected_secret_fails_closed_the_clusters_using_it() {
        let sds = format!("type.googleapis.com/{}", Secret::full_name());
        let snapshot = published(&sds, &[("backendtls_ca_1", "v1")]);
        let mut quarantine = Quarantine::default();
        quarantine.add(rejection(&sds, "backendtls_ca_1", "v1"));
        let mut built = ir("a.example.com");
        quarantine.apply(&mut built, &snapshot);
        assert_eq!(quarantine.reports()[0].failed_closed, ["kube_apps_a_443"]);
    }
}
