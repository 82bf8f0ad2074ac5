//! An in-process stand-in for the Kubernetes API server, on 127.0.0.1 over plain HTTP, for the
//! `serve --source kubernetes` tests: no real API server can run on these machines.
//!
//! It follows the documented API semantics the loader relies on, for any resource (objects are
//! untyped JSON, keyed by group, plural, namespace and name and served at every version of
//! [`SERVED`], as the API server serves one object at each version of its CRD):
//! - list (`resourceVersion` of the list in `metadata`; `limit` is ignored and no `continue` is
//!   given, which a client must accept) and get;
//! - watch (`?watch=true`): ADDED / MODIFIED / DELETED from the requested `resourceVersion`,
//!   BOOKMARK when `allowWatchBookmarks` asks for it; a `resourceVersion` older than the
//!   compacted history answers an ERROR event with a `410 Gone` Status (`Expired`), as the API
//!   server does for a watch; `timeoutSeconds` ends the stream;
//! - create (409 AlreadyExists), update (409 Conflict on a stale `metadata.resourceVersion`,
//!   `metadata.generation` bumped when anything but metadata and status changes), delete;
//! - the status subresource: get, update, and server-side apply (`PATCH` with
//!   `application/apply-patch+yaml`, `fieldManager` required, `force`): ownership per field of
//!   `status` (lists are atomic, as `status.ancestors` and `status.parents` are in the Gateway API
//!   CRDs), a conflict (409) when another manager owns an applied field and `force` is not set,
//!   fields the manager applied before and no longer applies removed, `metadata.resourceVersion`
//!   in the patch honoured as a precondition, `metadata.managedFields` kept up to date;
//! - `coordination.k8s.io/v1` Leases, like any object (409 on a stale resourceVersion).
//!
//! Test hooks: [`KubeApi::disconnect_watches`] ends every watch mid-stream (after applying
//! changes the watchers then miss), [`KubeApi::compact`] forgets the history so that resuming
//! watches get `410 Gone`, [`KubeApi::writes`] lists every write with its field manager.

mod server;

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// (group, versions, plural, kind, namespaced): what the stand-in serves.
pub const SERVED: &[(&str, &[&str], &str, &str, bool)] = &[
    ("gateway.networking.k8s.io", &["v1", "v1beta1"], "gatewayclasses", "GatewayClass", false),
    ("gateway.networking.k8s.io", &["v1", "v1beta1"], "gateways", "Gateway", true),
    ("gateway.networking.k8s.io", &["v1", "v1beta1"], "httproutes", "HTTPRoute", true),
    ("gateway.networking.k8s.io", &["v1"], "grpcroutes", "GRPCRoute", true),
    ("gateway.networking.k8s.io", &["v1"], "tlsroutes", "TLSRoute", true),
    (
        "gateway.networking.k8s.io",
        &["v1", "v1beta1", "v1alpha2"],
        "referencegrants",
        "ReferenceGrant",
        true,
    ),
    (
        "gateway.networking.k8s.io",
        &["v1", "v1alpha3"],
        "backendtlspolicies",
        "BackendTLSPolicy",
        true,
    ),
    ("", &["v1"], "services", "Service", true),
    ("", &["v1"], "configmaps", "ConfigMap", true),
    ("", &["v1"], "secrets", "Secret", true),
    ("", &["v1"], "namespaces", "Namespace", false),
    ("discovery.k8s.io", &["v1"], "endpointslices", "EndpointSlice", true),
    ("coordination.k8s.io", &["v1"], "leases", "Lease", true),
];

/// Where an object lives (the version it was written at does not matter).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub group: String,
    pub plural: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

/// One write, for tests: who wrote what.
#[derive(Clone, Debug)]
pub struct Write {
    pub verb: String,
    pub id: ObjectId,
    pub subresource: Option<String>,
    pub field_manager: Option<String>,
}

/// An API error, rendered as a `Status` object.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into() }
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

struct Watch {
    group: String,
    plural: String,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    /// apiVersion the watch was made at (objects are sent at it).
    api_version: String,
    kind: String,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<ObjectId, Value>,
    /// (revision, event type, object) for resuming watches, from `compacted` on.
    history: Vec<(u64, &'static str, ObjectId, Value)>,
    /// Watches from a revision below this get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    /// Field owners of each object's `status` fields.
    owners: HashMap<ObjectId, BTreeMap<String, String>>,
    writes: Vec<Write>,
    /// While set, new watches wait (see [`KubeApi::disconnect_watches`]).
    refuse_watches: bool,
}

pub struct KubeApi {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    kubeconfig: tempfile::NamedTempFile,
    _server: server::ServerThread,
}

pub fn served(
    group: &str,
    plural: &str,
) -> Option<&'static (&'static str, &'static [&'static str], &'static str, &'static str, bool)> {
    SERVED.iter().find(|(g, _, p, _, _)| *g == group && *p == plural)
}

