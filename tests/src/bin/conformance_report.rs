//! `backendtls-conformance-report`: writes a Gateway API `ConformanceReport` (the upstream
//! `conformance/apis/v1` format) from the output of a `cargo test` run of the conformance test
//! files (`make conformance` tees it into `target/conformance.log`).
//!
//! Each upstream test that touches BackendTLSPolicy (Gateway API v1.6.1, plus the two newer ones
//! on main) is mapped to the e2e tests that adapt it to file mode. An upstream test counts as
//! passed only when every one of its e2e tests ran and passed, as failed when one failed, and as
//! skipped when one did not run or when part of the upstream test is not adapted yet (the reason
//! is written beside it as a YAML comment). Nothing is assumed to pass.
//!
//! Usage: `backendtls-conformance-report <cargo test log> <report.yaml>`.
//! `CONFORMANCE_URL` and `CONFORMANCE_CONTACT` (comma-separated) fill the implementation's
//! `url` and `contact`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{json, Value};

/// The Gateway API version the adapted tests come from, and its channel.
const GATEWAY_API_VERSION: &str = "v1.6.1";
const GATEWAY_API_CHANNEL: &str = "standard";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Support {
    Core,
    Extended,
}

/// One upstream conformance test and what adapts it here.
struct Upstream {
    name: &'static str,
    profile: &'static str,
    support: Support,
    /// `<test file>::<test function>` of every e2e test that adapts it.
    tests: &'static [&'static str],
    /// Why it is not (fully) adapted yet: the test then counts as skipped.
    missing: Option<&'static str>,
}

const UPSTREAM: &[Upstream] = &[
    Upstream {
        name: "BackendTLSPolicy",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::normative", "policy::ca_certificate_ref_reconcile", "policy::reencrypt"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyConflictResolution",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::conflict_resolution"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyInvalidCACertificateRef",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::invalid_ca_certificate_refs"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyInvalidKind",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::invalid_ca_certificate_refs"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyObservedGenerationBump",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::observed_generation_bump"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicySANValidation",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::san_validation"],
        missing: None,
    },
    Upstream {
        name: "GatewayTLSBackendClientCertificate",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::gateway_client_certificate"],
        missing: None,
    },
    Upstream {
        name: "GatewayInvalidTLSBackendConfiguration",
        profile: "GATEWAY-HTTP",
        support: Support::Extended,
        tests: &["policy::gateway_invalid_tls_backend_configuration"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyGRPCRoute",
        profile: "GATEWAY-GRPC",
        support: Support::Extended,
        tests: &["grpc_routes::backendtlspolicy_grpcroute"],
        missing: None,
    },
    Upstream {
        name: "GRPCExactMethodMatching",
        profile: "GATEWAY-GRPC",
        support: Support::Core,
        tests: &["grpc_conformance::grpc_exact_method_matching"],
        missing: None,
    },
    Upstream {
        name: "GRPCRouteHeaderMatching",
        profile: "GATEWAY-GRPC",
        support: Support::Core,
        tests: &["grpc_conformance::grpcroute_header_matching"],
        missing: None,
    },
    Upstream {
        name: "GRPCRouteListenerHostnameMatching",
        profile: "GATEWAY-GRPC",
        support: Support::Core,
        tests: &["grpc_conformance::grpcroute_listener_hostname_matching"],
        missing: None,
    },
    Upstream {
        name: "GRPCRouteWeight",
        profile: "GATEWAY-GRPC",
        support: Support::Core,
        tests: &["grpc_conformance::grpcroute_weight"],
        missing: None,
    },
    Upstream {
        name: "BackendTLSPolicyTLSRouteTerminate",
        profile: "GATEWAY-TLS",
        support: Support::Extended,
        tests: &[
            "tls_routes::backendtlspolicy_tlsroute_terminate",
            "tls_routes::tlsroute_fails_closed_and_refuses_passthrough",
        ],
        missing: None,
    },
];

/// Extended features claimed per profile.
const SUPPORTED_FEATURES: &[(&str, &[&str])] = &[
    (
        "GATEWAY-HTTP",
        &["BackendTLSPolicy", "BackendTLSPolicySANValidation", "GatewayBackendClientCertificate"],
    ),
    ("GATEWAY-GRPC", &["BackendTLSPolicy"]),
    // TLSRoute on listeners in mode Terminate only: Passthrough listeners are refused
    // (`Accepted=False`, `UnsupportedValue`), so TLSRoute's Passthrough tests would fail.
    ("GATEWAY-TLS", &["BackendTLSPolicy", "TLSRoute", "TLSRouteModeTerminate"]),
];
const UNSUPPORTED_FEATURES: &[(&str, &[&str])] = &[("GATEWAY-TLS", &["TLSRouteModeMixed"])];

/// What libtest said about one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Ignored,
}

