//! A typed view of the loader's `/status` (and `check -o json`) as the Gateway API status it
//! stands for, and the upstream status helpers' rules (http-core.md §3.3) on top of it.
//!
//! # The shape the loader is expected to emit
//!
//! `policies[]` is what the loader emits today. `gateways[]` entries today carry `namespace`,
//! `name` and `conditions`; `generation`, `addresses` and `listeners` are expected from issue 14,
//! as is `routes[]`. Route and Gateway entries are flat: the fields of the object's `status` sit
//! beside `namespace` and `name` (as `gateways[].conditions` already does); policies keep
//! `status.ancestors`. `generation` is the object's `metadata.generation` as the loader read it
//! (the upstream helpers compare every `observedGeneration` with it).
//!
//! ```json
//! {
//!   "gateways": [{
//!     "namespace": "gateway-conformance-infra", "name": "same-namespace", "generation": 1,
//!     "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
//!                     "message": "…", "observedGeneration": 1}],
//!     "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
//!     "listeners": [{
//!       "name": "http",
//!       "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
//!       "attachedRoutes": 1,
//!       "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed",
//!                       "message": "…", "observedGeneration": 1}]
//!     }]
//!   }],
//!   "routes": [{
//!     "kind": "HTTPRoute", "namespace": "gateway-conformance-infra", "name": "matching",
//!     "generation": 1,
//!     "parents": [{
//!       "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
//!                     "namespace": "gateway-conformance-infra", "name": "same-namespace",
//!                     "sectionName": "http"},
//!       "controllerName": "backendtls.dev/loader",
//!       "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
//!                       "message": "…", "observedGeneration": 1}]
//!     }]
//!   }],
//!   "policies": [{
//!     "namespace": "…", "name": "…",
//!     "status": {"ancestors": [{"ancestorRef": {…}, "controllerName": "…",
//!                               "conditions": […]}]}
//!   }]
//! }
//! ```
//!
//! Fields the view does not know are ignored, so the loader may add more.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::loader::Loader;
use crate::wait::wait_until;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The upstream status helpers' budget (`HTTPRouteMustHaveCondition`,
/// `GatewayStatusMustHaveListeners`).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

/// A condition an upstream helper waits for: type, status, and reason unless any will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub kind: String,
    pub status: bool,
    pub reason: Option<String>,
}

impl Want {
    pub fn new(kind: &str, status: bool, reason: Option<&str>) -> Want {
        Want { kind: kind.into(), status, reason: reason.map(str::to_string) }
    }

    /// `kind=True`, reason `kind` (e.g. `Accepted`/`Accepted`, `ResolvedRefs`/`ResolvedRefs`).
    pub fn true_(kind: &str) -> Want {
        Want::new(kind, true, Some(kind))
    }

    /// `kind=True`, any reason.
    pub fn true_any(kind: &str) -> Want {
        Want::new(kind, true, None)
    }

    pub fn false_(kind: &str, reason: &str) -> Want {
        Want::new(kind, false, Some(reason))
    }

    /// `kind=False`, any reason.
    pub fn false_any(kind: &str) -> Want {
        Want::new(kind, false, None)
    }

    fn matches(&self, condition: &Condition) -> bool {
        condition.kind == self.kind
            && condition.status == if self.status { "True" } else { "False" }
            && self.reason.as_ref().is_none_or(|reason| condition.reason == *reason)
    }
}

/// `Ok` when `conditions` contain one matching `want`; else what they hold.
pub fn has_condition(conditions: &[Condition], want: &Want) -> Result<(), String> {
    if conditions.iter().any(|c| want.matches(c)) {
        return Ok(());
    }
    let held: Vec<String> = conditions
        .iter()
        .map(|c| format!("{}={} {} ({:?})", c.kind, c.status, c.reason, c.message))
        .collect();
    Err(format!(
        "no condition {}={}{}; conditions: [{}]",
        want.kind,
        if want.status { "True" } else { "False" },
        want.reason.as_ref().map(|r| format!(" {r}")).unwrap_or_default(),
        held.join(", ")
    ))
}

/// `Ok` when every condition's `observedGeneration` equals `generation` (upstream's "latest
/// conditions"), which the entry must report.
pub fn at_generation(conditions: &[Condition], generation: Option<i64>) -> Result<(), String> {
    let generation = generation.ok_or("the status entry has no generation")?;
    match conditions.iter().find(|c| c.observed_generation != Some(generation)) {
        None => Ok(()),
        Some(stale) => Err(format!(
            "condition {} has observedGeneration {:?}, metadata.generation is {generation}",
            stale.kind, stale.observed_generation
        )),
    }
}

