//! Reconnection delays of an MQTT link (agent and server alike).

use std::time::Duration;

/// Reconnection delays: `initial` after the first failure, doubling with
/// every further failure up to `max`, and back to `initial` once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay after the first failed attempt.
    pub fn first(&self) -> Duration {
        self.initial.min(self.max)
    }

    /// The delay after another failure, `current` having been the last one.
    pub fn after(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max).max(self.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let mut d = b.first();
        let mut seen = vec![d];
        for _ in 0..6 {
            d = b.after(d);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        // A cap below the initial delay wins; a zero delay does not stick.
        let odd = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.first(), Duration::from_secs(1));
        assert_eq!(odd.after(Duration::ZERO), Duration::from_secs(1));
        let d = Backoff::default();
        assert_eq!(
            (d.initial, d.max),
            (Duration::from_millis(500), Duration::from_secs(60))
        );
    }
}