/// `<file>::<test>` -> outcome, from `cargo test` output: `Running tests/<file>.rs (...)`
/// starts a test binary, `test <name> ... ok|FAILED|ignored` reports a test.
fn parse_log(log: &str) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    let mut file = String::new();
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            file = rest
                .split_whitespace()
                .next()
                .and_then(|path| path.rsplit('/').next())
                .and_then(|name| name.strip_suffix(".rs"))
                .unwrap_or_default()
                .to_string();
            continue;
        }
        let Some(rest) = line.strip_prefix("test ") else { continue };
        let Some((name, result)) = rest.rsplit_once(" ... ") else { continue };
        let outcome = match result.split_whitespace().next() {
            Some("ok") => Outcome::Ok,
            Some("FAILED") => Outcome::Failed,
            Some("ignored") => Outcome::Ignored,
            _ => continue,
        };
        outcomes.insert(format!("{file}::{name}"), outcome);
    }
    outcomes
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    Failed,
    Skipped,
}

/// The verdict on one upstream test, with why when it is not a pass.
fn verdict(test: &Upstream, outcomes: &BTreeMap<String, Outcome>) -> (Verdict, Option<String>) {
    let failed: Vec<&str> =
        test.tests.iter().copied().filter(|t| outcomes.get(*t) == Some(&Outcome::Failed)).collect();
    if !failed.is_empty() {
        return (Verdict::Failed, Some(format!("failed: {}", failed.join(", "))));
    }
    if let Some(missing) = test.missing {
        return (Verdict::Skipped, Some(missing.to_string()));
    }
    let not_run: Vec<&str> =
        test.tests.iter().copied().filter(|t| outcomes.get(*t) != Some(&Outcome::Ok)).collect();
    if test.tests.is_empty() || !not_run.is_empty() {
        return (Verdict::Skipped, Some(format!("did not run: {}", not_run.join(", "))));
    }
    (Verdict::Passed, None)
}

/// An upstream test with its verdict and why it is not a pass.
type Judged<'a> = (&'a Upstream, Verdict, Option<String>);

