//! The objects the loader knows, by kind and `namespace/name`.

use crate::objects::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct Store {
    pub gateways: BTreeMap<ObjectKey, Arc<Gateway>>,
    /// By name (cluster-scoped).
    pub gateway_classes: BTreeMap<String, Arc<GatewayClass>>,
    pub http_routes: BTreeMap<ObjectKey, Arc<HttpRoute>>,
    pub grpc_routes: BTreeMap<ObjectKey, Arc<GrpcRoute>>,
    pub tls_routes: BTreeMap<ObjectKey, Arc<TlsRoute>>,
    pub policies: BTreeMap<ObjectKey, Arc<BackendTlsPolicy>>,
    pub reference_grants: BTreeMap<ObjectKey, Arc<ReferenceGrant>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Names of the EndpointSlices of each Service (by their `kubernetes.io/service-name` label),
    /// kept with `endpoint_slices`: scanning a namespace's slices per Service made resolving
    /// quadratic in the Services per namespace.
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<String>>,
}

impl Store {
    /// Adds or replaces an object.
    pub fn put(&mut self, object: Object) {
        let key = object.key();
        match object {
            Object::Gateway(o) => drop(self.gateways.insert(key, o)),
            Object::GatewayClass(o) => drop(self.gateway_classes.insert(key.name, o)),
            Object::HttpRoute(o) => drop(self.http_routes.insert(key, o)),
            Object::GrpcRoute(o) => drop(self.grpc_routes.insert(key, o)),
            Object::TlsRoute(o) => drop(self.tls_routes.insert(key, o)),
            Object::BackendTlsPolicy(o) => drop(self.policies.insert(key, o)),
            Object::ReferenceGrant(o) => drop(self.reference_grants.insert(key, o)),
            Object::Service(o) => drop(self.services.insert(key, o)),
            Object::EndpointSlice(o) => {
                if let Some(old) = self.endpoint_slices.remove(&key) {
                    self.link_slice(&key, &old, false);
                }
                self.link_slice(&key, &o, true);
                self.endpoint_slices.insert(key, o);
            }
            Object::ConfigMap(o) => drop(self.config_maps.insert(key, o)),
            Object::Secret(o) => drop(self.secrets.insert(key, o)),
            Object::Namespace(o) => drop(self.namespaces.insert(key.name, o)),
        }
    }

    /// Removes the object of `kind` (as [`Object::kind`] names it) and `key`.
    pub fn remove(&mut self, kind: &str, key: &ObjectKey) {
        match kind {
            "Gateway" => drop(self.gateways.remove(key)),
            "GatewayClass" => drop(self.gateway_classes.remove(&key.name)),
            "HTTPRoute" => drop(self.http_routes.remove(key)),
            "GRPCRoute" => drop(self.grpc_routes.remove(key)),
            "TLSRoute" => drop(self.tls_routes.remove(key)),
            "BackendTLSPolicy" => drop(self.policies.remove(key)),
            "ReferenceGrant" => drop(self.reference_grants.remove(key)),
            "Service" => drop(self.services.remove(key)),
            "EndpointSlice" => {
                if let Some(old) = self.endpoint_slices.remove(key) {
                    self.link_slice(key, &old, false);
                }
            }
            "ConfigMap" => drop(self.config_maps.remove(key)),
            "Secret" => drop(self.secrets.remove(key)),
            "Namespace" => drop(self.namespaces.remove(&key.name)),
            other => unreachable!("no such kind {other}"),
        }
    }

    pub fn config_map(&self, key: &ObjectKey) -> Option<&ConfigMap> {
        self.config_maps.get(key).map(|c| &**c)
    }

    /// Labels of a namespace. Without a Namespace object, Kubernetes' automatic
    /// `kubernetes.io/metadata.name` label is still there.
    pub fn namespace_labels(&self, namespace: &str) -> StringMap {
        let mut labels =
            self.namespaces.get(namespace).map(|ns| ns.metadata.labels.clone()).unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), namespace);
        labels
    }

    /// EndpointSlices of a Service (label `kubernetes.io/service-name`, same namespace).
    pub fn endpoint_slices_of<'a>(
        &'a self,
        service: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices_by_service.get(service).into_iter().flatten().filter_map(move |name| {
            self.endpoint_slices.get(&ObjectKey::new(&service.namespace, name)).map(|s| &**s)
        })
    }

    /// Adds (`linked`) or removes a slice in its Service's entry of `slices_by_service`.
    fn link_slice(&mut self, key: &ObjectKey, slice: &EndpointSlice, linked: bool) {
        let Some(service) = slice.metadata.labels.get("kubernetes.io/service-name") else {
            return;
        };
        let service = ObjectKey::new(&key.namespace, service);
        if linked {
            self.slices_by_service.entry(service).or_default().insert(key.name.clone());
        } else if let Some(names) = self.slices_by_service.get_mut(&service) {
            names.remove(&key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&service);
            }
        }
    }
}

/// Serialized as `"namespace/name"`, as people write it.
impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
