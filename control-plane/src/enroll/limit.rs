//! Token buckets in front of the enrollment endpoints: one for everyone and
//! one per peer address (an IPv6 peer by its /64, which one host gets for
//! free), so that knowing the server's URL lets nobody flood it or the
//! store. Every request costs a token before it is looked at, a refused one
//! as much as a good one: guessing costs the same as enrolling.
//!
//! Time is passed in (`now`), so the buckets are tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Peers tracked at most; past it, buckets that refilled are forgotten
/// first, and a peer that finds no room is held by the global bucket alone.
const MAX_PEERS: usize = 16 * 1024;

/// A rate and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// How long until a token is there (zero: now).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        if rate.per_sec <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / rate.per_sec).min(3600.0))
    }
}

/// A global bucket and one per peer.
#[derive(Debug)]
pub struct Limiter {
    global_rate: Rate,
    peer_rate: Rate,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    global: Bucket,
    peers: HashMap<IpAddr, Bucket>,
}

/// Refused: try again after this long (at least a second, as `Retry-After`
/// counts whole seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    pub fn secs(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The key a peer is limited by: its address, an IPv6 one cut to its /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Limiter {
    pub fn new(global: Rate, peer: Rate, now: Instant) -> Self {
        Self {
            global_rate: global,
            peer_rate: peer,
            state: Mutex::new(State {
                global: Bucket::full(global, now),
                peers: HashMap::new(),
            }),
        }
    }

    /// Takes a token for a request from `peer` (unknown: the global bucket
    /// only), or says how long to wait. A refusal takes nothing, so a peer
    /// held back by the global bucket keeps its own tokens.
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), RetryAfter> {
        // A poisoned lock: the state is plain numbers, still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { global, peers } = &mut *state;
        global.refill(self.global_rate, now);
        let key = peer.map(peer_key);
        if let Some(key) = key
            && !peers.contains_key(&key)
            && peers.len() >= MAX_PEERS
        {
            let rate = self.peer_rate;
            peers.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
        }
        let peer_bucket = match key {
            Some(key) if peers.len() < MAX_PEERS || peers.contains_key(&key) => Some(
                peers
                    .entry(key)
                    .or_insert_with(|| Bucket::full(self.peer_rate, now)),
            ),
            _ => None,
        };
        let mut wait = global.wait(self.global_rate);
        if let Some(b) = &peer_bucket {
            let mut b = **b;
            b.refill(self.peer_rate, now);
            wait = wait.max(b.wait(self.peer_rate));
        }
        if !wait.is_zero() {
            return Err(RetryAfter(wait));
        }
        global.tokens -= 1.0;
        if let Some(b) = peer_bucket {
            b.refill(self.peer_rate, now);
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Peers tracked now.
    pub fn peers(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.peers.len())
            .unwrap_or_else(|e| e.into_inner().peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn rate(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_peer_gets_its_burst_then_waits_for_its_rate() {
        let t0 = Instant::now();
        let l = Limiter::new(rate(100.0, 100.0), rate(1.0, 3.0), t0);
        for _ in 0..3 {
            l.check(ip("10.0.0.1"), t0).unwrap();
        }
        let wait = l.check(ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait.secs(), 1);
        // Another peer is not held back by the first.
        l.check(ip("10.0.0.2"), t0).unwrap();
        // A second later, one more.
        let t1 = t0 + Duration::from_secs(1);
        l.check(ip("10.0.0.1"), t1).unwrap();
        assert!(l.check(ip("10.0.0.1"), t1).is_err());
    }

    #[test]
    fn the_global_bucket_holds_many_peers_back_and_refusals_cost_nothing() {
        let t0 = Instant::now();
        let l = Limiter::new(rate(0.5, 2.0), rate(10.0, 10.0), t0);
        l.check(ip("10.0.0.1"), t0).unwrap();
        l.check(ip("10.0.0.2"), t0).unwrap();
        let wait = l.check(ip("10.0.0.3"), t0).unwrap_err();
        assert_eq!(wait.secs(), 2);
        assert!(l.check(None, t0).is_err());
        // Refused requests did not drain the global bucket further.
        l.check(ip("10.0.0.3"), t0 + Duration::from_secs(2))
            .unwrap();
    }

    #[test]
    fn an_ipv6_host_is_one_peer_for_its_whole_64() {
        let t0 = Instant::now();
        let l = Limiter::new(rate(100.0, 100.0), rate(1.0, 2.0), t0);
        l.check(ip("2001:db8:1:2::1"), t0).unwrap();
        l.check(ip("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert!(l.check(ip("2001:db8:1:2::abcd"), t0).is_err());
        l.check(ip("2001:db8:1:3::1"), t0).unwrap();
        // An IPv4-mapped address is its IPv4 peer.
        l.check(ip("192.0.2.1"), t0).unwrap();
        l.check(ip("::ffff:192.0.2.1"), t0).unwrap();
        assert!(l.check(ip("192.0.2.1"), t0).is_err());
    }

    #[test]
    fn peers_are_bounded_by_forgetting_those_that_refilled() {
        let t0 = Instant::now();
        let l = Limiter::new(rate(1e9, 1e9), rate(1.0, 1.0), t0);
        for i in 0..MAX_PEERS as u32 {
            l.check(Some(IpAddr::V4(i.into())), t0).unwrap();
        }
        assert_eq!(l.peers(), MAX_PEERS);
        // All drained at t0: a newcomer is held by the global bucket only.
        l.check(ip("255.255.255.255"), t0).unwrap();
        assert_eq!(l.peers(), MAX_PEERS);
        // Later they refilled and are forgotten.
        l.check(ip("255.255.255.255"), t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(l.peers(), 1);
    }
}