/// One `core` or `extended` block, or None when the profile has no such tests here.
fn results(tests: &[Judged<'_>], support: Support) -> Option<(Value, String)> {
    let of: Vec<&Judged<'_>> = tests.iter().filter(|(t, _, _)| t.support == support).collect();
    if of.is_empty() {
        return None;
    }
    let names = |verdict: Verdict| -> Vec<&str> {
        let mut names: Vec<&str> =
            of.iter().filter(|(_, v, _)| *v == verdict).map(|(t, _, _)| t.name).collect();
        names.sort_unstable();
        names
    };
    let (passed, failed, skipped) =
        (names(Verdict::Passed), names(Verdict::Failed), names(Verdict::Skipped));
    let result = if !failed.is_empty() {
        "failure"
    } else if !skipped.is_empty() {
        "partial"
    } else {
        "success"
    };
    let mut block = json!({
        "result": result,
        "statistics": {"Passed": passed.len(), "Failed": failed.len(), "Skipped": skipped.len()},
    });
    if !skipped.is_empty() {
        block["skippedTests"] = json!(skipped);
    }
    if !failed.is_empty() {
        block["failedTests"] = json!(failed);
    }
    let kind = match support {
        Support::Core => "Core",
        Support::Extended => "Extended",
    };
    let summary = match result {
        "success" => format!("{kind} tests succeeded."),
        "partial" => {
            format!("{kind} tests partially succeeded with {} test skips.", skipped.len())
        }
        _ => format!("{kind} tests failed with {} test failures.", failed.len()),
    };
    Some((block, summary))
}

fn report(outcomes: &BTreeMap<String, Outcome>, date: &str) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_profile: BTreeMap<&str, Vec<Judged<'_>>> = BTreeMap::new();
    for test in UPSTREAM {
        let (verdict, why) = verdict(test, outcomes);
        if let Some(why) = &why {
            notes.push(format!("{} ({}): {why}", test.name, test.profile));
        }
        by_profile.entry(test.profile).or_default().push((test, verdict, why));
    }
    let features = |table: &[(&str, &[&str])], profile: &str| -> Vec<String> {
        let mut list: Vec<String> = table
            .iter()
            .filter(|(p, _)| *p == profile)
            .flat_map(|(_, f)| f.iter().map(|f| f.to_string()))
            .collect();
        list.sort();
        list
    };
    let mut profiles = Vec::new();
    for (profile, tests) in &by_profile {
        let mut entry = json!({"name": profile});
        let mut summaries = Vec::new();
        match results(tests, Support::Core) {
            Some((core, summary)) => {
                entry["core"] = core;
                summaries.push(summary);
            }
            None => {
                // The upstream format requires `core`; this run does not cover it.
                entry["core"] = json!({
                    "result": "partial",
                    "statistics": {"Passed": 0, "Failed": 0, "Skipped": 0},
                });
                summaries.push(
                    "Core tests are not part of this run (BackendTLSPolicy-related tests only)."
                        .to_string(),
                );
            }
        }
        if let Some((mut extended, summary)) = results(tests, Support::Extended) {
            extended["supportedFeatures"] = json!(features(SUPPORTED_FEATURES, profile));
            let unsupported = features(UNSUPPORTED_FEATURES, profile);
            if !unsupported.is_empty() {
                extended["unsupportedFeatures"] = json!(unsupported);
            }
            entry["extended"] = extended;
            summaries.push(summary);
        }
        entry["summary"] = json!(summaries.join(" "));
        profiles.push(entry);
    }
    let contact: Vec<String> = std::env::var("CONFORMANCE_CONTACT")
        .unwrap_or_else(|_| "backendtls maintainers (see README.md)".into())
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let report = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": date,
        "gatewayAPIVersion": GATEWAY_API_VERSION,
        "gatewayAPIChannel": GATEWAY_API_CHANNEL,
        "mode": "file",
        "implementation": {
            "organization": "backendtls",
            "project": "backendtls",
            "url": std::env::var("CONFORMANCE_URL")
                .unwrap_or_else(|_| "https://example.invalid/backendtls".into()),
            "version": format!("v{}", env!("CARGO_PKG_VERSION")),
            "contact": contact,
        },
        "profiles": profiles,
    });
    (report, notes)
}

