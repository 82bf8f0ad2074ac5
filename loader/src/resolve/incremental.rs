//! Re-resolving only what a change touches.
//!
//! `serve` keeps an [`Incremental`] between builds. It holds the last [`Resolution`] and an index
//! from the objects that most changes are about to what depends on them:
//!
//! - an EndpointSlice → the clusters of its Service (old and new `kubernetes.io/service-name`):
//!   only their endpoints are computed again;
//! - a ConfigMap or Secret that BackendTLSPolicies name in `caCertificateRefs` → those policies,
//!   resolved again; the clusters each governs get its new trust bundle, its report its new
//!   conditions.
//!
//! Endpoint churn and CA rotation are most of what changes in a running cluster, and neither
//! changes a route, a listener or which policy governs what. Any other change, or one of these
//! whose consequences reach further (a policy that lost a conflict, a CA bundle that becomes
//! unusable or usable, which turns routes into 503 answers or back), is resolved in full.
//! `tests/incremental.rs` checks on random edit sequences that every build equals a full one.

use super::*;
use crate::store::Changes;
use std::collections::HashMap;

/// What a build did, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Everything resolved, and why.
    Full(&'static str),
    /// Only what the change touched: `policies` resolved again, `clusters` updated.
    Partial { policies: usize, clusters: usize },
}

/// The last resolution and what is needed to update it; see the module documentation.
pub struct Incremental {
    options: Options,
    kept: Option<Kept>,
}

