//! Waiting for a request's due time to within tens of microseconds.
//!
//! tokio's timers tick in whole milliseconds: waiting with them sent the schedule in
//! bursts at each tick (five requests at once at 5,000/s), each up to 1 ms after its due
//! time. Latency counts from the due time, so that delay was in every figure, the relay's
//! and the switch's alike, and the switch saw bursts no merchant sends. A timerfd
//! (`timerfd_create(2)`) watched by the runtime's reactor wakes the sender on time.

use std::time::{Duration, Instant};

use timerfd::{ClockId, SetTimeFlags, TimerFd, TimerState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One sender's timer: a timerfd, or tokio's timer where none can be made.
#[derive(Debug)]
pub struct DueTimer(Option<AsyncFd<TimerFd>>);

impl DueTimer {
    /// A timerfd in the current runtime's reactor; tokio's timer if that fails (it is
    /// logged once per sender).
    pub fn in_reactor() -> DueTimer {
        match Self::timerfd() {
            Ok(fd) => DueTimer(Some(fd)),
            Err(e) => {
                tracing::warn!(error = %e, "no timerfd: requests go out on tokio's 1 ms timer");
                DueTimer(None)
            }
        }
    }

    fn timerfd() -> std::io::Result<AsyncFd<TimerFd>> {
        let fd = TimerFd::new_custom(ClockId::Monotonic, true, true)?;
        // `with_interest` is deprecated because an `AsRawFd` may hand out a descriptor it
        // does not own; `TimerFd` owns its `OwnedFd` and always returns that one, which
        // is what `register_with_interest` (unsafe, and unsafe code is forbidden) asks for.
        #[allow(deprecated)]
        AsyncFd::with_interest(fd, Interest::READABLE)
    }

    /// Returns at `due` (at once if it has passed).
    pub async fn sleep_until(&mut self, due: Instant) {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let Some(fd) = self.0.as_mut() else {
            tokio::time::sleep_until(due.into()).await;
            return;
        };
        if Self::wait(fd, left).await.is_err() {
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// Arms the timer for `left` (more than zero: a zero one-shot disarms it) and waits
    /// for it to expire.
    async fn wait(fd: &mut AsyncFd<TimerFd>, left: Duration) -> std::io::Result<()> {
        assert!(!left.is_zero(), "a zero one-shot disarms the timer");
        fd.get_mut()
            .set_state(TimerState::Oneshot(left), SetTimeFlags::Default);
        loop {
            let mut ready = fd.readable().await?;
            // A non-blocking read: the expirations since the last read, 0 if none yet.
            if ready.get_inner().read() > 0 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DueTimer;
    use std::time::{Duration, Instant};

    // Proves the wait ends at the due time, never before it, and to within the 1 ms a
    // tokio timer would add (bounds loose for a loaded machine: the median of 50 waits).
    #[tokio::test(flavor = "current_thread")]
    async fn wakes_at_the_due_time() {
        let mut timer = DueTimer::in_reactor();
        let mut late_us = vec![];
        for _ in 0..50 {
            let due = Instant::now() + Duration::from_micros(300);
            timer.sleep_until(due).await;
            let now = Instant::now();
            assert!(now >= due, "never early");
            late_us.push(now.duration_since(due).as_micros());
        }
        late_us.sort_unstable();
        assert!(late_us[25] < 1_000, "median lateness {} µs", late_us[25]);
        timer.sleep_until(Instant::now()).await;
    }
}
