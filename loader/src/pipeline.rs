//! One pass from a config directory to Envoy resources, shared by `serve`, `render` and `check`.

use crate::resolve::{self, Problem, Resolution};
use crate::source::{ConfigDir, SourceError};
use crate::xds::translate::{self, Resources, TranslateOptions};

pub struct Build {
    pub resolution: Resolution,
    pub errors: Vec<SourceError>,
    pub resources: Resources,
}

impl Build {
    pub fn problems(&self) -> &[Problem] {
        &self.resolution.problems
    }

    /// `{"policies": [...], "errors": [...], "problems": [...]}`, the shape of `/status`.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "policies": self.resolution.policies.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
            "gateways": self.resolution.gateways,
            "errors": self.errors,
            "problems": self.resolution.problems,
        })
    }
}

pub fn build(
    config: &ConfigDir,
    resolve_options: &resolve::Options,
    translate_options: &TranslateOptions,
) -> Build {
    let started = std::time::Instant::now();
    let (store, mut errors) = config.store();
    errors.extend(config.errors());
    let stored = started.elapsed();
    let resolution = resolve::resolve(&store, resolve_options);
    let resolved = started.elapsed();
    let resources = translate::translate(&resolution.ir, translate_options);
    tracing::debug!(?stored, ?resolved, total = ?started.elapsed(), "build phases");
    Build { resolution, errors, resources }
}