impl KubeApi {
    /// Starts the stand-in on a free loopback port and writes a kubeconfig for it.
    pub fn start() -> KubeApi {
        let state = Arc::new(Mutex::new(State { revision: 1, ..Default::default() }));
        let server = server::ServerThread::start(state.clone());
        let address = server.address;
        let mut kubeconfig = tempfile::Builder::new()
            .prefix("btls-kubeconfig-")
            .suffix(".yaml")
            .tempfile()
            .expect("kubeconfig");
        use std::io::Write as _;
        write!(
            kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{address}\n\
             users:\n- name: standin\n  user:\n    token: standin-token\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
             current-context: standin\n"
        )
        .expect("write kubeconfig");
        KubeApi { address, state, kubeconfig, _server: server }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn kubeconfig(&self) -> &Path {
        self.kubeconfig.path()
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig.path().to_path_buf()
    }

    /// Creates or replaces (by `apiVersion`, `kind`, namespace and name) a manifest's object.
    pub fn apply(&self, object: Value) -> Value {
        let id = id_of(&object).expect("a known kind with a name");
        let mut state = self.state.lock().unwrap();
        let result = if state.objects.contains_key(&id) {
            let mut object = object;
            object["metadata"]["resourceVersion"] = Value::Null;
            state.update(&id, object, None)
        } else {
            state.create(&id, object)
        };
        result.unwrap_or_else(|e| panic!("apply {id:?}: {e:?}"))
    }

    /// Every object of every document of a YAML text.
    pub fn apply_yaml(&self, text: &str) {
        for document in serde_norway::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("YAML");
            if value.is_null() {
                continue;
            }
            self.apply(value);
        }
    }

    pub fn delete(&self, group: &str, plural: &str, namespace: &str, name: &str) {
        let id = ObjectId {
            group: group.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.state.lock().unwrap().delete(&id).expect("delete");
    }

    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let id = ObjectId {
            group: group.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.state.lock().unwrap().objects.get(&id).cloned()
    }

    /// Sets `status` fields as another controller would with server-side apply.
    pub fn apply_status_as(&self, manager: &str, id: &ObjectId, status: Value) {
        let patch = json!({ "status": status });
        self.state.lock().unwrap().apply_status(id, patch, manager, true).expect("apply status");
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Ends every watch stream (as a dropped connection would), first applying `changes`, which
    /// the watchers therefore miss until they watch again.
    pub fn disconnect_watches(&self, changes: impl FnOnce(&KubeApi)) {
        let watches = std::mem::take(&mut self.state.lock().unwrap().watches);
        drop(watches);
        // New watches are refused while the changes are made, so none sees them live.
        self.state.lock().unwrap().refuse_watches = true;
        changes(self);
        self.state.lock().unwrap().refuse_watches = false;
    }

    /// Forgets the history up to now: a watch resuming from an older resourceVersion gets
    /// `410 Gone` and must list again.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.revision + 1;
        state.history.clear();
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.watches.retain(|w| !w.tx.is_closed());
        state.watches.len()
    }

    /// Sends a BOOKMARK on every watch that allows them.
    pub fn bookmark(&self) {
        self.state.lock().unwrap().bookmark();
    }
}

/// The id of a manifest's object (its `apiVersion` and `kind` must be served).
pub fn id_of(object: &Value) -> Option<ObjectId> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let (_, _, plural, _, namespaced) =
        SERVED.iter().find(|(g, _, _, k, _)| *g == group && *k == kind)?;
    let namespace = if *namespaced {
        object["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
    } else {
        String::new()
    };
    Some(ObjectId {
        group: group.into(),
        plural: plural.to_string(),
        namespace,
        name: object["metadata"]["name"].as_str()?.into(),
    })
}

fn now() -> String {
    // RFC 3339 without a time crate: seconds since the epoch, formatted by hand.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl State {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, event: &'static str, id: &ObjectId, object: &Value) {
        let revision = self.revision;
        self.history.push((revision, event, id.clone(), object.clone()));
        let mut open = Vec::new();
        for watch in std::mem::take(&mut self.watches) {
            if watch.matches(id, object) {
                let sent = watch.tx.send(watch.event(event, object));
                if sent.is_err() {
                    continue;
                }
            }
            open.push(watch);
        }
        self.watches = open;
    }

    fn bookmark(&mut self) {
        let revision = self.revision.to_string();
        self.watches.retain(|w| {
            !w.bookmarks
                || w.tx
                    .send(json!({
                        "type": "BOOKMARK",
                        "object": {
                            "apiVersion": w.api_version, "kind": w.kind,
                            "metadata": { "resourceVersion": revision },
                        },
                    }))
                    .is_ok()
        });
    }

