//! Static Envoy configs for tests, built from typed values instead of indentation-sensitive YAML
//! text: [`StaticBootstrap`] (one HTTP listener, routes by path prefix, HTTP filters, clusters)
//! and the pieces the tests combine ([`static_cluster`], [`upstream_tls`], [`dynamic_module_filter`],
//! [`wasm_filter`], ...). The result is JSON, which Envoy reads as the YAML subset it is.

use std::path::Path;

use serde_json::{json, Value};

const TYPE_PREFIX: &str = "type.googleapis.com/";

/// `{"@type": type.googleapis.com/<name>, ...fields}`.
pub fn typed(name: &str, fields: Value) -> Value {
    let mut object = json!({ "@type": format!("{TYPE_PREFIX}{name}") });
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    object
}

/// A `google.protobuf.StringValue` (the filters' and the validator's configuration).
pub fn string_value(value: &str) -> Value {
    typed("google.protobuf.StringValue", json!({ "value": value }))
}

/// The backendtls HTTP filter, dynamic-module build, with `config_json` as its configuration.
pub fn dynamic_module_filter(module_name: &str, module: &Path, config_json: &str) -> Value {
    json!({
        "name": "backendtls",
        "typed_config": typed(
            "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            json!({
                "dynamic_module_config": {
                    "name": module_name,
                    "module": { "local": { "filename": module } },
                    "metrics_namespace": "backendtls",
                },
                "filter_name": "backendtls",
                "filter_config": string_value(config_json),
            }),
        ),
    })
}

/// The backendtls HTTP filter, Wasm build (V8), with `config_json` as its configuration.
pub fn wasm_filter(module: &Path, config_json: &str) -> Value {
    json!({
        "name": "backendtls",
        "typed_config": typed(
            "envoy.extensions.filters.http.wasm.v3.Wasm",
            json!({ "config": {
                "name": "backendtls",
                "root_id": "backendtls",
                "configuration": string_value(config_json),
                "vm_config": {
                    "vm_id": "backendtls",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module } },
                },
            }}),
        ),
    })
}

/// A `STATIC` cluster `name` with one endpoint, 127.0.0.1:`port`, and a 2 s connect timeout.
pub fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port }
            }}}]}],
        },
    })
}

/// The `backendtls` cluster metadata the loader writes (`state`, `policy`, `hostname`, no SANs),
/// plus `extra` fields (e.g. `reason`, `identity_checked_by`).
pub fn backendtls_metadata(policy: &str, hostname: &str, state: &str, extra: Value) -> Value {
    let mut fields = json!({
        "policy": policy,
        "hostname": hostname,
        "subject_alt_names": [],
        "identities": [],
        "state": state,
    });
    if let (Some(fields), Value::Object(extra)) = (fields.as_object_mut(), extra) {
        fields.extend(extra);
    }
    json!({ "filter_metadata": { backendtls_contract::METADATA_NAMESPACE: fields } })
}

/// An upstream TLS transport socket: `sni`, TLS up to `max_version` (`TLSv1_2`, `TLSv1_3`), and
/// `validation_context`; `extra` fields go into the `UpstreamTlsContext` (e.g. `max_session_keys`).
pub fn upstream_tls(
    sni: &str,
    max_version: &str,
    validation_context: Value,
    extra: Value,
) -> Value {
    let mut context = json!({
        "sni": sni,
        "common_tls_context": {
            "tls_params": { "tls_maximum_protocol_version": max_version },
            "validation_context": validation_context,
        },
    });
    if let (Some(context), Value::Object(extra)) = (context.as_object_mut(), extra) {
        context.extend(extra);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            context,
        ),
    })
}

/// Envoy's default validator: `trusted_ca` from a file, and an exact DNS SAN matcher.
pub fn trusted_ca_file(ca_path: &Path, dns_san: &str) -> Value {
    json!({
        "trusted_ca": { "filename": ca_path },
        "match_typed_subject_alt_names": [{ "san_type": "DNS", "matcher": { "exact": dns_san } }],
    })
}

