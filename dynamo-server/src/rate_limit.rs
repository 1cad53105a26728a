//! Request rate limits per client on the HTTP API.
//!
//! Each client gets a token bucket (GCRA, from the `governor` crate):
//! `per_second` requests a second on average, up to `burst` at once. What
//! a client is ([`RateKey`]):
//!
//! - with client authentication on (`http.tokens_file`), a request with a
//!   valid token counts against that token, by name: clients behind one
//!   proxy or NAT are told apart, and one token used from many addresses
//!   is still one client;
//! - a request without a valid token (authentication off, or no, a
//!   malformed, an unknown or an expired token) counts against its
//!   address: an IPv4 address, or an IPv6 /64 network (what one host or
//!   site is routinely given, so rotating addresses within it does not
//!   escape the limit); an IPv4-mapped IPv6 address counts as its IPv4
//!   address. The address is checked before a bad token is answered
//!   `401`, so guessing tokens is held to the same rate.
//!
//! A request over its client's limit is answered `429 Too Many Requests`
//! with `Retry-After` (whole seconds, rounded up) before it is routed, so
//! it costs the node no store or replica work. `/health` is never limited:
//! load balancers and `dev` poll it.
//!
//! Memory is bounded by the clients seen recently: the state of a client
//! whose bucket has refilled is dropped every [`SWEEP_EVERY`] checks, so a
//! scan from many addresses does not grow it for good (tokens are bounded
//! by the tokens file).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Checks between two sweeps of refilled clients' state.
pub const SWEEP_EVERY: u64 = 4096;

/// The client a request counts against (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// An IPv4 address or an IPv6 /64 network (made by [`RateKey::address`]).
    Address(IpAddr),
    /// A client token, by its name.
    Token(Arc<str>),
}

impl RateKey {
    /// The key of a request from `client` without a valid token: its IPv4
    /// address, or its IPv6 /64 (an IPv4-mapped address is its IPv4 one).
    pub fn address(client: IpAddr) -> Self {
        RateKey::Address(client_key(client))
    }

    /// The key of a request with the valid token named `name`.
    pub fn token(name: Arc<str>) -> Self {
        RateKey::Token(name)
    }
}

impl std::fmt::Display for RateKey {
    /// `127.0.0.1`, `2001:db8::` (a /64), or `token 'name'`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::Address(ip) => write!(f, "{ip}"),
            RateKey::Token(name) => write!(f, "token '{name}'"),
        }
    }
}

/// Rate limits per client (see the module docs).
pub struct ClientRateLimiter {
    limiter: DefaultKeyedRateLimiter<RateKey>,
    clock: DefaultClock,
    checks: AtomicU64,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl std::fmt::Debug for ClientRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl ClientRateLimiter {
    /// `per_second` requests a second per client on average, `burst` at
    /// most at once (a burst below `per_second` is raised to it).
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let burst = burst.max(per_second);
        ClientRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            per_second,
            burst,
        }
    }

    /// The limiter `http.rate_limit_per_s` and `http.rate_limit_burst`
    /// describe; `None` when `per_second` is 0 (no limit).
    pub fn from_config(per_second: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Some(ClientRateLimiter::new(per_second, burst))
    }

    /// Counts one request from the address `client` (without a valid
    /// token): `Ok` if it is within the limit, else how long until it
    /// would be. The same as [`check_key`](Self::check_key) with
    /// [`RateKey::address`].
    ///
    /// # Errors
    /// The wait, when `client` is over its limit.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_key(&RateKey::address(client))
    }

    /// Counts one request of the client `key`: `Ok` if it is within the
    /// limit, else how long until it would be.
    ///
    /// # Errors
    /// The wait, when `key` is over its limit.
    pub fn check_key(&self, key: &RateKey) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients (addresses and tokens) whose state is held.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// The bucket `client` counts against: its IPv4 address, or its IPv6 /64.
fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_over_its_burst_waits_and_others_are_not_affected() {
        let limiter = ClientRateLimiter::from_config(1, 3).unwrap();
        for _ in 0..3 {
            limiter.check(ip("10.0.0.1")).unwrap();
        }
        let wait = limiter.check(ip("10.0.0.1")).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        limiter.check(ip("10.0.0.2")).unwrap();
        limiter.check(ip("::1")).unwrap();
    }

    #[test]
    fn zero_means_no_limit_and_a_small_burst_is_raised_to_the_rate() {
        assert!(ClientRateLimiter::from_config(0, 10).is_none());
        let limiter = ClientRateLimiter::from_config(5, 1).unwrap();
        for _ in 0..5 {
            limiter.check(ip("10.0.0.1")).unwrap();
        }
        assert!(limiter.check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn refilled_addresses_are_forgotten() {
        let limiter = ClientRateLimiter::from_config(1_000_000, 1_000_000).unwrap();
        for i in 0..SWEEP_EVERY - 1 {
            limiter.check(IpAddr::from((i as u32).to_be_bytes())).unwrap();
        }
        assert_eq!(limiter.clients(), (SWEEP_EVERY - 1) as usize);
        // A million a second refills a bucket within microseconds: a sweep
        // finds every address but the one still checking back to full.
        // Each round of checks from one address runs one sweep.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while limiter.clients() > 2 {
            assert!(std::time::Instant::now() < deadline, "{} addresses held", limiter.clients());
            for _ in 0..SWEEP_EVERY {
                limiter.check(ip("10.9.9.9")).unwrap();
            }
        }
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_its_ipv4() {
        let limiter = ClientRateLimiter::from_config(1, 2).unwrap();
        limiter.check(ip("2001:db8:1:2::1")).unwrap();
        limiter.check(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(limiter.check(ip("2001:db8:1:2:abcd::7")).is_err(), "the same /64");
        limiter.check(ip("2001:db8:1:3::1")).unwrap();
        limiter.check(ip("10.0.0.1")).unwrap();
        limiter.check(ip("::ffff:10.0.0.1")).unwrap();
        assert!(limiter.check(ip("10.0.0.1")).is_err(), "mapped and plain IPv4 share a bucket");
    }

    /// A token is a client of its own, wherever it comes from, and apart
    /// from the address it comes from.
    #[test]
    fn tokens_are_limited_by_name_apart_from_addresses() {
        let limiter = ClientRateLimiter::from_config(1, 2).unwrap();
        let ci = RateKey::token(Arc::from("ci"));
        limiter.check_key(&ci).unwrap();
        limiter.check_key(&RateKey::token(Arc::from("ci"))).unwrap();
        assert!(limiter.check_key(&ci).is_err(), "the same name is the same bucket");
        limiter.check_key(&RateKey::token(Arc::from("other"))).unwrap();
        limiter.check(ip("10.0.0.1")).unwrap();
        limiter.check(ip("10.0.0.1")).unwrap();
        assert!(limiter.check(ip("10.0.0.1")).is_err());
        assert!(
            limiter.check_key(&RateKey::token(Arc::from("10.0.0.1"))).is_ok(),
            "a name is not an address"
        );
        assert_eq!(ci.to_string(), "token 'ci'");
        assert_eq!(RateKey::address(ip("2001:db8:1:2::9")).to_string(), "2001:db8:1:2::");
        assert_eq!(limiter.clients(), 4);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