/// A `ParentReference` as echoed in route status; group and kind must be explicit there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// One `RouteStatus.parents[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One `routes[]` entry: an HTTPRoute (or GRPCRoute, TLSRoute) and its status.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

impl RouteStatus {
    /// The parent entry for Gateway `namespace`/`name` as the upstream route helpers pick it:
    /// `parentRef.name` equal and `parentRef.namespace` unset or equal.
    pub fn parent(&self, namespace: &str, name: &str) -> Result<&RouteParentStatus, String> {
        self.parents
            .iter()
            .find(|p| {
                p.parent_ref.name == name
                    && p.parent_ref.namespace.as_deref().is_none_or(|ns| ns == namespace)
            })
            .ok_or_else(|| {
                format!(
                    "{} {}/{} has no parent entry for Gateway {namespace}/{name}: {:?}",
                    self.kind, self.namespace, self.name, self.parents
                )
            })
    }

    /// Every parent's conditions at the route's generation (`HTTPRouteMustHaveLatestConditions`).
    pub fn at_latest_generation(&self) -> Result<(), String> {
        self.parents
            .iter()
            .try_for_each(|p| at_generation(&p.conditions, self.generation))
            .map_err(|e| format!("{} {}/{}: {e}", self.kind, self.namespace, self.name))
    }

    /// Route half of `GatewayAndHTTPRoutesMustBeAccepted`: a parent entry with explicit group
    /// `gateway.networking.k8s.io` and kind `Gateway`, name `gateway`, namespace present (it may be
    /// omitted only when the route is in the Gateway's namespace), our `controller`, and
    /// `Accepted=True` reason `Accepted`; conditions at the latest generation.
    pub fn accepted_by(
        &self,
        namespace: &str,
        gateway: &str,
        controller: &str,
    ) -> Result<(), String> {
        self.at_latest_generation()?;
        let accepted = self.parents.iter().find(|p| {
            let r = &p.parent_ref;
            let namespace_ok = match &r.namespace {
                Some(ns) => ns == namespace,
                None => self.namespace == namespace,
            };
            r.group.as_deref() == Some(GATEWAY_GROUP)
                && r.kind.as_deref() == Some("Gateway")
                && r.name == gateway
                && namespace_ok
                && p.controller_name == controller
                && has_condition(&p.conditions, &Want::true_("Accepted")).is_ok()
        });
        accepted.map(|_| ()).ok_or_else(|| {
            format!(
                "{} {}/{} is not Accepted by Gateway {namespace}/{gateway} (explicit group/kind, \
                 controller {controller}): parents {:?}",
                self.kind, self.namespace, self.name, self.parents
            )
        })
    }

    /// `HTTPRouteMustHaveCondition` for the parent entry of Gateway `namespace`/`gateway`.
    pub fn condition(&self, namespace: &str, gateway: &str, want: &Want) -> Result<(), String> {
        self.at_latest_generation()?;
        let parent = self.parent(namespace, gateway)?;
        has_condition(&parent.conditions, want).map_err(|e| {
            format!(
                "{} {}/{} under {namespace}/{gateway}: {e}",
                self.kind, self.namespace, self.name
            )
        })
    }

    /// `HTTPRouteMustHaveNoAcceptedParents` (one poll): no parents, or exactly one whose
    /// conditions include `Accepted=False`. (Upstream accepts "no parents" only when seen twice in
    /// a row a second apart; [`wait_for`] callers get that by polling.)
    pub fn has_no_accepted_parents(&self) -> Result<(), String> {
        match self.parents.as_slice() {
            [] => Ok(()),
            [only] if has_condition(&only.conditions, &Want::false_any("Accepted")).is_ok() => {
                Ok(())
            }
            parents => Err(format!(
                "{} {}/{} should have no accepted parent: {parents:?}",
                self.kind, self.namespace, self.name
            )),
        }
    }
}

/// `RouteGroupKind`; an absent group means `gateway.networking.k8s.io`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RouteGroupKind {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
}

/// One `GatewayStatus.listeners[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    #[serde(default)]
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayAddress {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub value: String,
}

/// One `gateways[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// What `GatewayStatusMustHaveListeners` expects of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedListener {
    pub name: String,
    /// Kinds in group `gateway.networking.k8s.io` that must be supported; empty: the listener must
    /// support none.
    pub supported_kinds: Vec<String>,
    pub attached_routes: i32,
    /// Must be among the listener's conditions.
    pub conditions: Vec<Want>,
}

