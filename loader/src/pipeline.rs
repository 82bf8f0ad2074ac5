//! From a config directory to policy status (`check`) and on to Envoy resources (`serve`,
//! `render`): the same steps for every command.

use crate::quarantine::RejectionReport;
use crate::resolve::{self, Problem, Resolution};
use crate::source::{ConfigDir, SourceError};
use crate::status::{GatewayClassReport, GatewayReport, PolicyReport, RouteReport};
use crate::xds::translate::{translate, Resources, TranslateOptions};

/// Everything the loader concluded from the input, before any Envoy type.
pub struct Resolved {
    pub resolution: Resolution,
    pub errors: Vec<SourceError>,
}

impl Resolved {
    pub fn problems(&self) -> &[Problem] {
        &self.resolution.problems
    }

    /// `{"policies", "gateways", "routes", "errors", "problems"}`: what `check` prints and
    /// `/status` shows.
    pub fn status_json(&self) -> serde_json::Value {
        let r = &self.resolution;
        status_json(
            &r.policies,
            &r.gateway_classes,
            &r.gateways,
            &r.routes,
            &self.errors,
            &r.problems,
        )
    }

    /// Keeps only what status reports need (`serve` renders `/status` on request, not per build).
    pub fn into_status(self) -> StatusReport {
        let r = self.resolution;
        StatusReport {
            policies: r.policies,
            gateway_classes: r.gateway_classes,
            gateways: r.gateways,
            routes: r.routes,
            errors: self.errors,
            problems: r.problems,
            rejected: Vec::new(),
        }
    }

    /// True when everything parsed, every policy is Accepted and ResolvedRefs, and every route
    /// is Accepted and ResolvedRefs by every parent.
    pub fn is_healthy(&self) -> bool {
        let r = &self.resolution;
        self.errors.is_empty()
            && r.policies.iter().all(|p| p.is_healthy())
            && r.routes.iter().all(|p| p.is_healthy())
    }
}

#[derive(Default)]
pub struct StatusReport {
    pub policies: Vec<PolicyReport>,
    pub gateway_classes: Vec<GatewayClassReport>,
    pub gateways: Vec<GatewayReport>,
    pub routes: Vec<RouteReport>,
    pub errors: Vec<SourceError>,
    pub problems: Vec<Problem>,
    /// Resources Envoy refused (`serve` only).
    pub rejected: Vec<RejectionReport>,
}

impl StatusReport {
    pub fn to_json(&self) -> serde_json::Value {
        status_json(
            &self.policies,
            &self.gateway_classes,
            &self.gateways,
            &self.routes,
            &self.errors,
            &self.problems,
        )
    }

    /// What `/status` serves: [`Self::to_json`] with the snapshot version, as compact JSON text
    /// (pipe it through `jq` to read). `serve` renders it once per build and keeps only the text,
    /// about a third of the reports' size in memory.
    pub fn render(&self, snapshot_version: u64) -> String {
        #[derive(serde::Serialize)]
        struct Document<'a> {
            policies: &'a [PolicyReport],
            #[serde(rename = "gatewayClasses")]
            gateway_classes: &'a [GatewayClassReport],
            gateways: &'a [GatewayReport],
            routes: &'a [RouteReport],
            errors: &'a [SourceError],
            problems: &'a [Problem],
            rejected: &'a [RejectionReport],
            snapshot_version: u64,
        }
        let document = Document {
            policies: &self.policies,
            gateway_classes: &self.gateway_classes,
            gateways: &self.gateways,
            routes: &self.routes,
            errors: &self.errors,
            problems: &self.problems,
            rejected: &self.rejected,
            snapshot_version,
        };
        let mut text = serde_json::to_string(&document).expect("reports serialize");
        text.push('\n');
        text
    }
}

fn status_json(
    policies: &[PolicyReport],
    gateway_classes: &[GatewayClassReport],
    gateways: &[GatewayReport],
    routes: &[RouteReport],
    errors: &[SourceError],
    problems: &[Problem],
) -> serde_json::Value {
    serde_json::json!({
        "policies": policies.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        "gatewayClasses": gateway_classes,
        "gateways": gateways,
        "routes": routes,
        "errors": errors,
        "problems": problems,
    })
}

pub fn resolve(config: &ConfigDir, options: &resolve::Options) -> Resolved {
    let started = std::time::Instant::now();
    let (store, mut errors) = config.store();
    errors.extend(config.errors());
    let stored = started.elapsed();
    let resolution = resolve::resolve(store, options);
    tracing::debug!(?stored, total = ?started.elapsed(), "resolve");
    Resolved { resolution, errors }
}

pub struct Build {
    pub resolved: Resolved,
    pub resources: Resources,
}

/// Resolves and translates into structs (`render`, golden files). `serve` translates through a
/// [`crate::xds::translate::Translator`] instead, which keeps work between builds.
pub fn build(
    config: &ConfigDir,
    resolve_options: &resolve::Options,
    translate_options: &TranslateOptions,
) -> Build {
    let resolved = resolve(config, resolve_options);
    let resources = translate(&resolved.resolution.ir, translate_options);
    Build { resolved, resources }
}
