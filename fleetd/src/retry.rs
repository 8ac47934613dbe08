//! Capped exponential back-off: the one every retry loop of fleetd uses.
//!
//! A [`Backoff`] hands out the pauses between attempts: `initial`, then
//! twice the previous one, never more than `max`, and from the start again
//! after [`Backoff::reset`] (a success). With [`Backoff::immediate_first`]
//! the first retry does not wait at all. There is no jitter: each loop
//! retries its own connection (one etcd client, one D-Bus connection, one
//! listener), so machines do not fall into step with each other through it.
//!
//! The loops differ in how they wait (some also wake on a new lease or a
//! change in a cache), so this module gives the delays and a cancellable
//! [`sleep`], not a loop of its own.
//!
//! Each loop's delays are named below, in one place, so they can be read
//! side by side and are pinned by the tests at the end of this file.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How much each delay grows over the previous one.
const FACTOR: u32 = 2;

/// Retries of one etcd request within its timeout: at once, then 10 ms
/// doubling to 200 ms. The first retry is immediate because the client picks
/// an endpoint at random, so it most likely reaches another member.
pub(crate) const ETCD_REQUEST: Backoff =
    Backoff::new(Duration::from_millis(10), Duration::from_millis(200)).immediate_first();

/// The registry cache's failed list or broken watch: 100 ms doubling to
/// 5 s, reset once events flow again.
pub(crate) const CACHE: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A failed `accept` on an API listener (e.g. out of file descriptors):
/// 10 ms doubling to 1 s, reset by the next accepted connection.
#[cfg(feature = "daemon")]
pub(crate) const API_ACCEPT: Backoff =
    Backoff::new(Duration::from_millis(10), Duration::from_secs(1));

/// The engine's failed leadership attempt or schedule write: 500 ms
/// doubling to 30 s.
#[cfg(feature = "daemon")]
pub(crate) const ENGINE: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// The unit-state publisher's failed write to etcd or subscription to
/// systemd: 500 ms doubling to 30 s.
#[cfg(feature = "daemon")]
pub(crate) const PUBLISHER: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// The shortest pause of the heart's retries.
#[cfg(feature = "daemon")]
const HEART_MIN: Duration = Duration::from_secs(1);

/// The longest pause between two machine registration attempts, unless the
/// machine TTL is shorter.
#[cfg(feature = "daemon")]
const HEART_REGISTER_MAX: Duration = Duration::from_secs(60);

/// The heart's machine registration with lease TTL `ttl`: 1 s doubling to
/// 60 s or `ttl`, whichever is shorter.
#[cfg(feature = "daemon")]
pub(crate) fn heart_register(ttl: Duration) -> Backoff {
    Backoff::new(HEART_MIN, HEART_REGISTER_MAX.min(ttl))
}

/// The heart's failed lease refresh, normally sent every `period`: 1 s (or
/// `period` if shorter) doubling to `period`.
#[cfg(feature = "daemon")]
pub(crate) fn heart_refresh(period: Duration) -> Backoff {
    Backoff::new(HEART_MIN.min(period), period)
}

/// Delays that grow from `initial` up to `max` and start over after
/// [`Backoff::reset`]; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The first delay (the second with [`Backoff::immediate_first`]), and
    /// the one after a reset.
    initial: Duration,
    /// The longest delay.
    max: Duration,
    /// Whether the first delay (after a reset too) is zero.
    immediate: bool,
    /// The delay [`Backoff::next_delay`] returns next; `None` before the
    /// first one.
    next: Option<Duration>,
}

impl Backoff {
    /// Delays from `initial` to `max` (`max` is raised to `initial` if
    /// smaller).
    pub(crate) const fn new(initial: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < initial.as_nanos() {
            initial
        } else {
            max
        };
        Backoff {
            initial,
            max,
            immediate: false,
            next: None,
        }
    }

    /// The same delays after a first one of zero.
    pub(crate) const fn immediate_first(self) -> Self {
        Backoff {
            immediate: true,
            ..self
        }
    }

    /// The delay before the next attempt; the following one grows.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = match self.next {
            Some(delay) => delay,
            None if self.immediate => {
                self.next = Some(self.initial);
                return Duration::ZERO;
            }
            None => self.initial,
        };
        self.next = Some(delay.saturating_mul(FACTOR).min(self.max));
        delay
    }

    /// Start over (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = None;
    }

    /// Sleep for the next delay; false if `cancel` fired first.
    pub(crate) async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        sleep(self.next_delay(), cancel).await
    }
}

/// Sleep for `delay`; false if `cancel` fired first.
pub(crate) async fn sleep(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next `n` delays, in milliseconds.
    fn millis(backoff: &mut Backoff, n: usize) -> Vec<u128> {
        (0..n).map(|_| backoff.next_delay().as_millis()).collect()
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(millis(&mut b, 5), [1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn a_cap_below_the_first_delay_is_raised_to_it() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(millis(&mut b, 3), [2000, 2000, 2000]);
    }

    #[test]
    fn immediate_first_starts_at_zero_after_a_reset_too() {
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).immediate_first();
        assert_eq!(millis(&mut b, 5), [0, 10, 20, 40, 40]);
        b.reset();
        assert_eq!(millis(&mut b, 2), [0, 10]);
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.next_delay(), Duration::MAX);
        assert_eq!(b.next_delay(), Duration::MAX);
    }

    // The sequences each loop used before the back-offs were merged here.

    #[test]
    fn etcd_requests_retry_at_once_then_from_10ms_to_200ms() {
        let mut b = ETCD_REQUEST;
        assert_eq!(millis(&mut b, 8), [0, 10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn the_cache_backs_off_from_100ms_to_5s() {
        let mut b = CACHE;
        assert_eq!(
            millis(&mut b, 8),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        b.reset();
        assert_eq!(millis(&mut b, 1), [100]);
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn the_api_accept_loop_backs_off_from_10ms_to_1s() {
        let mut b = API_ACCEPT;
        assert_eq!(
            millis(&mut b, 9),
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000]
        );
        b.reset();
        assert_eq!(millis(&mut b, 1), [10]);
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn the_engine_and_the_publisher_back_off_from_500ms_to_30s() {
        let want = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000];
        for mut b in [ENGINE, PUBLISHER] {
            assert_eq!(millis(&mut b, 8), want);
            b.reset();
            assert_eq!(millis(&mut b, 1), [500]);
        }
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn the_heart_registers_from_1s_to_60s_or_the_ttl() {
        let mut b = heart_register(Duration::from_secs(30));
        assert_eq!(
            millis(&mut b, 7),
            [1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        let mut b = heart_register(Duration::from_secs(300));
        assert_eq!(
            millis(&mut b, 8),
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        let mut b = heart_register(Duration::from_millis(500));
        assert_eq!(millis(&mut b, 2), [1000, 1000]);
    }

    #[cfg(feature = "daemon")]
    #[test]
    fn the_heart_refreshes_from_1s_to_its_period() {
        let mut b = heart_refresh(Duration::from_secs(10));
        assert_eq!(millis(&mut b, 6), [1000, 2000, 4000, 8000, 10000, 10000]);
        b.reset();
        assert_eq!(millis(&mut b, 1), [1000]);
        let mut b = heart_refresh(Duration::from_millis(300));
        assert_eq!(millis(&mut b, 2), [300, 300]);
    }
}