impl ExpectedListener {
    /// A listener supporting HTTPRoute, with `attached_routes` routes and `Accepted`,
    /// `ResolvedRefs` and `Programmed` True (any reason).
    pub fn healthy_http(name: &str, attached_routes: i32) -> ExpectedListener {
        ExpectedListener {
            name: name.into(),
            supported_kinds: vec!["HTTPRoute".into()],
            attached_routes,
            conditions: vec![
                Want::true_any("Accepted"),
                Want::true_any("ResolvedRefs"),
                Want::true_any("Programmed"),
            ],
        }
    }
}

impl GatewayStatus {
    pub fn listener(&self, name: &str) -> Result<&ListenerStatus, String> {
        self.listeners.iter().find(|l| l.name == name).ok_or_else(|| {
            format!(
                "Gateway {}/{} has no listener status {name}: {:?}",
                self.namespace, self.name, self.listeners
            )
        })
    }

    /// The Gateway's own conditions at its generation (`GatewayMustHaveLatestConditions`).
    pub fn at_latest_generation(&self) -> Result<(), String> {
        at_generation(&self.conditions, self.generation)
            .map_err(|e| format!("Gateway {}/{}: {e}", self.namespace, self.name))
    }

    /// `GatewayMustHaveCondition`.
    pub fn condition(&self, want: &Want) -> Result<(), String> {
        self.at_latest_generation()?;
        has_condition(&self.conditions, want)
            .map_err(|e| format!("Gateway {}/{}: {e}", self.namespace, self.name))
    }

    /// The first address with a `type` (`WaitForGatewayAddress` uses its value as the IP).
    pub fn address(&self) -> Result<&str, String> {
        self.addresses
            .iter()
            .find(|a| a.kind.as_deref().is_some_and(|k| !k.is_empty()))
            .map(|a| a.value.as_str())
            .ok_or_else(|| {
                format!(
                    "Gateway {}/{} has no typed address: {:?}",
                    self.namespace, self.name, self.addresses
                )
            })
    }

    /// Gateway half of `GatewayAndHTTPRoutesMustBeAccepted`: a typed address, and every listener
    /// `ResolvedRefs`, `Accepted` and `Programmed` True (any reason).
    pub fn listeners_ready(&self) -> Result<(), String> {
        self.address()?;
        for listener in &self.listeners {
            for kind in ["ResolvedRefs", "Accepted", "Programmed"] {
                has_condition(&listener.conditions, &Want::true_any(kind)).map_err(|e| {
                    format!(
                        "Gateway {}/{} listener {}: {e}",
                        self.namespace, self.name, listener.name
                    )
                })?;
            }
        }
        Ok(())
    }

    /// `GatewayStatusMustHaveListeners`: conditions at the latest generation, exactly as many
    /// listener statuses as expected, and each expected one found by name with its kinds,
    /// attached route count and conditions.
    pub fn has_listeners(&self, expected: &[ExpectedListener]) -> Result<(), String> {
        self.at_latest_generation()?;
        let context = || format!("Gateway {}/{}", self.namespace, self.name);
        if self.listeners.len() != expected.len() {
            return Err(format!(
                "{}: {} listener statuses, expected {}: {:?}",
                context(),
                self.listeners.len(),
                expected.len(),
                self.listeners
            ));
        }
        for want in expected {
            let listener = self.listener(&want.name)?;
            let supports = |kind: &str| {
                listener.supported_kinds.iter().any(|k| {
                    k.kind == kind && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                })
            };
            if want.supported_kinds.is_empty() && !listener.supported_kinds.is_empty() {
                return Err(format!(
                    "{} listener {}: supportedKinds should be empty: {:?}",
                    context(),
                    want.name,
                    listener.supported_kinds
                ));
            }
            if let Some(missing) = want.supported_kinds.iter().find(|kind| !supports(kind)) {
                return Err(format!(
                    "{} listener {}: supportedKinds lack {missing}: {:?}",
                    context(),
                    want.name,
                    listener.supported_kinds
                ));
            }
            if listener.attached_routes != want.attached_routes {
                return Err(format!(
                    "{} listener {}: attachedRoutes {}, expected {}",
                    context(),
                    want.name,
                    listener.attached_routes,
                    want.attached_routes
                ));
            }
            for condition in &want.conditions {
                has_condition(&listener.conditions, condition)
                    .map_err(|e| format!("{} listener {}: {e}", context(), want.name))?;
            }
        }
        Ok(())
    }
}