/// A static bootstrap (no loader): admin on 127.0.0.1:`admin`, one HTTP listener on
/// 127.0.0.1:`listener` logging each request to stdout, every host routed by path prefix, the
/// HTTP filters before the router, and the clusters.
#[derive(Clone, Debug)]
pub struct StaticBootstrap {
    admin: u16,
    listener: u16,
    log_format: String,
    routes: Vec<Value>,
    http_filters: Vec<Value>,
    clusters: Vec<Value>,
}

impl StaticBootstrap {
    /// `log_format` is Envoy's text format, e.g. `ACCESS %RESPONSE_CODE%\n` (a real newline);
    /// empty: no access log.
    pub fn new(admin: u16, listener: u16, log_format: &str) -> StaticBootstrap {
        StaticBootstrap {
            admin,
            listener,
            log_format: log_format.to_string(),
            routes: Vec::new(),
            http_filters: Vec::new(),
            clusters: Vec::new(),
        }
    }

    /// Requests whose path starts with `prefix` go to `cluster`.
    pub fn route(mut self, prefix: &str, cluster: &str) -> StaticBootstrap {
        self.routes.push(json!({ "match": { "prefix": prefix }, "route": { "cluster": cluster } }));
        self
    }

    /// A route given whole (a `config.route.v3.Route`).
    pub fn raw_route(mut self, route: Value) -> StaticBootstrap {
        self.routes.push(route);
        self
    }

    /// An HTTP filter, run before the router in the order added.
    pub fn http_filter(mut self, filter: Value) -> StaticBootstrap {
        self.http_filters.push(filter);
        self
    }

    pub fn cluster(mut self, cluster: Value) -> StaticBootstrap {
        self.clusters.push(cluster);
        self
    }

    /// The bootstrap as a JSON value.
    pub fn to_value(&self) -> Value {
        let socket =
            |port: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
        let mut http_filters = self.http_filters.clone();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": typed("envoy.extensions.filters.http.router.v3.Router", json!({})),
        }));
        let mut manager = json!({
            "stat_prefix": "http",
            "route_config": { "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": self.routes,
            }]},
            "http_filters": http_filters,
        });
        if !self.log_format.is_empty() {
            manager["access_log"] = json!([{
                "name": "envoy.access_loggers.stdout",
                "typed_config": typed(
                    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    json!({ "log_format": {
                        "text_format_source": { "inline_string": self.log_format }
                    }}),
                ),
            }]);
        }
        let manager = typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            manager,
        );
        json!({
            "admin": { "address": socket(self.admin) },
            "static_resources": {
                "listeners": [{
                    "name": "http",
                    "address": socket(self.listener),
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }]}],
                }],
                "clusters": self.clusters,
            },
        })
    }

    /// The bootstrap as text for `envoy -c` (JSON, which is YAML).
    pub fn yaml(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a bootstrap serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_has_every_part_in_place() {
        let bootstrap = StaticBootstrap::new(9901, 10000, "ACCESS %RESPONSE_CODE%\n")
            .route("/tls", "tls")
            .http_filter(wasm_filter(Path::new("/f.wasm"), "{}"))
            .cluster(static_cluster("tls", 8443))
            .to_value();
        let manager = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"];
        assert_eq!(
            manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            "tls"
        );
        let filters = manager["http_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[1]["name"], "envoy.filters.http.router");
        assert_eq!(
            manager["access_log"][0]["typed_config"]["log_format"]["text_format_source"]
                ["inline_string"],
            "ACCESS %RESPONSE_CODE%\n"
        );
        let endpoint = &bootstrap["static_resources"]["clusters"][0]["load_assignment"]
            ["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(endpoint["address"]["socket_address"]["port_value"], 8443);
        assert_eq!(bootstrap["admin"]["address"]["socket_address"]["port_value"], 9901);
    }
}