    fn create(&mut self, id: &ObjectId, mut object: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(id) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", id.plural, id.name),
            ));
        }
        let revision = self.next_revision();
        let metadata = object["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata is required"))?;
        metadata.insert("resourceVersion".into(), revision.to_string().into());
        metadata.insert("generation".into(), 1.into());
        metadata.insert("uid".into(), format!("uid-{revision}").into());
        metadata.insert("creationTimestamp".into(), now().into());
        if !id.namespace.is_empty() {
            metadata.insert("namespace".into(), id.namespace.clone().into());
        }
        self.objects.insert(id.clone(), object.clone());
        self.record("ADDED", id, &object);
        Ok(object)
    }

    /// Replaces the object but its status (or only its status, with `subresource`).
    fn update(
        &mut self,
        id: &ObjectId,
        mut object: Value,
        subresource: Option<&str>,
    ) -> Result<Value, ApiError> {
        let current = self.objects.get(id).cloned().ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("{} \"{}\" not found", id.plural, id.name))
        })?;
        let expected = object["metadata"]["resourceVersion"].as_str().map(str::to_string);
        let actual = current["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
        if expected.as_ref().is_some_and(|e| *e != actual) {
            return Err(conflict(id));
        }
        let mut next = current.clone();
        if subresource == Some("status") {
            next["status"] = object["status"].take();
        } else {
            let status = current.get("status").cloned();
            let spec_changed = {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(map) = v.as_object_mut() {
                        map.remove("metadata");
                        map.remove("status");
                    }
                    v
                };
                strip(&current) != strip(&object)
            };
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            let keep: Vec<(&str, Value)> = ["uid", "creationTimestamp", "managedFields"]
                .into_iter()
                .map(|f| (f, current["metadata"][f].clone()))
                .collect();
            next = object;
            for (field, value) in keep {
                if !value.is_null() {
                    next["metadata"][field] = value;
                }
            }
            next["metadata"]["generation"] =
                (if spec_changed { generation + 1 } else { generation }).into();
            if !id.namespace.is_empty() {
                next["metadata"]["namespace"] = id.namespace.clone().into();
            }
            if let Some(map) = next.as_object_mut() {
                map.remove("status");
                if let Some(status) = status {
                    map.insert("status".into(), status);
                }
            }
        }
        let revision = self.next_revision();
        next["metadata"]["resourceVersion"] = revision.to_string().into();
        self.objects.insert(id.clone(), next.clone());
        self.record("MODIFIED", id, &next);
        Ok(next)
    }

    fn delete(&mut self, id: &ObjectId) -> Result<Value, ApiError> {
        let mut object = self.objects.remove(id).ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("{} \"{}\" not found", id.plural, id.name))
        })?;
        self.owners.remove(id);
        let revision = self.next_revision();
        object["metadata"]["resourceVersion"] = revision.to_string().into();
        self.record("DELETED", id, &object);
        Ok(object)
    }

    /// Server-side apply of `patch.status` by `manager`.
    fn apply_status(
        &mut self,
        id: &ObjectId,
        patch: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let current = self.objects.get(id).cloned().ok_or_else(|| {
            ApiError::new(404, "NotFound", format!("{} \"{}\" not found", id.plural, id.name))
        })?;
        if let Some(expected) = patch["metadata"]["resourceVersion"].as_str() {
            if current["metadata"]["resourceVersion"].as_str() != Some(expected) {
                return Err(conflict(id));
            }
        }
        let applied = patch["status"].as_object().cloned().unwrap_or_default();
        let owners = self.owners.entry(id.clone()).or_default();
        if !force {
            for field in applied.keys() {
                if let Some(owner) = owners.get(field).filter(|o| *o != manager) {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{owner}\": .status.{field}"),
                    ));
                }
            }
        }
        let mut status = current["status"].as_object().cloned().unwrap_or_default();
        // Fields this manager owned and no longer applies are removed.
        let dropped: Vec<String> = owners
            .iter()
            .filter(|(field, owner)| *owner == manager && !applied.contains_key(*field))
            .map(|(field, _)| field.clone())
            .collect();
        for field in dropped {
            owners.remove(&field);
            status.remove(&field);
        }
        for (field, value) in applied {
            owners.insert(field.clone(), manager.to_string());
            status.insert(field, value);
        }
        let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (field, owner) in owners.iter() {
            by_manager.entry(owner).or_default().push(field);
        }
        let managed: Vec<Value> = by_manager
            .into_iter()
            .map(|(owner, fields)| {
                let fields: serde_json::Map<String, Value> =
                    fields.into_iter().map(|f| (format!("f:{f}"), json!({}))).collect();
                json!({
                    "manager": owner, "operation": "Apply", "subresource": "status",
                    "fieldsType": "FieldsV1", "fieldsV1": { "f:status": fields },
                })
            })
            .collect();
        let mut next = current;
        next["status"] = Value::Object(status);
        next["metadata"]["managedFields"] = Value::Array(managed);
        let revision = self.next_revision();
        next["metadata"]["resourceVersion"] = revision.to_string().into();
        self.objects.insert(id.clone(), next.clone());
        self.record("MODIFIED", id, &next);
        Ok(next)
    }
}

fn conflict(id: &ObjectId) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            id.plural, id.name
        ),
    )
}

impl Watch {
    fn matches(&self, id: &ObjectId, object: &Value) -> bool {
        id.group == self.group
            && id.plural == self.plural
            && self.namespace.as_ref().is_none_or(|ns| *ns == id.namespace)
            && self
                .selector
                .iter()
                .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
    }

    fn event(&self, event: &str, object: &Value) -> Value {
        let mut object = object.clone();
        object["apiVersion"] = self.api_version.clone().into();
        json!({ "type": event, "object": object })
    }
}
