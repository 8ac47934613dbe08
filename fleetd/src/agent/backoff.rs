//! Capped exponential backoff for the agent's retry loops.

use std::time::Duration;

/// Delays that double from `min` up to `max`, and start over after
/// [`Backoff::reset`].
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    /// The first delay, and the one after a reset.
    min: Duration,
    /// The longest delay.
    max: Duration,
    /// The delay [`Backoff::next_delay`] returns next.
    next: Duration,
}

impl Backoff {
    /// Delays from `min` to `max` (`max` is raised to `min` if smaller).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Start over from `min` (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
