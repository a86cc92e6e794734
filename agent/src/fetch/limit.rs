//! Bandwidth cap (a token bucket shared by all downloads of a client) and the
//! retry policy (exponential backoff with jitter).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` bytes per second with a burst of a quarter second.
/// Consumers take what they received and sleep off any debt, so the long-run
/// rate over all concurrent downloads stays at `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 4.0).max(16.0 * 1024.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Accounts for `n` bytes, sleeping if the bucket is in debt.
    pub async fn consume(&self, n: usize) {
        let wait = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.burst) - n as f64;
            st.1 = now;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How often and how patiently failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (0-based): `base·2^attempt`
    /// capped at `max_delay`, then a random point in its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = p.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            assert!(p.delay(30) <= Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_enforces_the_rate_after_the_burst() {
        let l = RateLimiter::new(1024 * 1024);
        let start = Instant::now();
        for _ in 0..16 {
            l.consume(256 * 1024).await;
        }
        // 4 MiB at 1 MiB/s with a 256 KiB burst: about 3.75 s of (virtual) time.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(3700), "{took:?}");
        assert!(took <= Duration::from_millis(4100), "{took:?}");
    }
}
