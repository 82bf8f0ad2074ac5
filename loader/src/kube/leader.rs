//! Leader election on a `coordination.k8s.io/v1` Lease: every replica serves xDS, only the
//! holder writes status. The holder renews every third of the lease duration; a replica that
//! has not renewed within the duration stops writing at once (before anyone else can take the
//! Lease over), and a candidate takes an expired Lease with an update conditioned on its
//! resourceVersion, so that two candidates never both win.

use super::KubeOptions;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Whether this replica may write status, and until when (its last renewal plus the lease
/// duration, by its own clock).
#[derive(Clone)]
pub struct Leader {
    until: watch::Receiver<Option<Instant>>,
}

impl Leader {
    pub fn start(client: kube::Client, options: &KubeOptions) -> Leader {
        let (tx, rx) = watch::channel(None);
        let api: Api<Lease> = Api::namespaced(client, &options.lease_namespace);
        let elector = Elector {
            api,
            name: options.lease_name.clone(),
            identity: options.identity.clone(),
            duration: options.lease_duration,
            tx,
        };
        tokio::spawn(elector.run());
        Leader { until: rx }
    }

    /// True while the lease is ours.
    pub fn is_leader(&self) -> bool {
        self.until.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Waits until this replica leads.
    pub async fn wait(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            // Woken by a change, or after a moment to see expiries.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.until.changed()).await;
        }
    }
}

struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    tx: watch::Sender<Option<Instant>>,
}

impl Elector {
    async fn run(self) {
        let period = self.duration / 3;
        let mut leading = false;
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if !leading {
                        tracing::info!(identity = %self.identity, lease = %self.name, "leading: writing status");
                    }
                    leading = true;
                    self.tx.send_replace(Some(attempt + self.duration));
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(identity = %self.identity, "lost the lease: status writes stop");
                    }
                    leading = false;
                    self.tx.send_replace(None);
                }
                Err(e) => {
                    // Keep the leadership we have until it expires by our own clock.
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Ok(true) when the lease is ours after the call.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours {
            let duration = spec.lease_duration_seconds.unwrap_or(seconds).max(1) as i64;
            let expired = match &spec.renew_time {
                None => true,
                Some(MicroTime(renewed)) => {
                    Timestamp::now().as_second() - renewed.as_second() >= duration
                }
            };
            let held = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
            if held && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The update carries the resourceVersion read: a concurrent change makes it 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
