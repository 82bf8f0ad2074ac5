//! Status written back to the API server by the leader: BackendTLSPolicy `status.ancestors`,
//! HTTPRoute `status.parents` (only the entries of our controllerName, never anyone else's) and
//! the status of our Gateways, with server-side apply on the status subresource under
//! [`super::FIELD_MANAGER`].
//!
//! `ancestors` and `parents` are atomic lists in the Gateway API CRDs: an apply replaces the
//! whole list. So each write reads the live object, keeps every entry of other controllers as it
//! is, puts ours after them (at most 16 entries in all), and applies with the live
//! `resourceVersion` as a precondition: if another controller wrote in between, the API server
//! answers 409 and the write starts over from a fresh read. Nothing is written when our entries
//! on the live object are already what the loader concluded; failures are retried with backoff.

use super::leader::Leader;
use crate::pipeline::StatusReport;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The API's limit on `status.ancestors` and `status.parents` entries.
const MAX_ENTRIES: usize = 16;

/// The status entries the last build concluded, object by object.
#[derive(Default)]
pub struct Desired {
    /// BackendTLSPolicy (namespace, name) -> our `status.ancestors` entries.
    policies: Vec<((String, String), Vec<Value>)>,
    /// HTTPRoute -> our `status.parents` entries.
    routes: Vec<((String, String), Vec<Value>)>,
    /// GRPCRoute -> our `status.parents` entries.
    grpc_routes: Vec<((String, String), Vec<Value>)>,
    /// TLSRoute -> our `status.parents` entries.
    tls_routes: Vec<((String, String), Vec<Value>)>,
    /// Gateway -> its whole `status`.
    gateways: Vec<((String, String), Value)>,
}

impl Desired {
    /// `owned(namespace, name)`: whether a Gateway is ours (its class is), so that its status,
    /// and the entries naming it in policies and routes, are ours to write. Entries naming a
    /// Service (policies no Gateway reaches) are always ours.
    pub fn from_report(report: &StatusReport<'_>, owned: impl Fn(&str, &str) -> bool) -> Desired {
        let ours = |reference: &Value| {
            reference["kind"] != "Gateway"
                || owned(
                    reference["namespace"].as_str().unwrap_or_default(),
                    reference["name"].as_str().unwrap_or_default(),
                )
        };
        let policies = report
            .policies
            .iter()
            .map(|p| {
                let value = p.to_json();
                let ancestors = value["status"]["ancestors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| ours(&a["ancestorRef"]))
                    .cloned()
                    .collect();
                ((p.namespace.clone(), p.name.clone()), ancestors)
            })
            .collect();
        let routes_of = |kind: &str| -> Vec<((String, String), Vec<Value>)> {
            report
                .routes
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| {
                    let parents = r
                        .parents
                        .iter()
                        .map(|p| serde_json::to_value(p).unwrap())
                        .filter(|p| ours(&p["parentRef"]))
                        .collect();
                    ((r.namespace.clone(), r.name.clone()), parents)
                })
                .collect()
        };
        let (routes, grpc_routes) = (routes_of("HTTPRoute"), routes_of("GRPCRoute"));
        let tls_routes = routes_of("TLSRoute");
        let gateways = report
            .gateways
            .iter()
            .filter(|g| owned(&g.namespace, &g.name))
            .map(|g| {
                let mut status = serde_json::to_value(g).unwrap();
                if let Some(map) = status.as_object_mut() {
                    for field in ["namespace", "name", "generation"] {
                        map.remove(field);
                    }
                }
                ((g.namespace.clone(), g.name.clone()), status)
            })
            .collect();
        Desired { policies, routes, grpc_routes, tls_routes, gateways }
    }
}

pub struct Writer {
    pub client: kube::Client,
    pub controller_name: String,
    pub policies: ApiResource,
    pub gateways: ApiResource,
    pub routes: ApiResource,
    pub grpc_routes: ApiResource,
    pub tls_routes: ApiResource,
}

