//! Failed-login rate limiting: a fixed window of failures per key, in bounded memory.
//!
//! A failed login counts against the client's address, and against the user name it claimed
//! when it got as far as a nonce issued for that name. Once an address has `limit` failures
//! inside one window, every login attempt from it is refused (HTTP 429 `rate_limited`) before
//! any check, until the window that started with its first failure ends. A user name over its
//! limit is not refused outright: anyone can fail logins in any name, and an Ed25519 key cannot
//! be guessed, so the caller still checks the signature, lets a valid one through and answers
//! only a failed attempt with 429 (see `Authenticator::login`). Successful logins count nothing
//! and reset nothing, so a success cannot be used to wash away an attacker's failures.
//!
//! Memory is bounded: at most `max_keys` keys are tracked per limiter. Expired windows are
//! dropped first; when the table is still full, the oldest window is evicted. An attacker who
//! sprays fresh keys (user names, addresses) can therefore evict other keys' counters, but only
//! by spending `max_keys` failed attempts per eviction round, each of which is itself counted
//! against the attacker's own address.
//!
//! Time is passed in by the caller (milliseconds since the Unix epoch), which keeps this module
//! free of clocks and makes its tests exact. A clock that steps backwards makes the windows
//! that started before the step last longer; a key whose window ended is always counted in a
//! fresh one, even when an older window still sits before it in the pruning order.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Limits for failed logins. The defaults are the documented ones (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Length of one counting window; a blocked key recovers when its window ends.
    pub window: Duration,
    /// Failures allowed per user name inside one window.
    pub max_failures_per_user: u32,
    /// Failures allowed per client address (IPv6: per /64 prefix) inside one window.
    pub max_failures_per_ip: u32,
    /// Keys tracked at most, per limiter (users and addresses each have their own table).
    pub max_tracked_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            max_failures_per_user: 10,
            max_failures_per_ip: 20,
            max_tracked_keys: 100_000,
        }
    }
}

/// A refused attempt: the key is blocked for this many more whole seconds (at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

/// One counting window of one key.
#[derive(Clone, Copy, Debug)]
struct Window {
    start_ms: u64,
    failures: u32,
}

struct Table<K> {
    windows: HashMap<K, Window>,
    /// Keys in the order their current window started, so that expired windows sit at the
    /// front. An element whose start differs from the key's window in `windows` is stale (the
    /// key was evicted and came back) and is skipped.
    order: VecDeque<(K, u64)>,
}

