//! Policy status, shaped as it would be written to Kubernetes (`status.ancestors[]`).

use crate::objects::ObjectKey;
use serde::Serialize;
use std::borrow::Cow;

/// The `controllerName` this loader writes into every ancestor entry.
pub const CONTROLLER_NAME: &str = "backendtls.dev/loader";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(serialize_with = "status_string")]
    pub status: bool,
    pub reason: &'static str,
    /// Most messages are fixed texts, repeated in every route's and policy's conditions.
    pub message: Cow<'static, str>,
    pub observed_generation: i64,
}

fn status_string<S: serde::Serializer>(status: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *status { "True" } else { "False" })
}

impl Condition {
    pub fn new(
        kind: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Condition { kind, status, reason, message: message.into(), observed_generation: 1 }
    }

    pub fn observed(mut self, generation: i64) -> Self {
        self.observed_generation = generation;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    pub group: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl AncestorRef {
    pub fn gateway(key: &ObjectKey) -> Self {
        AncestorRef {
            group: "gateway.networking.k8s.io",
            kind: "Gateway",
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }

    /// Used for policies no Gateway reaches yet: they report on the Service they target.
    pub fn service(key: &ObjectKey) -> Self {
        AncestorRef {
            group: "",
            kind: "Service",
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }
}

/// Everything the loader concluded about one BackendTLSPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    pub namespace: String,
    pub name: String,
    /// Gateways whose routes reach a port the policy targets, or else the targeted Services.
    pub ancestors: Vec<AncestorRef>,
    /// `Accepted` and `ResolvedRefs`, the same for every ancestor.
    pub conditions: Vec<Condition>,
}

impl PolicyReport {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// The Kubernetes form: `{namespace, name, status: {ancestors: [{ancestorRef, controllerName,
    /// conditions}]}}` (see the `Serialize` impl).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("reports serialize")
    }

    pub fn is_healthy(&self) -> bool {
        self.conditions.iter().all(|c| c.status)
    }
}

/// What the loader concluded about one Gateway, flat: the fields of its `status` beside its
/// namespace and name (`conditions`, `addresses`, `listeners`), and the `generation` they observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayReport {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// One entry per spec listener, in spec order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerReport>,
}

/// What the loader concluded about one GatewayClass of its controller: `Accepted`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayClassReport {
    pub name: String,
    pub generation: i64,
    pub conditions: Vec<Condition>,
}

/// `status.addresses[]` of a Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

/// `status.listeners[]` of a Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerReport {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteGroupKind {
    pub group: &'static str,
    pub kind: &'static str,
}

/// What the loader concluded about one route (HTTPRoute, GRPCRoute or TLSRoute), flat like
/// [`GatewayReport`]: `parents` is its `status.parents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub parents: Vec<RouteParentStatus>,
}

/// One `status.parents[]` entry: one per parentRef of the route that names a Gateway this
/// loader serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: &'static str,
    pub conditions: Vec<Condition>,
}

/// A route's parentRef as status echoes it: group and kind always explicit, as the API server
/// defaults them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Always `gateway.networking.k8s.io` and `Gateway`: only parentRefs to Gateways get an entry.
    pub group: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl RouteReport {
    pub fn is_healthy(&self) -> bool {
        self.parents.iter().all(|p| p.conditions.iter().all(|c| c.status))
    }
}

/// Written straight to JSON text (`serve` renders thousands of reports per build for `/status`,
/// without building a `serde_json::Value` tree first).
impl Serialize for PolicyReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Ancestor<'a> {
            ancestor_ref: &'a AncestorRef,
            controller_name: &'static str,
            conditions: &'a [Condition],
        }
        #[derive(Serialize)]
        struct Status<'a> {
            ancestors: Vec<Ancestor<'a>>,
        }
        let ancestors = self
            .ancestors
            .iter()
            .map(|a| Ancestor {
                ancestor_ref: a,
                controller_name: CONTROLLER_NAME,
                conditions: &self.conditions,
            })
            .collect();
        let mut out = s.serialize_struct("PolicyReport", 3)?;
        out.serialize_field("namespace", &self.namespace)?;
        out.serialize_field("name", &self.name)?;
        out.serialize_field("status", &Status { ancestors })?;
        out.end()
    }
}