/// What was last written (or found already in place), so that an unchanged build writes
/// nothing.
type Written = HashMap<(&'static str, String, String), Value>;

impl Writer {
    pub fn start(self, leader: Leader) -> watch::Sender<Option<Arc<Desired>>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(self.run(rx, leader));
        tx
    }

    async fn run(self, mut rx: watch::Receiver<Option<Arc<Desired>>>, mut leader: Leader) {
        let mut written = Written::new();
        let mut backoff = Duration::from_millis(200);
        loop {
            leader.wait().await;
            let desired = rx.borrow_and_update().clone();
            let failures = match desired {
                Some(desired) => self.write_all(&desired, &leader, &mut written).await,
                None => 0,
            };
            if !leader.is_leader() {
                // Whatever we knew of the live objects may be stale by the time we lead again.
                written.clear();
                continue;
            }
            if failures > 0 {
                tracing::warn!(failures, ?backoff, "status writes failed; retrying");
                let _ = tokio::time::timeout(backoff, rx.changed()).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            backoff = Duration::from_millis(200);
            // Until the next build; and now and then anyway, to restore entries someone removed.
            let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
            if !rx.has_changed().unwrap_or(false) {
                written.clear();
            }
        }
    }

    /// Writes everything that changed; returns how many writes failed.
    async fn write_all(&self, desired: &Desired, leader: &Leader, written: &mut Written) -> usize {
        let (mut failures, mut writes) = (0, 0);
        self.write_changed(desired, leader, written, &mut failures, &mut writes).await;
        if writes > 0 {
            tracing::info!(objects = writes, "status written");
        }
        failures
    }

    async fn write_changed(
        &self,
        desired: &Desired,
        leader: &Leader,
        written: &mut Written,
        failures: &mut usize,
        writes: &mut usize,
    ) {
        let lists = [
            ("BackendTLSPolicy", &self.policies, "ancestors", &desired.policies),
            ("HTTPRoute", &self.routes, "parents", &desired.routes),
            ("GRPCRoute", &self.grpc_routes, "parents", &desired.grpc_routes),
            ("TLSRoute", &self.tls_routes, "parents", &desired.tls_routes),
        ];
        for (kind, resource, field, entries) in lists {
            for ((namespace, name), ours) in entries {
                let value = Value::Array(ours.clone());
                let id = (kind, namespace.clone(), name.clone());
                if written.get(&id) == Some(&value) {
                    continue;
                }
                if !leader.is_leader() {
                    return;
                }
                match self.write_list(resource, namespace, name, field, ours, leader).await {
                    Ok(wrote) => {
                        *writes += usize::from(wrote);
                        written.insert(id, value);
                    }
                    Err(e) => {
                        tracing::warn!(%kind, %namespace, %name, error = %e, "cannot write status");
                        *failures += 1;
                    }
                }
            }
        }
        for ((namespace, name), status) in &desired.gateways {
            let id = ("Gateway", namespace.clone(), name.clone());
            if written.get(&id) == Some(status) {
                continue;
            }
            if !leader.is_leader() {
                return;
            }
            match self.write_gateway(namespace, name, status, leader).await {
                Ok(wrote) => {
                    *writes += usize::from(wrote);
                    written.insert(id, status.clone());
                }
                Err(e) => {
                    tracing::warn!(%namespace, %name, error = %e, "cannot write Gateway status");
                    *failures += 1;
                }
            }
        }
    }

    /// Our entries of `status.<field>`, the others' kept, conditioned on the live
    /// resourceVersion; retried from a fresh read on 409.
    async fn write_list(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        field: &str,
        ours: &[Value],
        leader: &Leader,
    ) -> Result<bool, WriteError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, resource);
        for attempt in 0..5u32 {
            let live = match api.get_status(name).await {
                Ok(live) => live,
                // Deleted meanwhile: nothing to write.
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let entries = live.data["status"][field].as_array().cloned().unwrap_or_default();
            let mine = |e: &Value| e["controllerName"].as_str() == Some(&self.controller_name);
            let live_ours: Vec<Value> = entries.iter().filter(|e| mine(e)).cloned().collect();
            let reference = if field == "ancestors" { "ancestorRef" } else { "parentRef" };
            let ours: Vec<Value> = ours
                .iter()
                .map(|entry| {
                    let mut entry = entry.clone();
                    let before = live_ours.iter().find(|l| l[reference] == entry[reference]);
                    transition_times(&mut entry["conditions"], before.map(|b| &b["conditions"]));
                    entry
                })
                .collect();
            let ours = ours.as_slice();
            if live_ours == ours {
                return Ok(false);
            }
            let mut list: Vec<Value> = entries.into_iter().filter(|e| !mine(e)).collect();
            let room = MAX_ENTRIES.saturating_sub(list.len());
            if room < ours.len() {
                tracing::warn!(%namespace, %name, field, room, wanted = ours.len(), "status list full: writing only what fits");
            }
            list.extend(ours.iter().take(room).cloned());
            let patch = json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": live.metadata.resource_version,
                },
                "status": { field: list },
            });
            if !leader.is_leader() {
                return Ok(false);
            }
            let params = PatchParams::apply(super::FIELD_MANAGER).force();
            match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
                Ok(_) => {
                    tracing::debug!(kind = %resource.kind, %namespace, %name, "status applied");
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(%namespace, %name, attempt, "status conflict; reading again");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(WriteError::Conflicts)
    }

    async fn write_gateway(
        &self,
        namespace: &str,
        name: &str,
        status: &Value,
        leader: &Leader,
    ) -> Result<bool, WriteError> {
        let resource = &self.gateways;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, resource);
        let live = match api.get_status(name).await {
            Ok(live) => live,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut status = status.clone();
        let before = &live.data["status"];
        transition_times(&mut status["conditions"], Some(&before["conditions"]));
        if let Some(listeners) = status["listeners"].as_array_mut() {
            for listener in listeners {
                let previous = before["listeners"]
                    .as_array()
                    .and_then(|l| l.iter().find(|p| p["name"] == listener["name"]));
                transition_times(&mut listener["conditions"], previous.map(|p| &p["conditions"]));
            }
        }
        let status = &status;
        let mut current = live.data["status"].clone();
        if let Some(map) = current.as_object_mut() {
            // Fields we do not write (none today) are not compared.
            map.retain(|k, _| status.get(k).is_some());
        }
        if &current == status || !leader.is_leader() {
            return Ok(false);
        }
        let patch = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": { "name": name, "namespace": namespace },
            "status": status,
        });
        let params = PatchParams::apply(super::FIELD_MANAGER).force();
        api.patch_status(name, &params, &Patch::Apply(&patch)).await?;
        Ok(true)
    }
}

/// Why a status could not be written (logged; the next build tries again).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("conflicts on every attempt")]
    Conflicts,
}

/// Sets each condition's `lastTransitionTime` (required by the API): the previous one when the
/// condition had the same status before, now otherwise.
fn transition_times(conditions: &mut Value, before: Option<&Value>) {
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let Some(conditions) = conditions.as_array_mut() else {
        return;
    };
    for condition in conditions {
        let previous = before
            .and_then(|b| b.as_array())
            .and_then(|b| b.iter().find(|p| p["type"] == condition["type"]))
            .filter(|p| p["status"] == condition["status"])
            .and_then(|p| p.get("lastTransitionTime"))
            .cloned();
        condition["lastTransitionTime"] = previous.unwrap_or_else(|| now.clone().into());
    }
}