struct Kept {
    resolution: Resolution,
    /// Cluster names by the Service they send to.
    clusters_by_service: HashMap<ObjectKey, Vec<String>>,
    /// Cluster names by the policy that governs them.
    clusters_by_policy: HashMap<ObjectKey, Vec<String>>,
    /// Policies by the ConfigMaps and Secrets their `caCertificateRefs` name (found or not).
    policies_by_ca_ref: HashMap<(&'static str, ObjectKey), Vec<ObjectKey>>,
    /// Each policy's trust, and whether it lost a conflict.
    policies: HashMap<ObjectKey, (Trust, bool)>,
    /// How many clusters use each CA bundle of `resolution.ir.ca_bundles`.
    bundle_users: HashMap<String, usize>,
}

/// Why a change cannot be applied on its own: resolve everything.
struct Full(&'static str);

impl Incremental {
    pub fn new(options: Options) -> Self {
        Incremental { options, kept: None }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The resolution made by the last [`Self::update`].
    ///
    /// # Panics
    /// Before the first update.
    pub fn resolution(&self) -> &Resolution {
        &self.kept.as_ref().expect("updated before").resolution
    }

    /// Brings the resolution up to date with `store` (see [`Self::resolution`]), from the last
    /// one where the changes recorded since ([`Store::take_changes`]) allow; says how.
    pub fn update(&mut self, store: &mut Store) -> Build {
        let changes = store.take_changes();
        let outcome = match (self.kept.as_mut(), &changes) {
            (Some(kept), Some(changes)) => kept.apply(store, &self.options, changes),
            (None, _) => Err(Full("first build")),
            (_, None) => Err(Full("changes were not recorded")),
        };
        match outcome {
            Ok(build) => build,
            Err(Full(why)) => {
                // The old state goes first: a full build must not hold two resolutions at once.
                self.kept = None;
                self.kept = Some(Kept::resolve(store, &self.options));
                Build::Full(why)
            }
        }
    }
}

impl Kept {
    fn resolve(store: &Store, options: &Options) -> Kept {
        let mut policies = HashMap::new();
        let resolution = resolve_observed(store, options, |index| {
            policies = index
                .outcomes()
                .map(|(key, trust, conflicted)| (key.clone(), (trust.clone(), conflicted)))
                .collect();
        });
        let mut kept = Kept {
            clusters_by_service: HashMap::new(),
            clusters_by_policy: HashMap::new(),
            policies_by_ca_ref: HashMap::new(),
            policies,
            bundle_users: HashMap::new(),
            resolution,
        };
        for cluster in kept.resolution.ir.clusters.values() {
            let name = || cluster.name.clone();
            if cluster.name != INVALID_BACKEND_CLUSTER {
                kept.clusters_by_service.entry(cluster.service.clone()).or_default().push(name());
            }
            if let Some(tls) = &cluster.tls {
                kept.clusters_by_policy.entry(tls.policy.clone()).or_default().push(name());
                if let Trust::Ca { secret } = &tls.trust {
                    *kept.bundle_users.entry(secret.clone()).or_default() += 1;
                }
            }
        }
        for (key, policy) in &store.policies {
            for r in &policy.spec.validation.ca_certificate_refs {
                let kind = match (r.group.as_str(), r.kind.as_str()) {
                    ("", "ConfigMap") => "ConfigMap",
                    ("", "Secret") => "Secret",
                    _ => continue, // never looked up
                };
                let named = (kind, ObjectKey::new(&key.namespace, &r.name));
                kept.policies_by_ca_ref.entry(named).or_default().push(key.clone());
            }
        }
        kept
    }

    /// Applies `changes` in place, or says why they need a full build. Nothing is modified
    /// before every change was found to be one this can apply.
    fn apply(
        &mut self,
        store: &Store,
        options: &Options,
        changes: &Changes,
    ) -> Result<Build, Full> {
        // Secrets the Gateways name (listener certificates, backend client certificates).
        let gateway_secrets: Vec<ObjectKey> = store
            .gateways
            .iter()
            .flat_map(|(key, gateway)| {
                let spec = &gateway.spec;
                let client = spec.tls.iter().flat_map(|t| &t.backend);
                let client = client.flat_map(|b| &b.client_certificate_ref);
                let listeners = spec.listeners.iter().flat_map(|l| &l.tls);
                let listeners = listeners.flat_map(|t| &t.certificate_refs);
                client.chain(listeners).map(|r| {
                    ObjectKey::new(r.namespace.as_deref().unwrap_or(&key.namespace), &r.name)
                })
            })
            .collect();
        let mut dirty_policies: Vec<&ObjectKey> = Vec::new();
        for (kind, key) in &changes.objects {
            match *kind {
                "EndpointSlice" => {} // through `changes.slice_services`
                "Secret" if gateway_secrets.contains(key) => {
                    return Err(Full("a Secret a Gateway uses changed"))
                }
                "ConfigMap" | "Secret" => {
                    let named = self.policies_by_ca_ref.get(&(*kind, key.clone()));
                    dirty_policies.extend(named.into_iter().flatten());
                }
                _ => return Err(Full("an object other than a slice, ConfigMap or Secret changed")),
            }
        }
        dirty_policies.sort();
        dirty_policies.dedup();

        // Policies first, checked before anything is changed.
        let mut bundles = BTreeMap::new();
        let mut resolved = Vec::with_capacity(dirty_policies.len());
        for key in dirty_policies {
            let Some((old_trust, conflicted)) = self.policies.get(key) else {
                return Err(Full("a policy is not known"));
            };
            if *conflicted {
                return Err(Full("a policy that lost a conflict changed"));
            }
            let Some(policy) = policy::resolve_again(store, options, key, &mut bundles) else {
                return Err(Full("a policy is gone"));
            };
            // Usable before and after: routes and precedence stay as they are.
            if !matches!((old_trust, &policy.trust), (Trust::Ca { .. }, Trust::Ca { .. })) {
                return Err(Full("a policy's CA certificates became usable or unusable"));
            }
            resolved.push(policy);
        }
        let mut endpoints = Vec::new();
        for service_key in &changes.slice_services {
            let Some(names) = self.clusters_by_service.get(service_key) else { continue };
            let Some(service) = store.services.get(service_key) else {
                return Err(Full("a cluster's Service is gone"));
            };
            if service.spec.kind.as_deref() == Some("ExternalName") {
                continue; // DNS, not slices
            }
            for name in names {
                let number = self.resolution.ir.clusters[name].port;
                let Some(port) = service.spec.ports.iter().find(|p| p.port == number) else {
                    return Err(Full("a cluster's Service port is gone"));
                };
                endpoints.push((name, slice_endpoints(store, service_key, port)));
            }
        }

        // Then apply.
        let ir = &mut self.resolution.ir;
        let mut clusters = endpoints.len();
        for (name, addresses) in endpoints {
            ir.clusters.get_mut(name).expect("indexed").endpoints = Endpoints::Static(addresses);
        }
        let policies = resolved.len();
        for policy in resolved {
            let reports = &mut self.resolution.policies;
            let at = reports
                .binary_search_by(|r| {
                    (r.namespace.as_str(), r.name.as_str())
                        .cmp(&(policy.key.namespace.as_str(), policy.key.name.as_str()))
                })
                .expect("every policy has a report");
            reports[at].conditions = policy.conditions();
            let Trust::Ca { secret } = &policy.trust else { unreachable!("checked above") };
            for name in self.clusters_by_policy.get(&policy.key).into_iter().flatten() {
                let tls = ir.clusters.get_mut(name).and_then(|c| c.tls.as_mut()).expect("indexed");
                if let Trust::Ca { secret: old } = &tls.trust {
                    let users = self.bundle_users.get_mut(old).expect("counted");
                    *users -= 1;
                    if *users == 0 {
                        self.bundle_users.remove(old);
                        ir.ca_bundles.remove(old);
                    }
                }
                *self.bundle_users.entry(secret.clone()).or_default() += 1;
                ir.ca_bundles
                    .entry(secret.clone())
                    .or_insert_with(|| CaBundle { pem: bundles[secret].to_string() });
                tls.trust = policy.trust.clone();
                clusters += 1;
            }
            self.policies.insert(policy.key.clone(), (policy.trust, false));
        }
        Ok(Build::Partial { policies, clusters })
    }
}
