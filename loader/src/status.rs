//! Policy status, shaped as it would be written to Kubernetes (`status.ancestors[]`).

use crate::store::ObjectKey;
use serde::Serialize;
use std::collections::BTreeSet;

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
    pub message: String,
    pub observed_generation: i64,
}

fn status_string<S: serde::Serializer>(status: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *status { "True" } else { "False" })
}

impl Condition {
    pub fn new(kind: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Condition { kind, status, reason, message, observed_generation: 1 }
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyAncestor {
    #[serde(rename = "ancestorRef")]
    pub ancestor_ref: AncestorRef,
}

impl PolicyAncestor {
    pub fn for_gateways(gateways: &BTreeSet<ObjectKey>) -> Vec<PolicyAncestor> {
        gateways
            .iter()
            .take(16) // the API allows at most 16 ancestors
            .map(|g| PolicyAncestor {
                ancestor_ref: AncestorRef {
                    group: "gateway.networking.k8s.io",
                    kind: "Gateway",
                    namespace: g.namespace.clone(),
                    name: g.name.clone(),
                },
            })
            .collect()
    }
}

/// Everything the loader concluded about one BackendTLSPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReport {
    pub namespace: String,
    pub name: String,
    /// Gateways whose routes reach a port the policy governs.
    pub ancestors: Vec<PolicyAncestor>,
    /// `Accepted` and `ResolvedRefs`, the same for every ancestor.
    pub conditions: Vec<Condition>,
}

impl PolicyReport {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// The Kubernetes form: `{namespace, name, status: {ancestors: [{ancestorRef, controllerName,
    /// conditions}]}}`. A policy no Gateway reaches yet still reports its conditions, under an
    /// entry without ancestorRef, so that mistakes show before the first route uses the Service.
    pub fn to_json(&self) -> serde_json::Value {
        let ancestors: Vec<serde_json::Value> = if self.ancestors.is_empty() {
            vec![serde_json::json!({
                "controllerName": CONTROLLER_NAME,
                "conditions": self.conditions,
            })]
        } else {
            self.ancestors
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "ancestorRef": a.ancestor_ref,
                        "controllerName": CONTROLLER_NAME,
                        "conditions": self.conditions,
                    })
                })
                .collect()
        };
        serde_json::json!({
            "namespace": self.namespace,
            "name": self.name,
            "status": { "ancestors": ancestors },
        })
    }
}