/// One `policies[]` entry (BackendTLSPolicy), Kubernetes-shaped under `status.ancestors`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub generation: Option<i64>,
    pub status: PolicyAncestors,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PolicyAncestors {
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: ParentRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl PolicyStatus {
    /// `BackendTLSPolicyMustHaveCondition` (one poll): the ancestor entry for Gateway
    /// `namespace`/`gateway` (namespace unset or equal) holds `want`. Every ancestor's conditions
    /// must be at `generation` (the policy's `metadata.generation`; the entry's own when `None`).
    pub fn condition(
        &self,
        namespace: &str,
        gateway: &str,
        generation: Option<i64>,
        want: &Want,
    ) -> Result<(), String> {
        let context = || format!("BackendTLSPolicy {}/{}", self.namespace, self.name);
        for ancestor in &self.status.ancestors {
            at_generation(&ancestor.conditions, generation.or(self.generation))
                .map_err(|e| format!("{}: {e}", context()))?;
        }
        let ancestor = self
            .status
            .ancestors
            .iter()
            .find(|a| {
                a.ancestor_ref.name == gateway
                    && a.ancestor_ref.namespace.as_deref().is_none_or(|ns| ns == namespace)
            })
            .ok_or_else(|| {
                format!(
                    "{}: no ancestor entry for Gateway {namespace}/{gateway}: {:?}",
                    context(),
                    self.status.ancestors
                )
            })?;
        has_condition(&ancestor.conditions, want).map_err(|e| format!("{}: {e}", context()))
    }
}

/// The whole status document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    #[serde(default)]
    pub gateways: Vec<GatewayStatus>,
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    #[serde(default)]
    pub policies: Vec<PolicyStatus>,
    /// `/status` only.
    #[serde(default, rename = "snapshot_version")]
    pub snapshot_version: Option<u64>,
}

impl StatusDocument {
    pub fn parse(json: &Value) -> Result<StatusDocument, String> {
        StatusDocument::deserialize(json)
            .map_err(|e| format!("status does not have the expected shape: {e}: {json}"))
    }

    /// The loader's `/status`, now.
    pub fn of(loader: &Loader) -> Result<StatusDocument, String> {
        StatusDocument::parse(&loader.status())
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Result<&GatewayStatus, String> {
        self.gateways
            .iter()
            .find(|g| g.namespace == namespace && g.name == name)
            .ok_or_else(|| format!("Gateway {namespace}/{name} is not in the status"))
    }

    /// Route `kind` (e.g. `HTTPRoute`) `namespace`/`name`.
    pub fn route(&self, kind: &str, namespace: &str, name: &str) -> Result<&RouteStatus, String> {
        self.routes
            .iter()
            .find(|r| r.kind == kind && r.namespace == namespace && r.name == name)
            .ok_or_else(|| format!("{kind} {namespace}/{name} is not in the status"))
    }

    pub fn http_route(&self, namespace: &str, name: &str) -> Result<&RouteStatus, String> {
        self.route("HTTPRoute", namespace, name)
    }

    pub fn policy(&self, namespace: &str, name: &str) -> Result<&PolicyStatus, String> {
        self.policies
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| format!("BackendTLSPolicy {namespace}/{name} is not in the status"))
    }

    /// `GatewayAndHTTPRoutesMustBeAccepted(gateway, routes)`: the Gateway has a typed address and
    /// every listener is ResolvedRefs, Accepted and Programmed; each HTTPRoute (`namespace`,
    /// `name`) is Accepted by it under `controller`. Returns the Gateway's address.
    pub fn gateway_and_routes_accepted(
        &self,
        gateway: (&str, &str),
        routes: &[(&str, &str)],
        controller: &str,
    ) -> Result<String, String> {
        let (namespace, name) = gateway;
        let status = self.gateway(namespace, name)?;
        status.listeners_ready()?;
        for (route_namespace, route) in routes {
            self.http_route(route_namespace, route)?.accepted_by(namespace, name, controller)?;
        }
        Ok(status.address()?.to_string())
    }
}

