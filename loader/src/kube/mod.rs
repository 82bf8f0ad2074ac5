//! `serve --source kubernetes`: the objects come from the API server instead of a directory.
//!
//! One watcher (kube-rs `runtime::watcher`: list, then watch from the list's resourceVersion,
//! relisting after `410 Gone` or a lost connection) per kind in [`api::WATCHED`], per watched
//! namespace. Each object is turned back into JSON and parsed by [`crate::source::parse_file`],
//! the same code as file mode, so strictness and error reporting are identical. The watchers send
//! what changed to the rebuild thread ([`KubeInput`], a [`crate::pipeline::Input`]), which keeps the
//! [`Store`] and builds with the same debounce as file mode. Nothing is built before every
//! watcher has listed once (`/readyz` says 503 until then); while the API server cannot be
//! reached the last snapshot keeps being served.
//!
//! Status is written back by the replica holding the Lease ([`leader`]), see [`status`].

pub mod api;
mod leader;
mod status;

use crate::objects::ObjectKey;
use crate::pipeline::{Resolved, StatusReport};
use crate::resolve;
use crate::source::{parse_file, ParsedFile, SourceError};
use crate::store::Store;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "backendtls-loader";

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; without it `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// Watch only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Only Secrets with these labels are watched (a label selector), so that a large cluster's
    /// Secrets are not all held in memory.
    pub secret_selector: Option<String>,
    /// The `controllerName` of the status entries this loader owns.
    pub controller_name: String,
    /// `--gateway-class`: Gateways of this class are ours (besides those whose GatewayClass has
    /// our controllerName).
    pub gateway_class: Option<String>,
    /// Write status back (as leader).
    pub write_status: bool,
    /// Leader election Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
}

/// Something changed: wake the rebuild thread.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A watched stream: one kind, one namespace (or all).
struct Stream {
    kind: &'static str,
    namespace: Option<String>,
}

enum Delta {
    /// An object added or modified.
    Put {
        stream: usize,
        key: ObjectKey,
        parsed: ParsedFile,
    },
    Delete {
        stream: usize,
        key: ObjectKey,
    },
    /// A (re)list: the stream's objects are exactly these.
    Reset {
        stream: usize,
        objects: Vec<(ObjectKey, ParsedFile)>,
    },
}

/// Connects, finds the versions served, starts the watchers, leader election and the status
/// writer. Returns the rebuild thread's side.
pub async fn start(options: KubeOptions, notify: Notify) -> Result<KubeInput, StartError> {
    let client = client(&options).await?;
    let mut resources = Vec::new();
    for kind in api::WATCHED {
        resources.push((kind, served_resource(&client, kind).await?));
    }
    let (tx, rx) = mpsc::channel();
    let mut streams = Vec::new();
    for (kind, resource) in &resources {
        let namespaces: Vec<Option<String>> = if kind.namespaced && !options.namespaces.is_empty() {
            options.namespaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for namespace in namespaces {
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                None => Api::all_with(client.clone(), resource),
            };
            let mut config = watcher::Config::default();
            if kind.kind == "Secret" {
                if let Some(selector) = &options.secret_selector {
                    config = config.labels(selector);
                }
            }
            let index = streams.len();
            streams.push(Stream { kind: kind.kind, namespace: namespace.clone() });
            tokio::spawn(watch(
                api,
                config,
                index,
                kind.kind,
                resource.clone(),
                tx.clone(),
                notify.clone(),
            ));
        }
    }
    let status = if options.write_status {
        let leader = leader::Leader::start(client.clone(), &options);
        let policy = resources.iter().find(|(k, _)| k.kind == "BackendTLSPolicy");
        let gateway = resources.iter().find(|(k, _)| k.kind == "Gateway");
        let route = resources.iter().find(|(k, _)| k.kind == "HTTPRoute");
        let grpc_route = resources.iter().find(|(k, _)| k.kind == "GRPCRoute");
        let tls_route = resources.iter().find(|(k, _)| k.kind == "TLSRoute");
        let writer = status::Writer {
            client: client.clone(),
            controller_name: options.controller_name.clone(),
            policies: policy.expect("watched").1.clone(),
            gateways: gateway.expect("watched").1.clone(),
            routes: route.expect("watched").1.clone(),
            grpc_routes: grpc_route.expect("watched").1.clone(),
            tls_routes: tls_route.expect("watched").1.clone(),
        };
        Some(writer.start(leader))
    } else {
        None
    };
    tracing::info!(
        streams = streams.len(),
        namespaces = ?options.namespaces,
        "watching the Kubernetes API"
    );
    let synced = vec![false; streams.len()];
    let keys = streams.iter().map(|_| HashSet::new()).collect();
    Ok(KubeInput {
        rx,
        streams,
        synced,
        keys,
        store: Store::default(),
        errors: BTreeMap::new(),
        never_good: BTreeSet::new(),
        status,
        controller_name: options.controller_name,
        gateway_class: options.gateway_class,
    })
}

/// Why the Kubernetes source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("kubeconfig {}: {error}", path.display())]
    Kubeconfig { path: std::path::PathBuf, error: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (kubeconfig or in-cluster): {0}")]
    NoConfig(kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("cannot list {api_version} {plural}: {error}")]
    List { api_version: String, plural: &'static str, error: kube::Error },
    /// `last_error`: why the last version tried was not served.
    #[error("{kind} is not served by the API server ({last_error}); install its CRD")]
    NotServed { kind: &'static str, last_error: String },
}

async fn client(options: &KubeOptions) -> Result<kube::Client, StartError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let error = |error| StartError::Kubeconfig { path: path.clone(), error };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(error)?
        }
        None => kube::Config::infer().await.map_err(StartError::NoConfig)?,
    };
    kube::Client::try_from(config).map_err(StartError::Client)
}

/// The first of the kind's versions the API server serves (HTTPRoute at v1, or v1beta1 on a
/// cluster with older CRDs).
async fn served_resource(
    client: &kube::Client,
    kind: &api::WatchedKind,
) -> Result<ApiResource, StartError> {
    let mut last_error = String::new();
    for version in kind.versions {
        let resource = api_resource(kind, version);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(resource),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                last_error = format!("{} not served", resource.api_version);
            }
            Err(error) => {
                let api_version = resource.api_version;
                return Err(StartError::List { api_version, plural: kind.plural, error });
            }
        }
    }
    Err(StartError::NotServed { kind: kind.kind, last_error })
}

pub(crate) fn api_resource(kind: &api::WatchedKind, version: &str) -> ApiResource {
    ApiResource {
        group: kind.group.into(),
        version: version.into(),
        api_version: if kind.group.is_empty() {
            version.into()
        } else {
            format!("{}/{version}", kind.group)
        },
        kind: kind.kind.into(),
        plural: kind.plural.into(),
    }
}

fn key_of(object: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        object.metadata.namespace.as_deref().unwrap_or(""),
        object.metadata.name.as_deref().unwrap_or(""),
    )
}

/// Parses one object with file mode's parser. Errors name it as
/// `kubernetes/<apiVersion>/<Kind>/<namespace>/<name>`.
fn parse(resource: &ApiResource, object: DynamicObject) -> (ObjectKey, ParsedFile) {
    let key = key_of(&object);
    let mut value = serde_json::to_value(&object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), resource.api_version.clone().into());
        map.insert("kind".into(), resource.kind.clone().into());
        if let Some(metadata) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("managedFields");
        }
    }
    let path = PathBuf::from(format!(
        "kubernetes/{}/{}/{}/{}.json",
        resource.api_version, resource.kind, key.namespace, key.name
    ));
    let text = value.to_string();
    (key, parse_file(&path, &text))
}

async fn watch(
    api: Api<DynamicObject>,
    config: watcher::Config,
    stream: usize,
    kind: &'static str,
    resource: ApiResource,
    tx: mpsc::Sender<Delta>,
    notify: Notify,
) {
    use kube::runtime::WatchStreamExt;
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut listing: Option<Vec<(ObjectKey, ParsedFile)>> = None;
    while let Some(event) = events.next().await {
        let delta = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(object)) => {
                listing.get_or_insert_with(Vec::new).push(parse(&resource, object));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(kind, objects = objects.len(), "listed");
                Delta::Reset { stream, objects }
            }
            Ok(watcher::Event::Apply(object)) => {
                let (key, parsed) = parse(&resource, object);
                Delta::Put { stream, key, parsed }
            }
            Ok(watcher::Event::Delete(object)) => Delta::Delete { stream, key: key_of(&object) },
            Err(e) => {
                // The watcher relists after 410 Gone and retries with backoff; what is served
                // stays as it was meanwhile.
                tracing::warn!(kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        if tx.send(delta).is_err() {
            return;
        }
        notify();
    }
}

/// The rebuild thread's side: the store, kept up to date from the watchers' deltas.
pub struct KubeInput {
    rx: mpsc::Receiver<Delta>,
    streams: Vec<Stream>,
    synced: Vec<bool>,
    /// The objects each stream holds.
    keys: Vec<HashSet<ObjectKey>>,
    store: Store,
    /// Problems with objects, by kind and key (their last good content stays in the store).
    errors: BTreeMap<(&'static str, ObjectKey), Vec<SourceError>>,
    /// Objects that never parsed: what they govern is unknown.
    never_good: BTreeSet<(&'static str, ObjectKey)>,
    status: Option<tokio::sync::watch::Sender<Option<Arc<status::Desired>>>>,
    controller_name: String,
    gateway_class: Option<String>,
}

impl KubeInput {
    fn apply(&mut self, delta: Delta) {
        match delta {
            Delta::Put { stream, key, parsed } => self.put(stream, key, parsed),
            Delta::Delete { stream, key } => self.delete(stream, &key),
            Delta::Reset { stream, objects } => {
                let listed: HashSet<ObjectKey> = objects.iter().map(|(k, _)| k.clone()).collect();
                let gone: Vec<ObjectKey> =
                    self.keys[stream].iter().filter(|k| !listed.contains(*k)).cloned().collect();
                for key in gone {
                    self.delete(stream, &key);
                }
                for (key, parsed) in objects {
                    self.put(stream, key, parsed);
                }
                self.synced[stream] = true;
            }
        }
    }

    fn put(&mut self, stream: usize, key: ObjectKey, parsed: ParsedFile) {
        let kind = self.streams[stream].kind;
        let id = (kind, key.clone());
        self.keys[stream].insert(key);
        if parsed.usable {
            for object in parsed.objects {
                self.store.put(object);
            }
            self.never_good.remove(&id);
        } else if !self.has(kind, &id.1) {
            self.never_good.insert(id.clone());
        }
        if parsed.errors.is_empty() {
            self.errors.remove(&id);
        } else {
            self.errors.insert(id, parsed.errors);
        }
    }

    fn delete(&mut self, stream: usize, key: &ObjectKey) {
        let kind = self.streams[stream].kind;
        self.keys[stream].remove(key);
        let id = (kind, key.clone());
        self.errors.remove(&id);
        self.never_good.remove(&id);
        if self.has(kind, key) {
            self.store.remove(kind, key);
        }
    }

    /// Whether Gateway `namespace/name` is ours: its class is `--gateway-class`, or a
    /// GatewayClass with our controllerName.
    fn owns_gateway(&self, namespace: &str, name: &str) -> bool {
        let Some(gateway) = self.store.gateways.get(&ObjectKey::new(namespace, name)) else {
            return false;
        };
        let class = &gateway.spec.gateway_class_name;
        self.gateway_class.as_deref() == Some(class.as_str())
            || self
                .store
                .gateway_classes
                .get(class)
                .is_some_and(|c| c.spec.controller_name == self.controller_name)
    }

    fn has(&self, kind: &str, key: &ObjectKey) -> bool {
        let s = &self.store;
        match kind {
            "Gateway" => s.gateways.contains_key(key),
            "GatewayClass" => s.gateway_classes.contains_key(&key.name),
            "HTTPRoute" => s.http_routes.contains_key(key),
            "GRPCRoute" => s.grpc_routes.contains_key(key),
            "TLSRoute" => s.tls_routes.contains_key(key),
            "BackendTLSPolicy" => s.policies.contains_key(key),
            "ReferenceGrant" => s.reference_grants.contains_key(key),
            "Service" => s.services.contains_key(key),
            "EndpointSlice" => s.endpoint_slices.contains_key(key),
            "ConfigMap" => s.config_maps.contains_key(key),
            "Secret" => s.secrets.contains_key(key),
            "Namespace" => s.namespaces.contains_key(&key.name),
            _ => false,
        }
    }
}

impl crate::pipeline::Input for KubeInput {
    fn reload(&mut self) -> Result<(), crate::pipeline::ReloadError> {
        while let Ok(delta) = self.rx.try_recv() {
            self.apply(delta);
        }
        Ok(())
    }

    fn ready(&self) -> bool {
        let waiting: Vec<String> = self
            .streams
            .iter()
            .zip(&self.synced)
            .filter(|(_, synced)| !**synced)
            .map(|(s, _)| format!("{} {}", s.kind, s.namespace.as_deref().unwrap_or("(all)")))
            .collect();
        if !waiting.is_empty() {
            tracing::info!(?waiting, "waiting for the API caches to sync");
        }
        waiting.is_empty()
    }

    fn resolve(&self, options: &resolve::Options) -> Resolved {
        let errors = self.errors.values().flatten().cloned().collect();
        Resolved { resolution: resolve::resolve(&self.store, options), errors }
    }

    fn objects(&mut self) -> (&mut Store, Vec<SourceError>) {
        let errors = self.errors.values().flatten().cloned().collect();
        (&mut self.store, errors)
    }

    fn unusable(&self) -> Vec<String> {
        self.never_good.iter().map(|(kind, key)| format!("{kind} {key}")).collect()
    }

    fn built(&mut self, report: &StatusReport<'_>) {
        if let Some(status) = &self.status {
            let desired =
                status::Desired::from_report(report, |ns, name| self.owns_gateway(ns, name));
            status.send_replace(Some(Arc::new(desired)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Input;

    fn input() -> (KubeInput, mpsc::Sender<Delta>) {
        let (tx, rx) = mpsc::channel();
        let input = KubeInput {
            rx,
            streams: vec![Stream { kind: "ConfigMap", namespace: None }],
            synced: vec![false],
            keys: vec![HashSet::new()],
            store: Store::default(),
            errors: BTreeMap::new(),
            never_good: BTreeSet::new(),
            status: None,
            controller_name: "c".into(),
            gateway_class: None,
        };
        (input, tx)
    }

    fn config_map(name: &str, data: &str) -> (ObjectKey, ParsedFile) {
        let kind = api::WATCHED.iter().find(|k| k.kind == "ConfigMap").expect("watched");
        let resource = api_resource(kind, "v1");
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "ns", "managedFields": [{}] },
            "data": { "ca.crt": data },
        }))
        .unwrap();
        parse(&resource, object)
    }

    fn names(input: &KubeInput) -> Vec<String> {
        input.store.config_maps.keys().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn a_relist_replaces_the_stream_and_broken_objects_keep_their_last_good_content() {
        let (mut input, tx) = input();
        assert!(!input.ready(), "not ready before the first list");
        tx.send(Delta::Reset {
            stream: 0,
            objects: vec![config_map("a", "1"), config_map("b", "1")],
        })
        .unwrap();
        input.reload().unwrap();
        assert!(input.ready());
        assert_eq!(names(&input), ["a", "b"]);
        // A relist after 410 Gone: what is not listed again was deleted meanwhile.
        tx.send(Delta::Reset { stream: 0, objects: vec![config_map("b", "2")] }).unwrap();
        input.reload().unwrap();
        assert_eq!(names(&input), ["b"]);
        // An object that does not parse (data must be strings) keeps its last good content and is
        // reported, like a broken file; one that never parsed blocks a first configuration.
        let kind = api::WATCHED.iter().find(|k| k.kind == "ConfigMap").expect("watched");
        let resource = api_resource(kind, "v1");
        let broken = |name: &str| {
            let object: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": name, "namespace": "ns" }, "data": { "ca.crt": 1 },
            }))
            .unwrap();
            parse(&resource, object)
        };
        let (key, parsed) = broken("b");
        tx.send(Delta::Put { stream: 0, key, parsed }).unwrap();
        let (key, parsed) = broken("c");
        tx.send(Delta::Put { stream: 0, key, parsed }).unwrap();
        input.reload().unwrap();
        assert_eq!(names(&input), ["b"]);
        let resolved = input.resolve(&resolve::Options::default());
        assert_eq!(resolved.errors.len(), 2, "{:?}", resolved.errors);
        let error = resolved.errors[0].to_string();
        assert!(error.starts_with("kubernetes/v1/ConfigMap/ns/b.json"), "{error}");
        assert_eq!(input.unusable(), ["ConfigMap ns/c"]);
        tx.send(Delta::Delete { stream: 0, key: ObjectKey::new("ns", "c") }).unwrap();
        tx.send(Delta::Delete { stream: 0, key: ObjectKey::new("ns", "b") }).unwrap();
        input.reload().unwrap();
        assert!(names(&input).is_empty());
        assert!(input.unusable().is_empty());
        assert!(input.resolve(&resolve::Options::default()).errors.is_empty());
    }
}