/// RFC 3339 in UTC for a Unix time (days to civil date: Howard Hinnant's algorithm).
fn rfc3339(unix: u64) -> String {
    let (days, seconds) = ((unix / 86_400) as i64, unix % 86_400);
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
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [log, out] = args.as_slice() else {
        eprintln!("usage: backendtls-conformance-report <cargo test log> <report.yaml>");
        return ExitCode::from(2);
    };
    let log = match std::fs::read_to_string(log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("{log}: {e}");
            return ExitCode::from(2);
        }
    };
    let outcomes = parse_log(&log);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let (report, notes) = report(&outcomes, &rfc3339(now));
    let mut text = String::from(
        "# Gateway API conformance, file mode: the upstream tests that touch BackendTLSPolicy\n\
         # (v1.6.1, and BackendTLSPolicyGRPCRoute / BackendTLSPolicyTLSRouteTerminate from main),\n\
         # adapted as our own e2e tests. Written by `make conformance` from that run's results.\n",
    );
    if !notes.is_empty() {
        text.push_str("# Not passed:\n");
        for note in &notes {
            text.push_str(&format!("# - {note}\n"));
        }
    }
    let yaml = serde_norway::to_string(&report).expect("the report serializes");
    // A string, as upstream writes it (unquoted, YAML 1.1 readers would take it for a timestamp).
    let date = report["date"].as_str().expect("date");
    text.push_str(&yaml.replacen(&format!("date: {date}\n"), &format!("date: \"{date}\"\n"), 1));
    if let Err(e) = std::fs::write(out, text) {
        eprintln!("{out}: {e}");
        return ExitCode::from(2);
    }
    println!("wrote {out}");
    for note in &notes {
        println!("  {note}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "
     Running tests/grpc_routes.rs (target/debug/deps/grpc_routes-1)
test backendtlspolicy_grpcroute ... ok
     Running tests/policy.rs (target/debug/deps/policy-2)
test conflict_resolution ... FAILED
test normative ... ok
test san_validation ... ignored
";

    #[test]
    fn results_come_from_the_log() {
        let outcomes = parse_log(LOG);
        assert_eq!(outcomes["grpc_routes::backendtlspolicy_grpcroute"], Outcome::Ok);
        assert_eq!(outcomes["policy::conflict_resolution"], Outcome::Failed);
        let (report, notes) = report(&outcomes, "2026-01-01T00:00:00Z");
        let profile = |name: &str| {
            report["profiles"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
        };
        let http = &profile("GATEWAY-HTTP")["extended"];
        assert_eq!(http["result"], "failure");
        assert_eq!(http["failedTests"], json!(["BackendTLSPolicyConflictResolution"]));
        // Not run, ignored, or not fully adapted: skipped, never passed.
        assert_eq!(http["statistics"]["Passed"], 0);
        let grpc = &profile("GATEWAY-GRPC");
        assert_eq!(grpc["extended"]["result"], "success");
        assert_eq!(grpc["core"]["result"], "partial");
        assert_eq!(
            profile("GATEWAY-TLS")["extended"]["skippedTests"],
            json!(["BackendTLSPolicyTLSRouteTerminate"])
        );
        assert!(notes
            .iter()
            .any(|n| n.contains("did not run: grpc_conformance::grpc_exact_method_matching")));
        assert!(notes.iter().any(|n| n.contains("did not run: policy::san_validation")));
    }

    /// BackendTLSPolicyTLSRouteTerminate passes when both tls_routes tests pass; GATEWAY-TLS
    /// claims TLSRoute in Terminate mode with BackendTLSPolicy.
    #[test]
    fn tlsroute_terminate_comes_from_tls_routes() {
        let log = "     Running tests/tls_routes.rs (target/debug/deps/tls_routes-3)\n\
                   test backendtlspolicy_tlsroute_terminate ... ok\n\
                   test tlsroute_fails_closed_and_refuses_passthrough ... ok\n";
        let (report, _) = report(&parse_log(log), "2026-01-01T00:00:00Z");
        let profiles = report["profiles"].as_array().unwrap();
        let tls = &profiles.iter().find(|p| p["name"] == "GATEWAY-TLS").unwrap()["extended"];
        assert_eq!(tls["result"], "success", "{tls}");
        assert_eq!(
            tls["supportedFeatures"],
            json!(["BackendTLSPolicy", "TLSRoute", "TLSRouteModeTerminate"])
        );
        assert_eq!(tls["unsupportedFeatures"], json!(["TLSRouteModeMixed"]));
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_772_366_400), "2026-03-01T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
