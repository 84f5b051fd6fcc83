//! This instance's lease in PostgreSQL, and the takeover of instances that never come back
//! (issue 11): a heartbeat renews the lease [`BEATS_PER_LEASE`] times per lease; once
//! another instance's lease has expired, this one takes over its in-doubt transactions
//! ([`Store::take_over_expired`], exactly once across instances). Pending reversals and
//! notifications need no takeover: every instance's workers serve them.
//!
//! The same beat sweeps this instance's own in-doubt transactions that no request path is
//! resolving any more (recorded longer ago than the bank timeout plus the outcome wait):
//! their outcome could not be recorded, so they are reversed ([`Store::recover_stale`]),
//! and no request stays `authorising` after a long database outage.
//!
//! The decisions are plain ([`Heartbeat`], time as input); [`run`] is the thin loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Renewals per lease: a lease survives two lost renewals in a row.
pub const BEATS_PER_LEASE: u32 = 3;

/// This instance's lease was taken over by another instance (it expired while this
/// process could not renew it): its in-doubt transactions are being reversed, so the
/// process must stop answering.
#[derive(Debug, thiserror::Error)]
#[error("instance {instance_id}'s lease was taken over by another instance")]
pub struct LeaseLost {
    pub instance_id: i16,
}

/// What the heartbeat knows between beats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    lease_ms: u64,
    /// Since when every renewal has succeeded; `None` after a failed one.
    healthy_since: Option<Instant>,
}

impl Heartbeat {
    pub fn new(lease_ms: u64) -> Heartbeat {
        assert!(lease_ms >= u64::from(BEATS_PER_LEASE), "lease too short");
        Heartbeat {
            lease_ms,
            healthy_since: None,
        }
    }

    /// Time between renewals.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.lease_ms / u64::from(BEATS_PER_LEASE))
    }

    /// A renewal succeeded at `now`.
    pub fn renewed(&mut self, now: Instant) {
        self.healthy_since.get_or_insert(now);
    }

    /// A renewal failed (the database was unreachable).
    pub fn failed(&mut self) {
        self.healthy_since = None;
    }

    /// Whether this instance may judge others dead at `now`: only once its own renewals
    /// have succeeded for a whole lease. After a database outage every lease looks
    /// expired until its holder has renewed it, which takes up to one interval; without
    /// this wait two live instances could take each other over.
    pub fn may_take_over(&self, now: Instant) -> bool {
        self.healthy_since.is_some_and(|t| {
            now.saturating_duration_since(t) >= Duration::from_millis(self.lease_ms)
        })
    }
}

/// Renews the lease until `shutdown`, taking over instances whose leases expired (waking
/// the reversal workers for what that queued). `Err` when this instance's lease was taken
/// over.
pub async fn run(
    store: Arc<dyn Store>,
    lease: Lease,
    reversal_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), LeaseLost> {
    let Lease {
        instance_id,
        incarnation,
        lease_ms,
        stale_ms,
    } = lease;
    let mut beat = Heartbeat::new(lease_ms);
    let lease = i64::try_from(lease_ms).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(beat.interval()) => {}
        }
        match store.renew_lease(instance_id, incarnation, lease).await {
            Ok(true) => beat.renewed(Instant::now()),
            Ok(false) => return Err(LeaseLost { instance_id }),
            Err(e) => {
                beat.failed();
                tracing::warn!(error = %e, "lease not renewed; trying again");
                continue;
            }
        }
        sweep(&*store, instance_id, stale_ms, &reversal_wake).await;
        if beat.may_take_over(Instant::now()) {
            take_over(&*store, instance_id, &reversal_wake, &metrics).await;
        }
    }
}

/// What the lease loop needs to know about this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub instance_id: i16,
    /// This process's incarnation (see [`crate::engine::Engine::incarnation`]).
    pub incarnation: i64,
    pub lease_ms: u64,
    /// Own in-doubt transactions recorded longer ago than this are reversed.
    pub stale_ms: u64,
}

/// Reverses this instance's in-doubt transactions older than `stale_ms`.
async fn sweep(store: &dyn Store, instance_id: i16, stale_ms: u64, wake: &Notify) {
    let older_than_ms = i64::try_from(stale_ms).unwrap_or(i64::MAX);
    match store.recover_stale(instance_id, older_than_ms).await {
        Ok(0) => {}
        Ok(reversed) => {
            tracing::warn!(
                reversed,
                "requests whose outcome could not be recorded: reversing them"
            );
            wake.notify_waiters();
        }
        Err(e) => tracing::warn!(error = %e, "could not sweep in-doubt transactions"),
    }
}

/// One look for expired leases of other instances.
async fn take_over(store: &dyn Store, instance_id: i16, wake: &Notify, metrics: &Metrics) {
    match store.take_over_expired(instance_id).await {
        Ok(taken) => {
            for (instance, in_doubt) in taken {
                metrics.lease_takeovers.inc();
                tracing::warn!(
                    instance,
                    in_doubt,
                    "took over an instance whose lease expired: reversing its in-doubt transactions"
                );
                if in_doubt > 0 {
                    wake.notify_waiters();
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not look for expired leases"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves an instance judges others only after a whole lease of successful renewals,
    // and a failed renewal starts that wait again.
    #[test]
    fn takeover_waits_for_a_healthy_lease() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(3_000);
        assert_eq!(beat.interval(), Duration::from_millis(1_000));
        assert!(!beat.may_take_over(t0), "nothing renewed yet");
        beat.renewed(t0);
        beat.renewed(t0 + Duration::from_millis(1_000));
        assert!(!beat.may_take_over(t0 + Duration::from_millis(2_999)));
        assert!(beat.may_take_over(t0 + Duration::from_millis(3_000)));
        beat.failed();
        assert!(!beat.may_take_over(t0 + Duration::from_millis(4_000)));
        beat.renewed(t0 + Duration::from_millis(5_000));
        assert!(!beat.may_take_over(t0 + Duration::from_millis(7_999)));
        assert!(beat.may_take_over(t0 + Duration::from_millis(8_000)));
    }
}
