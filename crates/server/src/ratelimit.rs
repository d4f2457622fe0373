//! Per write key rate limits on the collection API: two token buckets per project, one
//! counting requests and one counting messages, refilled continuously.
//!
//! Buckets are keyed by project name (the write key resolved), so rotating a key does not
//! hand out a fresh allowance. The map is bounded: a bucket that has refilled to its burst
//! is the same as no bucket, so those go first; past that the least recently used one is
//! dropped (which can only be generous to it, never unfair to others). Pure apart from the
//! lock: the caller passes the time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Which limit a request ran into, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    /// `requests_per_second` or `events_per_second`: the config key of the limit.
    pub limit: &'static str,
    pub rate_per_second: f64,
    pub burst: f64,
    /// Whole seconds until the bucket holds enough again (at least 1).
    pub retry_after_s: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.updated = now;
    }
}

#[derive(Clone, Copy, Debug)]
struct Buckets {
    requests: Bucket,
    events: Bucket,
    used: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Limits {
    requests_per_second: f64,
    requests_burst: f64,
    events_per_second: f64,
    events_burst: f64,
}

#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, Buckets>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, project: &str) -> Limits {
        let c = &self.config;
        let o = c.projects.get(project).cloned().unwrap_or_default();
        Limits {
            requests_per_second: o.requests_per_second.unwrap_or(c.requests_per_second),
            requests_burst: o.requests_burst.unwrap_or(c.requests_burst),
            events_per_second: o.events_per_second.unwrap_or(c.events_per_second),
            events_burst: o.events_burst.unwrap_or(c.events_burst),
        }
    }

    /// Takes one request from the project's bucket.
    pub fn request(&self, project: &str, now: Instant) -> Result<(), Limited> {
        let l = self.limits(project);
        self.take(project, now, 1.0, "requests_per_second", |b| {
            (&mut b.requests, l.requests_per_second, l.requests_burst)
        })
    }

    /// Takes `messages` from the project's message bucket. A batch larger than the burst
    /// costs the burst, so no batch is refused for ever.
    pub fn events(&self, project: &str, messages: usize, now: Instant) -> Result<(), Limited> {
        let l = self.limits(project);
        self.take(project, now, messages as f64, "events_per_second", |b| {
            (&mut b.events, l.events_per_second, l.events_burst)
        })
    }

    fn take(
        &self,
        project: &str,
        now: Instant,
        cost: f64,
        limit: &'static str,
        pick: impl FnOnce(&mut Buckets) -> (&mut Bucket, f64, f64),
    ) -> Result<(), Limited> {
        let l = self.limits(project);
        if cost <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().expect("rate limit lock");
        if !map.contains_key(project) {
            if map.len() >= self.config.buckets_max {
                self.evict(&mut map, now);
            }
            let full = |burst| Bucket {
                tokens: burst,
                updated: now,
            };
            map.insert(
                project.to_string(),
                Buckets {
                    requests: full(l.requests_burst),
                    events: full(l.events_burst),
                    used: now,
                },
            );
        }
        let buckets = map.get_mut(project).expect("inserted above");
        buckets.used = now;
        let (bucket, rate, burst) = pick(buckets);
        if rate == 0.0 {
            return Ok(());
        }
        bucket.refill(now, rate, burst);
        let cost = cost.min(burst);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        let wait_s = (cost - bucket.tokens) / rate;
        Err(Limited {
            limit,
            rate_per_second: rate,
            burst,
            retry_after_s: (wait_s.ceil() as u64).max(1),
        })
    }

    /// Makes room for one bucket: drops every bucket that has refilled to its burst, or if
    /// none has, the least recently used.
    fn evict(&self, map: &mut HashMap<String, Buckets>, now: Instant) {
        let before = map.len();
        map.retain(|name, b| {
            let l = self.limits(name);
            let idle = |bucket: &Bucket, rate: f64, burst: f64| {
                let mut x = *bucket;
                x.refill(now, rate, burst);
                rate == 0.0 || x.tokens >= burst
            };
            !(idle(&b.requests, l.requests_per_second, l.requests_burst)
                && idle(&b.events, l.events_per_second, l.events_burst))
        });
        if map.len() == before {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, b)| b.used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
    }

    /// Buckets held now (for tests and metrics).
    pub fn buckets(&self) -> usize {
        self.buckets.lock().expect("rate limit lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RateLimitOverride;

    fn limiter(rps: f64, burst: f64, buckets_max: usize) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            requests_per_second: rps,
            requests_burst: burst,
            events_per_second: 100.0,
            events_burst: 50.0,
            buckets_max,
            projects: Default::default(),
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let rl = limiter(2.0, 3.0, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.request("shop", t0).is_ok());
        }
        let e = rl.request("shop", t0).unwrap_err();
        assert_eq!(e.limit, "requests_per_second");
        assert_eq!(
            e.retry_after_s, 1,
            "one token comes back in 0.5 s, rounded up"
        );
        assert!(
            rl.request("other", t0).is_ok(),
            "projects have their own buckets"
        );
        assert!(rl.request("shop", t0 + Duration::from_millis(499)).is_err());
        assert!(rl.request("shop", t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_burst_costs_the_burst() {
        let rl = limiter(10.0, 10.0, 10);
        let t0 = Instant::now();
        assert!(rl.events("shop", 500, t0).is_ok(), "never refused for ever");
        let e = rl.events("shop", 10, t0).unwrap_err();
        assert_eq!(e.limit, "events_per_second");
        assert_eq!(
            e.retry_after_s, 1,
            "10 messages at 100/s: 0.1 s, at least 1 s"
        );
        assert!(rl
            .events("shop", 10, t0 + Duration::from_millis(100))
            .is_ok());
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_overrides_apply_per_project() {
        let mut config = RateLimitConfig {
            requests_per_second: 0.0,
            ..RateLimitConfig::default()
        };
        config.projects.insert(
            "small".into(),
            RateLimitOverride {
                requests_per_second: Some(1.0),
                requests_burst: Some(1.0),
                ..Default::default()
            },
        );
        let rl = RateLimiter::new(config);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert!(rl.request("big", t0).is_ok());
        }
        assert!(rl.request("small", t0).is_ok());
        assert_eq!(rl.request("small", t0).unwrap_err().rate_per_second, 1.0);
    }

    #[test]
    fn the_bucket_map_is_bounded_and_evicts_idle_buckets_first() {
        let rl = limiter(1.0, 2.0, 3);
        let t0 = Instant::now();
        rl.request("a", t0).unwrap();
        rl.request("a", t0).unwrap();
        rl.request("b", t0).unwrap();
        rl.request("c", t0).unwrap();
        assert_eq!(rl.buckets(), 3);
        // After 1.5 s b and c are full again (one token back), a is not: a must survive.
        let t1 = t0 + Duration::from_millis(1500);
        rl.request("d", t1).unwrap();
        assert_eq!(rl.buckets(), 2, "b and c evicted, a and d kept");
        rl.request("a", t1).unwrap();
        assert!(
            rl.request("a", t1).is_err(),
            "a kept its debt through the eviction"
        );
        for (i, name) in ["e", "f", "g", "h"].iter().enumerate() {
            rl.request(name, t1 + Duration::from_millis(i as u64))
                .unwrap();
            assert!(rl.buckets() <= 3);
        }
    }
}
