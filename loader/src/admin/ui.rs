//! `/ui`: one server-rendered HTML page of what the loader knows (Gateways, routes, policies and
//! their conditions, probe results with certificate expiry, input errors). No scripts and no
//! external assets: it works offline and behind any proxy, and refreshes itself every 10 s.

use super::envoy_stats::PolicyCounters;
use crate::probe::{self, Outcome};
use serde_json::Value;
use std::fmt::Write as _;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;\
border-bottom:1px solid #dde;vertical-align:top}th{background:#f3f4f8}\
.good{background:#e3f6e6}.bad{background:#fde4e1}.note{color:#667}\
.badge{display:inline-block;padding:0 .4em;margin:.1em;border-radius:.3em;font-size:.9em}\
.badge.good{color:#14532d}.badge.bad{color:#7f1d1d}code{font-size:.95em}";

/// The page. `status` is `/status`'s document (without probes); `probes` the latest probe run.
pub fn page(
    status: &Value,
    probes: Option<&probe::Results>,
    envoy: Option<&PolicyCounters>,
    snapshot_version: u64,
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>backendtls</title>\
         <style>{STYLE}</style></head><body><h1>backendtls loader</h1>\
         <p class=\"note\">Snapshot version {snapshot_version}. This page refreshes every 10 s; \
         the same data is at <a href=\"/status\">/status</a> and \
         <a href=\"/metrics\">/metrics</a>.</p>"
    );
    probes_section(&mut html, probes);
    policies_section(&mut html, status, envoy);
    gateways_section(&mut html, status);
    routes_section(&mut html, status);
    errors_section(&mut html, status);
    html.push_str("</body></html>\n");
    html
}

fn probes_section(html: &mut String, probes: Option<&probe::Results>) {
    html.push_str("<h2 id=\"probes\">Backend TLS probes</h2>");
    let Some(results) = probes else {
        html.push_str(
            "<p class=\"note\">Probes are off: start <code>serve</code> with \
             <code>--probe-interval 30s</code>, or run <code>backendtls-loader probe</code>.</p>",
        );
        return;
    };
    if results.runs == 0 {
        html.push_str("<p class=\"note\">The first probe run has not finished yet.</p>");
        return;
    }
    if results.reports.is_empty() {
        html.push_str("<p class=\"note\">No endpoint is governed by a BackendTLSPolicy.</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>Policy</th><th>Endpoint</th><th>SNI</th><th>Result</th>\
         <th>Certificate</th><th>Expires</th><th>Detail</th></tr>",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for report in &results.reports {
        let class = if report.result == Outcome::Ok { "good" } else { "bad" };
        let (names, expires) = match &report.certificate {
            Some(c) => {
                let days = (c.not_after_seconds as i64 - now as i64) / 86_400;
                (
                    format!(
                        "{}<br><span class=\"note\">issuer {}</span>",
                        escape(&c.subject_alt_names.join(", ")),
                        escape(&c.issuer)
                    ),
                    format!("{} ({days} days)", escape(&c.not_after)),
                )
            }
            None => ("-".into(), "-".into()),
        };
        let _ = write!(
            html,
            "<tr class=\"probe {class}\" data-policy=\"{ns}/{policy}\" data-endpoint=\"{endpoint}\" \
             data-result=\"{result}\"><td>{ns}/{policy}</td><td><code>{endpoint}</code></td>\
             <td>{sni}</td><td><b>{result}</b></td><td>{names}</td><td>{expires}</td>\
             <td>{detail}</td></tr>",
            ns = escape(&report.namespace),
            policy = escape(&report.policy),
            endpoint = escape(&report.endpoint),
            sni = escape(&report.sni),
            result = report.result.label(),
            detail = escape(&report.detail),
        );
    }
    let _ = write!(
        html,
        "</table><p class=\"note\">{} probe run(s); the last took {:.2} s.</p>",
        results.runs, results.last_run_seconds
    );
}

fn policies_section(html: &mut String, status: &Value, envoy: Option<&PolicyCounters>) {
    html.push_str("<h2 id=\"policies\">BackendTLSPolicies</h2>");
    let policies = list(status, "policies");
    if policies.is_empty() {
        html.push_str("<p class=\"note\">None.</p>");
        return;
    }
    match envoy {
        Some(PolicyCounters { error: Some(error), source, .. }) => {
            let _ = write!(
                html,
                "<p class=\"bad\">Envoy counters from {}: {}</p>",
                escape(source),
                escape(error)
            );
        }
        Some(PolicyCounters { source, .. }) => {
            let _ = write!(html, "<p class=\"note\">Envoy counters from {}.</p>", escape(source));
        }
        None => html.push_str(
            "<p class=\"note\">Start <code>serve</code> with <code>--envoy-admin URL</code> to \
             see an Envoy's counters per policy here.</p>",
        ),
    }
    html.push_str(
        "<table><tr><th>Policy</th><th>Ancestor</th><th>Conditions</th><th>Envoy counters</th></tr>",
    );
    for policy in policies {
        let name = object_name(policy);
        let counters = envoy
            .and_then(|e| e.by_policy.get(&name))
            .map(|counters| {
                counters
                    .iter()
                    .map(|(counter, value)| {
                        format!("<span class=\"counter\">{} {value}</span>", escape(counter))
                    })
                    .collect::<Vec<_>>()
                    .join("<br>")
            })
            .unwrap_or_default();
        let ancestors = policy.pointer("/status/ancestors").and_then(Value::as_array);
        for ancestor in ancestors.into_iter().flatten() {
            let reference = ancestor.get("ancestorRef").unwrap_or(&Value::Null);
            let _ = write!(
                html,
                "<tr class=\"policy\" data-policy=\"{}\"><td>{}</td><td>{} {}</td><td>{}</td>\
                 <td>{counters}</td></tr>",
                escape(&name),
                escape(&name),
                escape(str_at(reference, "kind")),
                escape(&object_name(reference)),
                conditions(ancestor)
            );
        }
    }
    html.push_str("</table>");
}

fn gateways_section(html: &mut String, status: &Value) {
    html.push_str("<h2 id=\"gateways\">Gateways</h2>");
    let gateways = list(status, "gateways");
    if gateways.is_empty() {
        html.push_str("<p class=\"note\">None.</p>");
        return;
    }
    html.push_str(
        "<table><tr><th>Gateway</th><th>Listener</th><th>Routes</th><th>Conditions</th></tr>",
    );
    for gateway in gateways {
        let name = object_name(gateway);
        let _ = write!(
            html,
            "<tr class=\"gateway\"><td>{}</td><td></td><td></td><td>{}</td></tr>",
            escape(&name),
            conditions(gateway)
        );
        for listener in list(gateway, "listeners") {
            let _ = write!(
                html,
                "<tr><td></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(str_at(listener, "name")),
                listener.get("attachedRoutes").and_then(Value::as_u64).unwrap_or(0),
                conditions(listener)
            );
        }
    }
    html.push_str("</table>");
}

fn routes_section(html: &mut String, status: &Value) {
    html.push_str("<h2 id=\"routes\">Routes</h2>");
    let routes = list(status, "routes");
    if routes.is_empty() {
        html.push_str("<p class=\"note\">None.</p>");
        return;
    }
    html.push_str("<table><tr><th>Route</th><th>Parent</th><th>Conditions</th></tr>");
    for route in routes {
        let name = format!("{} {}", str_at(route, "kind"), object_name(route));
        // `check`'s route reports keep the parents at the top; Kubernetes under `status`.
        let parents = route
            .get("parents")
            .or_else(|| route.pointer("/status/parents"))
            .and_then(Value::as_array);
        for parent in parents.into_iter().flatten() {
            let reference = parent.get("parentRef").unwrap_or(&Value::Null);
            let _ = write!(
                html,
                "<tr class=\"route\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(name.trim()),
                escape(&object_name(reference)),
                conditions(parent)
            );
        }
    }
    html.push_str("</table>");
}

fn errors_section(html: &mut String, status: &Value) {
    let errors = list(status, "errors");
    let problems = list(status, "problems");
    if errors.is_empty() && problems.is_empty() {
        return;
    }
    html.push_str("<h2 id=\"errors\">Input problems</h2><ul>");
    for item in errors.iter().chain(problems) {
        let text = match item {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let _ = write!(html, "<li class=\"bad\">{}</li>", escape(&text));
    }
    html.push_str("</ul>");
}

/// `type: status (reason)` badges, green when the condition is in its good state.
fn conditions(object: &Value) -> String {
    let mut out = String::new();
    for condition in list(object, "conditions") {
        let kind = str_at(condition, "type");
        let status = str_at(condition, "status");
        // Conflicted is the one condition whose healthy state is False.
        let good = (status == "True") != (kind == "Conflicted");
        let _ = write!(
            out,
            "<span class=\"badge {}\" title=\"{}\">{}: {} ({})</span>",
            if good { "good" } else { "bad" },
            escape(str_at(condition, "message")),
            escape(kind),
            escape(status),
            escape(str_at(condition, "reason"))
        );
    }
    out
}

fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn str_at<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn object_name(value: &Value) -> String {
    match (str_at(value, "namespace"), str_at(value, "name")) {
        ("", name) => name.to_string(),
        (namespace, name) => format!("{namespace}/{name}"),
    }
}

/// HTML text and attribute escaping.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_from_the_input_is_escaped() {
        let status = serde_json::json!({
            "policies": [{"namespace": "ns", "name": "<script>alert(1)</script>",
                "status": {"ancestors": [{"ancestorRef": {"kind": "Gateway", "name": "g\"w"},
                    "conditions": [{"type": "Accepted", "status": "False", "reason": "Invalid",
                        "message": "bad & <worse>"}]}]}}],
            "errors": ["file <x>.yaml: broken"],
        });
        let page = page(&status, None, None, 3);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("g&quot;w"));
        assert!(page.contains("bad &amp; &lt;worse&gt;"));
        assert!(page.contains("file &lt;x&gt;.yaml: broken"));
        assert!(page.contains("badge bad"), "a False Accepted is shown as bad");
        assert!(page.contains("Probes are off"));
    }
}
