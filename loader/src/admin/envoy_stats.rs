//! `serve --envoy-admin URL`: the per-policy counters of one Envoy, read from its admin `/stats`
//! every few seconds, for `/ui`.
//!
//! Envoy's admin is plain HTTP on a local address; one `GET` with `connection: close` is all
//! this needs, so it speaks HTTP/1.1 over a TCP stream rather than pulling in a client.

use backendtls_contract::stats;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the counters are read, and how long one read may take.
const POLL: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(2);
/// `/stats` of an Envoy with many clusters is large; only the filtered family is asked for.
const MAX_BODY: u64 = 8 << 20;

/// Counters by policy (`<ns>/<name>`), then by counter (`requests`, `handshake_failures`
/// `.reason.unknown_issuer`, ...), summed over the Wasm and dynamic-module prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    pub by_policy: BTreeMap<String, BTreeMap<String, u64>>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
    /// The admin address read.
    pub source: String,
}

/// An `--envoy-admin` value that is not `http://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected http://HOST:PORT (Envoy's admin address)")]
pub struct AddressError(pub String);

/// `http://host:port` or `host:port` → `host:port`.
pub fn parse_address(url: &str) -> Result<String, AddressError> {
    let rest = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    if url.starts_with("https://") || rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(AddressError(url.to_string()));
    }
    Ok(rest.to_string())
}

/// Why Envoy's counters could not be read (shown on the admin page).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot connect to {address}: {error}")]
    Connect { address: String, error: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a malformed HTTP answer")]
    Malformed,
    /// The status line.
    #[error("Envoy answered {0}")]
    Status(String),
}

/// Reads the counters now, then every [`POLL`], into `shared`.
pub async fn keep_reading(address: String, shared: Arc<RwLock<PolicyCounters>>) {
    loop {
        let read = tokio::time::timeout(TIMEOUT, read_stats(&address)).await;
        let counters = match read {
            Ok(Ok(text)) => parse(&text),
            Ok(Err(e)) => PolicyCounters { error: Some(e.to_string()), ..Default::default() },
            Err(_) => PolicyCounters {
                error: Some(format!("no answer within {TIMEOUT:?}")),
                ..Default::default()
            },
        };
        *shared.write().unwrap() = PolicyCounters { source: address.clone(), ..counters };
        tokio::time::sleep(POLL).await;
    }
}

async fn read_stats(address: &str) -> Result<String, ReadError> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| ReadError::Connect { address: address.to_string(), error })?;
    let request = format!(
        "GET /stats?filter={}%5C. HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n",
        stats::FAMILY
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.take(MAX_BODY).read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or(ReadError::Malformed)?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(ReadError::Status(head.lines().next().unwrap_or("").to_string()));
    }
    Ok(body.to_string())
}

/// `backendtls.<counter>[.<label>.<value>].policy.<ns>/<name>: <n>` lines (also with Envoy's
/// `wasmcustom.` prefix) into per-policy counters.
pub fn parse(text: &str) -> PolicyCounters {
    let mut counters = PolicyCounters::default();
    let family = format!("{}.", stats::FAMILY);
    let policy_part = format!(".{}.", stats::LABEL_POLICY);
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else { continue };
        let Ok(value) = value.trim().parse::<u64>() else { continue };
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        let Some(name) = name.strip_prefix(&family) else { continue };
        let Some((counter, policy)) = name.split_once(&policy_part) else { continue };
        *counters
            .by_policy
            .entry(policy.to_string())
            .or_default()
            .entry(counter.to_string())
            .or_default() += value;
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_policy() {
        let text = "backendtls.requests.policy.default/a: 3\n\
                    backendtls.handshake_failures.reason.unknown_issuer.policy.default/a: 2\n\
                    wasmcustom.backendtls.requests.policy.default/a: 1\n\
                    backendtls.requests.policy.ns/with.dots: 5\n\
                    cluster.x.ssl.handshake: 9\n\
                    backendtls.requests: not a number\n";
        let counters = parse(text);
        assert_eq!(counters.by_policy["default/a"]["requests"], 4);
        assert_eq!(counters.by_policy["default/a"]["handshake_failures.reason.unknown_issuer"], 2);
        assert_eq!(counters.by_policy["ns/with.dots"]["requests"], 5);
        assert_eq!(counters.by_policy.len(), 2);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("http://127.0.0.1:19000/").unwrap(), "127.0.0.1:19000");
        assert_eq!(parse_address("localhost:19000").unwrap(), "localhost:19000");
        assert!(parse_address("https://127.0.0.1:19000").is_err());
        assert!(parse_address("http://127.0.0.1:19000/stats").is_err());
        assert!(parse_address("127.0.0.1").is_err());
    }
}
