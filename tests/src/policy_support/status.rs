//! Reading `/status` (and `check -o json`) as the Kubernetes status it stands for.

use serde_json::Value;

use super::*;
use crate::loader::Loader;
use crate::wait::wait_until;

/// One condition as reported, with the ancestor entry it came from.
#[derive(Clone, Debug)]
pub struct Condition {
    pub ancestor_ref: Value,
    pub controller_name: Value,
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Value,
}

/// The loader's status document (`GET /status`, or `check -o json`).
#[derive(Clone, Debug)]
pub struct Status(pub Value);

impl Status {
    /// The policy entry `{namespace, name, status}` for [`NS`]/`name`.
    pub fn policy(&self, name: &str) -> Result<&Value, String> {
        self.0["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|policy| policy["namespace"] == NS && policy["name"] == name)
            .ok_or_else(|| format!("policy {NS}/{name} is not in the status: {}", self.0))
    }

    pub fn ancestors(&self, name: &str) -> Result<Vec<Value>, String> {
        let policy = self.policy(name)?;
        policy["status"]["ancestors"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("policy {NS}/{name} has no status.ancestors array: {policy}"))
    }

    /// Every condition of every ancestor entry of policy `name`.
    pub fn conditions(&self, name: &str) -> Result<Vec<Condition>, String> {
        let mut conditions = Vec::new();
        for ancestor in self.ancestors(name)? {
            for condition in ancestor["conditions"].as_array().into_iter().flatten() {
                conditions.push(Condition {
                    ancestor_ref: ancestor["ancestorRef"].clone(),
                    controller_name: ancestor["controllerName"].clone(),
                    kind: text(&condition["type"]),
                    status: text(&condition["status"]),
                    reason: text(&condition["reason"]),
                    message: text(&condition["message"]),
                    observed_generation: condition["observedGeneration"].clone(),
                });
            }
        }
        Ok(conditions)
    }

    /// Policy `name`'s condition `kind` in its ancestor entry for Gateway [`NS`]/[`GATEWAY`],
    /// the entry the conformance suite reads.
    pub fn gateway_condition(&self, name: &str, kind: &str) -> Result<Condition, String> {
        let conditions = self.conditions(name)?;
        conditions
            .iter()
            .find(|condition| {
                condition.kind == kind && is_gateway_ref(&condition.ancestor_ref, GATEWAY)
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "policy {NS}/{name} has no {kind} condition for Gateway {GATEWAY}: {}",
                    self.policy(name).map(Value::to_string).unwrap_or_default()
                )
            })
    }

    /// The `gateways` entry for [`NS`]/`name`.
    pub fn gateway(&self, name: &str) -> Result<&Value, String> {
        self.0["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|gateway| gateway["namespace"] == NS && gateway["name"] == name)
            .ok_or_else(|| format!("gateway {NS}/{name} is not in the status gateways: {}", self.0))
    }

    /// Gateway `name`'s condition `kind`.
    pub fn gateway_status_condition(&self, name: &str, kind: &str) -> Result<Condition, String> {
        let gateway = self.gateway(name)?;
        gateway["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|condition| condition["type"] == kind)
            .map(|condition| Condition {
                ancestor_ref: Value::Null,
                controller_name: Value::Null,
                kind: kind.to_string(),
                status: text(&condition["status"]),
                reason: text(&condition["reason"]),
                message: text(&condition["message"]),
                observed_generation: condition["observedGeneration"].clone(),
            })
            .ok_or_else(|| format!("gateway {NS}/{name} has no {kind} condition: {gateway}"))
    }
}

fn text(value: &Value) -> String {
    value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string())
}

/// Whether `ancestor_ref` names Gateway [`NS`]/`gateway` (group and namespace may be defaulted).
pub fn is_gateway_ref(ancestor_ref: &Value, gateway: &str) -> bool {
    ancestor_ref["name"] == gateway
        && (ancestor_ref["kind"] == "Gateway" || ancestor_ref["kind"].is_null())
        && (ancestor_ref["namespace"] == NS || ancestor_ref["namespace"].is_null())
}

/// `Ok` when `condition` has `status` and (if given) `reason`; else a message saying what it has.
pub fn expect_condition(
    condition: &Condition,
    status: &str,
    reason: Option<&str>,
) -> Result<(), String> {
    let reason_ok = reason.is_none_or(|reason| condition.reason == reason);
    if condition.status == status && reason_ok {
        Ok(())
    } else {
        Err(format!(
            "expected {} {status}{}, got {} {} (message {:?})",
            condition.kind,
            reason.map(|r| format!("/{r}")).unwrap_or_default(),
            condition.status,
            condition.reason,
            condition.message
        ))
    }
}

/// Polls the loader's `/status` until policy `name` has condition `kind` = `status` (with `reason`
/// when given) under Gateway [`GATEWAY`]; returns that condition.
pub fn wait_for_policy_condition(
    loader: &Loader,
    name: &str,
    kind: &str,
    status: &str,
    reason: Option<&str>,
) -> Condition {
    wait_until(
        &format!(
            "policy {NS}/{name} to report {kind}={status}{} under Gateway {GATEWAY}",
            reason.map(|r| format!("/{r}")).unwrap_or_default()
        ),
        CONVERGE_TIMEOUT,
        || {
            let status_json = Status(loader.status());
            let condition = status_json.gateway_condition(name, kind)?;
            expect_condition(&condition, status, reason).map(|()| condition)
        },
    )
}
