//! Per-source budgets of the responders (pure: no IO, no clock reads).
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually owns a
//! whole /64, so per-address keys would let it multiply its budget).
//!
//! Memory is bounded: at most `max_sources` sources are tracked. When the
//! table is full, sources whose bucket has refilled (idle ones) are evicted;
//! if none is idle, a new source shares one overflow bucket with every other
//! untracked source. So a flood of spoofed source addresses can exhaust only
//! the overflow bucket, never the budget of a prober already tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked per budget by default.
pub const DEFAULT_MAX_SOURCES: usize = 4096;
/// A full table is swept for idle sources at most this often, so a flood
/// of new sources cannot make every packet scan the table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The key a budget is kept under: the address, IPv6 masked to its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// A refill rate and the most a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Units added per second.
    pub per_second: f64,
    /// Capacity: the largest burst allowed after an idle period.
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a capacity of `burst_seconds` worth of it.
    pub fn new(per_second: f64, burst_seconds: f64) -> Self {
        let per_second = per_second.max(0.0);
        Self {
            per_second,
            burst: (per_second * burst_seconds).max(1.0),
        }
    }

    /// How long an empty bucket takes to refill.
    fn refill_time(&self) -> Duration {
        if self.per_second > 0.0 {
            Duration::try_from_secs_f64(self.burst / self.per_second).unwrap_or(Duration::MAX)
        } else {
            Duration::MAX
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: &Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_second).min(rate.burst);
        // A clock reading earlier than `last` adds nothing and keeps `last`.
        if now > self.last {
            self.last = now;
        }
    }

    fn take(&mut self, rate: &Rate, cost: f64, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Token buckets per source, bounded in number.
#[derive(Debug)]
pub struct TokenBuckets {
    rate: Rate,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
    last_sweep: Option<Instant>,
}

impl TokenBuckets {
    /// Buckets of `rate`, tracking at most `max_sources` sources (at least 1).
    pub fn new(rate: Rate, max_sources: usize, now: Instant) -> Self {
        Self {
            rate,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            overflow: Bucket::full(&rate, now),
            last_sweep: None,
        }
    }

    /// Takes `cost` units from `source`'s bucket; false (and nothing taken)
    /// when the bucket holds less.
    pub fn take(&mut self, source: IpAddr, cost: f64, now: Instant) -> bool {
        let key = source_key(source);
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.take(&rate, cost, now);
        }
        if self.buckets.len() >= self.max_sources {
            self.sweep(now);
        }
        if self.buckets.len() < self.max_sources {
            let mut b = Bucket::full(&rate, now);
            let ok = b.take(&rate, cost, now);
            self.buckets.insert(key, b);
            ok
        } else {
            self.overflow.take(&rate, cost, now)
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Drops sources whose bucket is full again (they have been idle for a
    /// whole refill time): forgetting them loses nothing.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let idle = self.rate.refill_time();
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < idle);
    }
}

/// Open connections per source, capped. Entries exist only while a source
/// has a connection open, so the table is bounded by the responder's
/// connection limit.
#[derive(Debug, Default)]
pub struct OpenConnections {
    max_per_source: usize,
    open: HashMap<IpAddr, usize>,
}

impl OpenConnections {
    /// At most `max_per_source` (at least 1) connections open per source.
    pub fn new(max_per_source: usize) -> Self {
        Self {
            max_per_source: max_per_source.max(1),
            open: HashMap::new(),
        }
    }

    /// Counts one more open connection of `source`, unless it has the most
    /// allowed already (then false, nothing counted).
    pub fn open(&mut self, source: IpAddr) -> bool {
        let n = self.open.entry(source_key(source)).or_insert(0);
        if *n >= self.max_per_source {
            false
        } else {
            *n += 1;
            true
        }
    }

    /// Counts one connection of `source` closed.
    pub fn close(&mut self, source: IpAddr) {
        let key = source_key(source);
        if let Some(n) = self.open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Sources with a connection open.
    pub fn sources(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_allows_its_burst_then_its_rate() {
        let t = Instant::now();
        let mut b = TokenBuckets::new(Rate::new(10.0, 1.0), 8, t);
        let allowed = (0..20).filter(|_| b.take(v4(1), 1.0, t)).count();
        assert_eq!(allowed, 10);
        // 100 ms later one more token has arrived, not two.
        assert!(b.take(v4(1), 1.0, t + ms(100)));
        assert!(!b.take(v4(1), 1.0, t + ms(100)));
        // Another source has its own bucket.
        assert!(b.take(v4(2), 1.0, t));
        // Never more than the burst, however long the pause.
        let later = t + Duration::from_secs(3600);
        let allowed = (0..20).filter(|_| b.take(v4(1), 1.0, later)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn costs_are_weighed_and_a_refusal_takes_nothing() {
        let t = Instant::now();
        let mut b = TokenBuckets::new(Rate::new(100.0, 60.0), 8, t);
        assert!(b.take(v4(1), 5000.0, t));
        assert!(!b.take(v4(1), 1001.0, t));
        assert!(b.take(v4(1), 1000.0, t));
        assert!(!b.take(v4(1), 1.0, t));
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let t = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBuckets::new(Rate::new(1.0, 1.0), 8, t);
        assert!(b.take(v4(1), 1.0, t));
        assert!(!b.take(v4(1), 1.0, t - Duration::from_secs(5)));
        assert!(!b.take(v4(1), 1.0, t + ms(500)));
        assert!(b.take(v4(1), 1.0, t + ms(1000)));
    }

    #[test]
    fn table_is_bounded_and_tracked_sources_keep_their_budget() {
        let t = Instant::now();
        let mut b = TokenBuckets::new(Rate::new(10.0, 1.0), 4, t);
        assert!(b.take(v4(1), 1.0, t));
        // A flood of new sources: the table stays at 4 and they share the
        // overflow bucket (10 tokens between them all).
        let allowed = (2..=250u8).filter(|&i| b.take(v4(i), 1.0, t)).count();
        assert_eq!(b.tracked(), 4);
        assert_eq!(allowed, 3 + 10);
        // The first source still has its own 9 tokens left.
        let mine = (0..20).filter(|_| b.take(v4(1), 1.0, t)).count();
        assert_eq!(mine, 9);
    }

    #[test]
    fn idle_sources_are_evicted_when_the_table_is_full() {
        let t = Instant::now();
        let mut b = TokenBuckets::new(Rate::new(10.0, 1.0), 2, t);
        assert!(b.take(v4(1), 1.0, t));
        assert!(b.take(v4(2), 1.0, t));
        // Source 2 stays busy; source 1 goes idle for more than a refill.
        let later = t + Duration::from_secs(2);
        assert!(b.take(v4(2), 1.0, later - ms(100)));
        assert!(b.take(v4(3), 1.0, later));
        assert_eq!(b.tracked(), 2);
        // Source 3 got source 1's place: its own bucket, not the overflow.
        let allowed = (0..20).filter(|_| b.take(v4(3), 1.0, later)).count();
        assert_eq!(allowed, 9);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(source_key(mapped), v4(7));
        assert_eq!(
            source_key(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn open_connections_are_capped_per_source_and_forgotten_at_zero() {
        let mut o = OpenConnections::new(2);
        assert!(o.open(v4(1)));
        assert!(o.open(v4(1)));
        assert!(!o.open(v4(1)));
        assert!(o.open(v4(2)));
        o.close(v4(1));
        assert!(o.open(v4(1)));
        o.close(v4(1));
        o.close(v4(1));
        o.close(v4(2));
        assert_eq!(o.sources(), 0);
        // Closing what was never open changes nothing.
        o.close(v4(9));
        assert_eq!(o.sources(), 0);
    }
}