/// Polls the loader's `/status` until `check` passes (upstream helpers poll every 100 ms for up
/// to 60 s); panics with the last difference.
pub fn wait_for<T>(
    loader: &Loader,
    what: &str,
    mut check: impl FnMut(&StatusDocument) -> Result<T, String>,
) -> T {
    wait_until(what, STATUS_TIMEOUT, || StatusDocument::of(loader).and_then(|doc| check(&doc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn condition(kind: &str, status: &str, reason: &str) -> Value {
        json!({"type": kind, "status": status, "reason": reason, "message": "",
               "observedGeneration": 2})
    }

    fn gateway_ref() -> Value {
        json!({"group": GATEWAY_GROUP, "kind": "Gateway", "name": "gw"})
    }

    fn route(
        namespace: &str,
        name: &str,
        generation: i64,
        parent: Value,
        conditions: Value,
    ) -> Value {
        json!({"kind": "HTTPRoute", "namespace": namespace, "name": name, "generation": generation,
               "parents": [{"parentRef": parent, "controllerName": "c", "conditions": conditions}]})
    }

    fn document() -> StatusDocument {
        let accepted = json!([condition("Accepted", "True", "Accepted")]);
        let refused = json!([condition("Accepted", "False", "NoMatchingListenerHostname")]);
        let listener_conditions = json!([
            condition("Accepted", "True", "Accepted"),
            condition("ResolvedRefs", "True", "ResolvedRefs"),
            condition("Programmed", "True", "Programmed"),
        ]);
        StatusDocument::parse(&json!({
            "gateways": [{
                "namespace": "infra", "name": "gw", "generation": 2,
                "conditions": [condition("Accepted", "True", "Accepted")],
                "addresses": [{"type": "IPAddress", "value": "127.0.0.2"}],
                "listeners": [{"name": "http", "supportedKinds": [{"kind": "HTTPRoute"}],
                               "attachedRoutes": 1, "conditions": listener_conditions}]
            }],
            "routes": [
                route("infra", "ok", 2, gateway_ref(), accepted.clone()),
                route("infra", "implicit-kind", 2, json!({"name": "gw"}), accepted.clone()),
                route("web", "cross", 2, gateway_ref(), accepted.clone()),
                route("infra", "stale", 3, gateway_ref(), accepted),
                route("infra", "refused", 2, gateway_ref(), refused),
            ]
        }))
        .unwrap()
    }

    #[test]
    fn gara_needs_explicit_group_kind_namespace_and_latest_generation() {
        let doc = document();
        assert_eq!(
            doc.gateway_and_routes_accepted(("infra", "gw"), &[("infra", "ok")], "c").unwrap(),
            "127.0.0.2"
        );
        for route in ["implicit-kind", "stale", "refused"] {
            assert!(
                doc.gateway_and_routes_accepted(("infra", "gw"), &[("infra", route)], "c").is_err(),
                "{route}"
            );
        }
        // A route in another namespace must name the Gateway's namespace.
        assert!(doc
            .gateway_and_routes_accepted(("infra", "gw"), &[("web", "cross")], "c")
            .is_err());
        assert!(doc
            .gateway_and_routes_accepted(("infra", "gw"), &[("infra", "ok")], "other")
            .is_err());
    }

    #[test]
    fn route_conditions_and_unaccepted_parents() {
        let doc = document();
        let refused = doc.http_route("infra", "refused").unwrap();
        refused
            .condition("infra", "gw", &Want::false_("Accepted", "NoMatchingListenerHostname"))
            .unwrap();
        assert!(refused.condition("infra", "gw", &Want::true_("Accepted")).is_err());
        refused.has_no_accepted_parents().unwrap();
        assert!(doc.http_route("infra", "ok").unwrap().has_no_accepted_parents().is_err());
    }

    #[test]
    fn listeners_compare_count_kinds_routes_and_conditions() {
        let gateway = document().gateway("infra", "gw").unwrap().clone();
        gateway.has_listeners(&[ExpectedListener::healthy_http("http", 1)]).unwrap();
        assert!(gateway.has_listeners(&[ExpectedListener::healthy_http("http", 0)]).is_err());
        assert!(gateway
            .has_listeners(&[
                ExpectedListener::healthy_http("http", 1),
                ExpectedListener::healthy_http("https", 0)
            ])
            .is_err());
        let mut no_kinds = ExpectedListener::healthy_http("http", 1);
        no_kinds.supported_kinds.clear();
        assert!(gateway.has_listeners(&[no_kinds]).is_err());
    }

    #[test]
    fn todays_loader_status_parses() {
        // What the loader emits before issue 14: gateways without generation or listeners.
        let doc = StatusDocument::parse(&json!({
            "policies": [{"namespace": "n", "name": "p", "status": {"ancestors": [{
                "ancestorRef": {"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": "n",
                                "name": "gw"},
                "controllerName": "c",
                "conditions": [condition("Accepted", "True", "Accepted")]}]}}],
            "gateways": [{"namespace": "n", "name": "gw", "conditions": []}],
            "errors": [], "problems": [], "snapshot_version": 3
        }))
        .unwrap();
        doc.policy("n", "p")
            .unwrap()
            .condition("n", "gw", Some(2), &Want::true_("Accepted"))
            .unwrap();
        assert!(doc
            .policy("n", "p")
            .unwrap()
            .condition("n", "gw", Some(3), &Want::true_("Accepted"))
            .is_err());
        assert!(doc.gateway("n", "gw").unwrap().listeners_ready().is_err(), "no address yet");
    }
}
