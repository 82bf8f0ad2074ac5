//! Per-policy handshake counters for the certificate validator.
//!
//! The 1.40 certificate-validator ABI has no metrics callback. A dynamic module is one shared
//! object, though: when Envoy loads `libbackendtls_filter.so` for the HTTP filter and for the
//! validator, both are the same image (glibc maps a file once; Envoy also reuses a resident
//! module), so they share this module's statics. The HTTP filter config defines the validator's
//! two counters in `config_new` (the only time Envoy allows defining metrics) and registers a
//! [`CounterSink`] here; the validator counts through the most recently registered one.
//!
//! Consequences, documented in filter/README.md:
//! - the counters exist only while the backendtls HTTP filter (dynamic module, same `.so` file)
//!   is configured in some listener; without it the validator still verifies, and Envoy's own
//!   `cluster.<c>.ssl.*` stats still count, but `backendtls.handshakes_verified` and
//!   `backendtls.handshake_failures` do not appear (the validator logs this once);
//! - every filter config defines the same names in its `metrics_namespace`, so any one of them
//!   reaches the same Envoy counter as long as they share the namespace (the loader always uses
//!   `backendtls`).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::ffi::{self, CounterSink, LogLevel};
use crate::validator::FailureReason;

/// The counter ids one HTTP filter config defined for the validator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandshakeCounterIds {
    /// `handshakes_verified{policy}`.
    pub verified: usize,
    /// `handshake_failures{reason, policy}`.
    pub failures: usize,
}

struct Entry {
    key: u64,
    sink: CounterSink,
    ids: HandshakeCounterIds,
}

/// Registered sinks, oldest first. A read lock is held across every increment and the write lock
/// across removal, so a sink is never used after its filter config is destroyed.
static SINKS: RwLock<Vec<Entry>> = RwLock::new(Vec::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Keeps a sink registered; dropping it (in the HTTP filter's `config_destroy`) removes it.
#[derive(Debug)]
pub(crate) struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        write().retain(|entry| entry.key != self.0);
    }
}

/// Makes `sink` the one the validator counts through, until the registration is dropped.
pub(crate) fn register(sink: CounterSink, ids: HandshakeCounterIds) -> Registration {
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    write().push(Entry { key, sink, ids });
    Registration(key)
}

/// Counts one verified (`None`) or refused handshake for `policy`. False when no HTTP filter
/// config is registered (logged once per process).
pub(crate) fn record(policy: &str, failure: Option<FailureReason>) -> bool {
    let sinks = read();
    let Some(entry) = sinks.last() else {
        drop(sinks);
        if !WARNED.swap(true, Ordering::Relaxed) {
            ffi::log(
                LogLevel::Warn,
                "backendtls: the certificate validator verifies handshakes, but its per-policy \
                 counters (backendtls.handshakes_verified, backendtls.handshake_failures) need \
                 the backendtls HTTP filter (dynamic module, same .so) in a listener; Envoy's \
                 cluster.<name>.ssl.* stats still count",
            );
        }
        return false;
    };
    let policy = policy.as_bytes();
    match failure {
        None => entry.sink.increment(entry.ids.verified, &[policy]),
        Some(reason) => {
            entry.sink.increment(entry.ids.failures, &[reason.label().as_bytes(), policy])
        }
    }
}

/// Whether any HTTP filter config is registered (for tests and logs).
pub(crate) fn available() -> bool {
    !read().is_empty()
}

// A panic while holding the lock cannot leave the list half-updated (push, retain and reads
// only), so a poisoned lock is still usable.
fn read() -> RwLockReadGuard<'static, Vec<Entry>> {
    SINKS.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> RwLockWriteGuard<'static, Vec<Entry>> {
    SINKS.write().unwrap_or_else(|e| e.into_inner())
}
