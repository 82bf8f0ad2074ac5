//! Per-policy handshake counters for the certificate validator, and the expiry gauge.
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use backendtls_contract::stats;

use super::ffi::{self, CounterSink, LogLevel};
use crate::validator::FailureReason;

/// The counter ids one HTTP filter config defined for the validator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandshakeCounterIds {
    /// `handshakes_verified{policy}`.
    pub verified: usize,
    /// `handshake_failures{reason, policy}`.
    pub failures: usize,
    /// `backend_certificate_not_after_seconds{policy}` (a gauge).
    pub not_after: usize,
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

/// The leaves' not-after dates each policy's backends presented recently: policy -> not-after ->
/// when last seen (seconds since the Unix epoch). Small: one entry per distinct certificate date.
static NOT_AFTER: Mutex<BTreeMap<String, BTreeMap<u64, u64>>> = Mutex::new(BTreeMap::new());
/// Distinct dates remembered per policy; the oldest-seen go first beyond it.
const NOT_AFTER_DATES: usize = 64;

/// Notes that a backend of `policy` presented a leaf valid until `not_after`, and sets the gauge
/// to the earliest such date seen in the last [`stats::NOT_AFTER_WINDOW_SECONDS`].
pub(crate) fn record_not_after(policy: &str, not_after: u64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let earliest = {
        let mut all = NOT_AFTER.lock().unwrap_or_else(|e| e.into_inner());
        let dates = all.entry(policy.to_string()).or_default();
        earliest_recent(dates, not_after, now)
    };
    let sinks = read();
    let Some(entry) = sinks.last() else { return false };
    entry.sink.set_gauge(entry.ids.not_after, policy.as_bytes(), earliest)
}

/// Records `not_after` as seen `now` in `dates`, forgets what was not seen within the window (and
/// the oldest-seen beyond [`NOT_AFTER_DATES`]), and returns the earliest date left.
fn earliest_recent(dates: &mut BTreeMap<u64, u64>, not_after: u64, now: u64) -> u64 {
    dates.insert(not_after, now);
    dates.retain(|_, seen| now.saturating_sub(*seen) <= stats::NOT_AFTER_WINDOW_SECONDS);
    while dates.len() > NOT_AFTER_DATES {
        let oldest = dates.iter().min_by_key(|(_, seen)| **seen).map(|(date, _)| *date);
        dates.remove(&oldest.expect("not empty"));
    }
    *dates.keys().next().expect("holds the date just recorded")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_the_earliest_date_seen_within_the_window() {
        let mut dates = BTreeMap::new();
        assert_eq!(earliest_recent(&mut dates, 2_000, 100), 2_000);
        assert_eq!(earliest_recent(&mut dates, 3_000, 200), 2_000, "another backend, later");
        assert_eq!(earliest_recent(&mut dates, 1_500, 300), 1_500, "an earlier one");
        // The 1,500 and 2,000 leaves were rotated away: once unseen for the window, they no
        // longer hold the gauge down.
        let later = 300 + stats::NOT_AFTER_WINDOW_SECONDS + 1;
        assert_eq!(earliest_recent(&mut dates, 3_000, later), 3_000);
        assert_eq!(dates.len(), 1);
    }

    #[test]
    fn dates_per_policy_are_bounded() {
        let mut dates = BTreeMap::new();
        for i in 0..1_000 {
            earliest_recent(&mut dates, 10_000 + i, i);
        }
        assert_eq!(dates.len(), NOT_AFTER_DATES);
        assert_eq!(*dates.keys().next().unwrap(), 10_000 + 1_000 - NOT_AFTER_DATES as u64);
    }
}