/// Counts failures per key in fixed windows, tracking at most `max_keys` keys.
pub struct FailureLimiter<K> {
    limit: u32,
    window_ms: u64,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// A limiter allowing `limit` failures per key per `window`, tracking at most `max_keys`
    /// keys (at least one).
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            max_keys: max_keys.max(1),
            table: Mutex::new(Table {
                windows: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// `Err` with the seconds left if `key` has used up its failures in its current window.
    pub fn check(&self, key: &K, now_ms: u64) -> Result<(), RetryAfter> {
        let table = self.lock();
        match table.windows.get(key) {
            Some(w) if w.failures >= self.limit => {
                let end = w.start_ms.saturating_add(self.window_ms);
                if now_ms >= end {
                    Ok(())
                } else {
                    Err(RetryAfter((end - now_ms).div_ceil(1000).max(1)))
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure against `key`.
    pub fn record_failure(&self, key: &K, now_ms: u64) {
        let mut table = self.lock();
        self.prune(&mut table, now_ms);
        // After a backwards step of the clock `order` is not sorted by start, so `prune` may
        // stop before a window that ended: such a window starts afresh here, and `order`
        // (which then holds stale elements) is bounded on its own.
        while table.order.len() >= 2 * self.max_keys {
            Self::evict_oldest(&mut table);
        }
        if let Some(w) = table.windows.get_mut(key) {
            if now_ms < w.start_ms.saturating_add(self.window_ms) {
                w.failures = w.failures.saturating_add(1);
                return;
            }
            *w = Window {
                start_ms: now_ms,
                failures: 1,
            };
            table.order.push_back((key.clone(), now_ms));
            return;
        }
        while table.windows.len() >= self.max_keys {
            Self::evict_oldest(&mut table);
        }
        table.windows.insert(
            key.clone(),
            Window {
                start_ms: now_ms,
                failures: 1,
            },
        );
        table.order.push_back((key.clone(), now_ms));
    }

    /// Number of keys currently tracked (windows not yet pruned included).
    pub fn tracked_keys(&self) -> usize {
        self.lock().windows.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<K>> {
        // A panic while holding the lock cannot leave the table inconsistent in a way that
        // matters (at worst a counter is off by one), so keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every window that has ended by `now_ms`.
    fn prune(&self, table: &mut Table<K>, now_ms: u64) {
        while let Some((_, start)) = table.order.front() {
            if start.saturating_add(self.window_ms) > now_ms {
                break;
            }
            Self::evict_oldest(table);
        }
    }

    /// Removes the front of `order` and, unless it is stale, its window.
    fn evict_oldest(table: &mut Table<K>) {
        if let Some((key, start)) = table.order.pop_front()
            && table.windows.get(&key).is_some_and(|w| w.start_ms == start)
        {
            table.windows.remove(&key);
        }
        if table.order.is_empty() {
            // `order` and `windows` hold the same keys; should they ever disagree, the
            // eviction loop in `record_failure` must still end.
            table.windows.clear();
        }
    }
}

/// The two limiters a login goes through: per claimed user name and per client address.
pub struct LoginRateLimiter {
    users: FailureLimiter<String>,
    addresses: FailureLimiter<IpAddr>,
}

impl LoginRateLimiter {
    /// Limiters with the given limits.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            users: FailureLimiter::new(
                config.max_failures_per_user,
                config.window,
                config.max_tracked_keys,
            ),
            addresses: FailureLimiter::new(
                config.max_failures_per_ip,
                config.window,
                config.max_tracked_keys,
            ),
        }
    }

    /// `Err` with the wait if the address (IPv6: its /64) has used up its failures.
    pub fn check_address(&self, ip: IpAddr, now_ms: u64) -> Result<(), RetryAfter> {
        self.addresses.check(&address_key(ip), now_ms)
    }

    /// `Err` with the wait if the user name has used up its failures. Not a reason to refuse
    /// a login whose signature is valid: anyone can spend a user's failures.
    pub fn check_user(&self, user: &str, now_ms: u64) -> Result<(), RetryAfter> {
        self.users.check(&user.to_owned(), now_ms)
    }

    /// Counts one failed login against both the user name and the address.
    pub fn record_failure(&self, user: &str, ip: IpAddr, now_ms: u64) {
        self.users.record_failure(&user.to_owned(), now_ms);
        self.addresses.record_failure(&address_key(ip), now_ms);
    }

    /// Records a failed login against the client address only.
    pub fn record_address_failure(&self, ip: IpAddr, now_ms: u64) {
        self.addresses.record_failure(&address_key(ip), now_ms);
    }
}

/// The key an address is counted under. One IPv6 host usually owns a whole /64, so counting
/// single IPv6 addresses would let it retry 2^64 times; an IPv4-mapped IPv6 address is the
/// IPv4 address it maps.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn blocks_after_limit_and_recovers_after_window() {
        let l = FailureLimiter::new(3, MIN, 100);
        let k = "alice".to_owned();
        for i in 0..3 {
            assert_eq!(
                l.check(&k, 1_000 + i),
                Ok(()),
                "failure {i} must not block yet"
            );
            l.record_failure(&k, 1_000 + i);
        }
        assert_eq!(l.check(&k, 1_010), Err(RetryAfter(60)));
        assert_eq!(l.check(&k, 60_500), Err(RetryAfter(1)));
        assert_eq!(l.check(&k, 61_000), Ok(()));
        // The next failure opens a new window with one failure.
        l.record_failure(&k, 61_000);
        assert_eq!(l.check(&k, 61_001), Ok(()));
        assert_eq!(l.tracked_keys(), 1);
    }

    /// After the clock steps back, a key first seen then sits behind older windows in the
    /// pruning order; once its own window ends it must still count afresh and block again,
    /// not keep adding failures to an ended window that never blocks.
    #[test]
    fn a_backwards_clock_step_does_not_lift_the_limit() {
        let l = FailureLimiter::new(3, MIN, 100);
        let old = "before-the-step".to_owned();
        l.record_failure(&old, 1_000_000);
        // The clock steps back by ten minutes.
        let k = "after-the-step".to_owned();
        for t in 400_000..400_003 {
            l.record_failure(&k, t);
        }
        assert!(l.check(&k, 400_010).is_err());
        // k's window ended (the older window still sits before it): new failures count again.
        for t in 470_000..470_003 {
            assert_eq!(l.check(&k, t), Ok(()));
            l.record_failure(&k, t);
        }
        assert_eq!(l.check(&k, 470_010), Err(RetryAfter(60)));
        // The order index stays bounded however long the step is.
        for i in 0..1_000u64 {
            l.record_failure(&k, 500_000 + i * 60_000);
        }
        assert!(l.lock().order.len() <= 200);
    }

    #[test]
    fn keys_are_independent() {
        let l = FailureLimiter::new(1, MIN, 100);
        l.record_failure(&"a".to_owned(), 0);
        assert!(l.check(&"a".to_owned(), 1).is_err());
        assert_eq!(l.check(&"b".to_owned(), 1), Ok(()));
    }

    #[test]
    fn memory_is_bounded_and_expired_keys_dropped() {
        let l = FailureLimiter::new(5, MIN, 10);
        for i in 0..1_000u64 {
            l.record_failure(&i, i);
            assert!(l.tracked_keys() <= 10);
        }
        // The newest key survived eviction: four more failures block it.
        for t in 1_000..1_004 {
            l.record_failure(&999, t);
        }
        assert!(l.check(&999, 1_005).is_err());
        // The oldest was evicted: four more failures start a fresh count that does not block.
        for t in 1_010..1_014 {
            l.record_failure(&0, t);
        }
        assert_eq!(l.check(&0, 1_015), Ok(()));
        assert_eq!(l.tracked_keys(), 10);
        // Once every window has ended, the next failure prunes them all.
        l.record_failure(&5_000, 200_000);
        assert_eq!(l.tracked_keys(), 1);
    }

    #[test]
    fn evicted_key_coming_back_is_counted_afresh() {
        let l = FailureLimiter::new(2, MIN, 2);
        l.record_failure(&1, 0);
        l.record_failure(&2, 1);
        l.record_failure(&3, 2); // evicts 1
        l.record_failure(&1, 3); // evicts 2; 1 starts a new window
        l.record_failure(&1, 4);
        assert!(l.check(&1, 5).is_err());
        assert_eq!(l.check(&2, 5), Ok(()));
        assert!(l.tracked_keys() <= 2);
    }

    #[test]
    fn login_limiter_counts_users_and_addresses_apart() {
        let cfg = RateLimitConfig {
            window: MIN,
            max_failures_per_user: 2,
            max_failures_per_ip: 3,
            max_tracked_keys: 100,
        };
        let l = LoginRateLimiter::new(&cfg);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        l.record_failure("u", ip, 0);
        l.record_failure("u", ip, 10_000);
        // The user is over its limit; another user is not, nor the address (2 < 3).
        assert_eq!(l.check_user("u", 10_000), Err(RetryAfter(50)));
        assert_eq!(l.check_user("v", 10_000), Ok(()));
        assert_eq!(l.check_address(ip, 10_000), Ok(()));
        l.record_failure("v", ip, 20_000);
        assert_eq!(l.check_address(ip, 20_000), Err(RetryAfter(40)));
        assert_eq!(l.check_user("w", 20_000), Ok(()));
        // An address-only failure leaves the user names alone.
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        l.record_address_failure(other, 20_000);
        assert_eq!(l.check_user("v", 20_000), Ok(()));
    }

    #[test]
    fn ipv6_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a.into()), address_key(b.into()));
        assert_ne!(address_key(a.into()), address_key(c.into()));
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_key(mapped.into()),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
    }
}
