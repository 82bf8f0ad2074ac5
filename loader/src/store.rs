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
    slices_by_service: BTreeMap<ObjectKey, Vec<String>>,
    /// What changed since [`Store::take_changes`] last asked; `None` until it first does (a
    /// first load records nothing: it is resolved in full anyway).
    changes: Option<Changes>,
}

/// The objects that changed between two builds: what [`crate::resolve::Incremental`] re-resolves.
/// An object put again with equal content is not a change.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Added, replaced or removed, by kind (as [`Object::kind`] names it) and key.
    pub objects: BTreeSet<(&'static str, ObjectKey)>,
    /// Services whose EndpointSlices changed: those of each changed slice before and after.
    pub slice_services: BTreeSet<ObjectKey>,
    /// What changed objects were at the last build, where they existed then.
    pub old: Vec<Object>,
}

impl Store {
    /// Adds or replaces an object.
    pub fn put(&mut self, object: Object) {
        self.put_keyed(object.key(), object);
    }

    /// [`Self::put`] with the object's key ([`Object::key`]) already made.
    pub fn put_keyed(&mut self, key: ObjectKey, object: Object) {
        debug_assert_eq!(key, object.key());
        // Equal content keeps the stored object (and its `Arc`), and is no change.
        if self.changes.is_some() && !self.record(&key, &object) {
            return;
        }
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
    pub fn remove(&mut self, kind: &'static str, key: &ObjectKey) {
        let old = self.stored(kind, key);
        if let Some(changes) = &mut self.changes {
            if let Some(Object::EndpointSlice(slice)) = &old {
                changes.slice_services.extend(service_of(key, slice));
            }
            if changes.objects.insert((kind, key.clone())) {
                changes.old.extend(old);
            }
        }
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

    /// The changes since the last call, and from now on records them. `None` the first time:
    /// nothing was recorded yet.
    pub fn take_changes(&mut self) -> Option<Changes> {
        self.changes.replace(Changes::default())
    }

    /// Records `object` as a change, unless it equals the stored one; says whether it was one.
    fn record(&mut self, key: &ObjectKey, object: &Object) -> bool {
        let old = self.stored(object.kind(), key);
        // `Object`'s equality compares contents (an `Arc` compares what it points to).
        if old.as_ref() == Some(object) {
            return false;
        }
        let Some(changes) = &mut self.changes else { return true };
        if let Object::EndpointSlice(slice) = object {
            changes.slice_services.extend(service_of(key, slice));
            if let Some(Object::EndpointSlice(old)) = &old {
                changes.slice_services.extend(service_of(key, old));
            }
        }
        if changes.objects.insert((object.kind(), key.clone())) {
            changes.old.extend(old);
        }
        true
    }

    /// The stored object of `kind` and `key` (only while changes are recorded: the copy is for
    /// [`Changes::old`]).
    fn stored(&self, kind: &str, key: &ObjectKey) -> Option<Object> {
        self.changes.as_ref()?;
        let object = match kind {
            "Gateway" => Object::Gateway(self.gateways.get(key)?.clone()),
            "GatewayClass" => Object::GatewayClass(self.gateway_classes.get(&key.name)?.clone()),
            "HTTPRoute" => Object::HttpRoute(self.http_routes.get(key)?.clone()),
            "GRPCRoute" => Object::GrpcRoute(self.grpc_routes.get(key)?.clone()),
            "TLSRoute" => Object::TlsRoute(self.tls_routes.get(key)?.clone()),
            "BackendTLSPolicy" => Object::BackendTlsPolicy(self.policies.get(key)?.clone()),
            "ReferenceGrant" => Object::ReferenceGrant(self.reference_grants.get(key)?.clone()),
            "Service" => Object::Service(self.services.get(key)?.clone()),
            "EndpointSlice" => Object::EndpointSlice(self.endpoint_slices.get(key)?.clone()),
            "ConfigMap" => Object::ConfigMap(self.config_maps.get(key)?.clone()),
            "Secret" => Object::Secret(self.secrets.get(key)?.clone()),
            "Namespace" => Object::Namespace(self.namespaces.get(&key.name)?.clone()),
            other => unreachable!("no such kind {other}"),
        };
        Some(object)
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

    /// Names of the EndpointSlices of a Service (in its namespace).
    pub fn endpoint_slice_names_of(&self, service: &ObjectKey) -> impl Iterator<Item = &str> {
        self.slices_by_service.get(service).into_iter().flatten().map(String::as_str)
    }

    /// Adds (`linked`) or removes a slice in its Service's entry of `slices_by_service`.
    fn link_slice(&mut self, key: &ObjectKey, slice: &EndpointSlice, linked: bool) {
        let Some(service) = service_of(key, slice) else { return };
        if linked {
            let names = self.slices_by_service.entry(service).or_default();
            if let Err(at) = names.binary_search(&key.name) {
                names.reserve_exact(1);
                names.insert(at, key.name.clone());
            }
        } else if let Some(names) = self.slices_by_service.get_mut(&service) {
            if let Ok(at) = names.binary_search(&key.name) {
                names.remove(at);
            }
            if names.is_empty() {
                self.slices_by_service.remove(&service);
            }
        }
    }
}

/// The Service of the EndpointSlice `key` (its `kubernetes.io/service-name` label).
fn service_of(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.get("kubernetes.io/service-name")?;
    Some(ObjectKey::new(&key.namespace, name))
}

/// Serialized as `"namespace/name"`, as people write it.
impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str) -> Vec<Object> {
        let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.objects
    }

    fn slice(name: &str, service: &str, address: &str) -> Object {
        objects(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{address}\"]}}]\n"
        ))
        .remove(0)
    }

    #[test]
    fn changes_are_recorded_once_asked_for_and_equal_content_is_none() {
        let mut store = Store::default();
        let config_map =
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: x}\n";
        objects(config_map).into_iter().for_each(|o| store.put(o));
        store.put(slice("s", "a", "127.0.0.1"));
        assert!(store.take_changes().is_none(), "nothing recorded before the first ask");

        // Put again as it was: no change, and the stored object stays.
        let stored = store.config_maps[&ObjectKey::new("default", "ca")].clone();
        objects(config_map).into_iter().for_each(|o| store.put(o));
        store.put(slice("s", "a", "127.0.0.1"));
        let changes = store.take_changes().unwrap();
        assert!(changes.objects.is_empty() && changes.slice_services.is_empty(), "{changes:?}");
        assert!(Arc::ptr_eq(&stored, &store.config_maps[&ObjectKey::new("default", "ca")]));

        // A slice moving from Service a to b changes both; a removal is a change.
        store.put(slice("s", "b", "127.0.0.1"));
        store.remove("ConfigMap", &ObjectKey::new("default", "ca"));
        let changes = store.take_changes().unwrap();
        let key = |name: &str| ObjectKey::new("default", name);
        assert_eq!(
            changes.objects.into_iter().collect::<Vec<_>>(),
            [("ConfigMap", key("ca")), ("EndpointSlice", key("s"))]
        );
        assert_eq!(changes.slice_services.into_iter().collect::<Vec<_>>(), [key("a"), key("b")]);
        assert_eq!(store.endpoint_slices_of(&key("b")).count(), 1);
        assert_eq!(store.endpoint_slices_of(&key("a")).count(), 0);
    }
}
