//! A circuit breaker: stop calling a service that is down, and let one probe find out when it is
//! back.
//!
//! Closed → (most of the last `window` attempts failed) → Open → (open time passes) → HalfOpen,
//! where exactly one request goes through: its success closes the breaker, its failure opens it
//! again. While open, callers learn at once that the service is out, so the summarizer falls back
//! instead of every event waiting out its own timeouts.
//!
//! The trip condition is a failure *ratio* over a window, not a run of consecutive failures: with
//! many requests in flight, a service failing a steady 30% of calls produces runs of five failures
//! every few hundred calls, and retries already absorb that. An outage fails nearly everything and
//! trips the ratio within one window.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's position, exported as a gauge: 0 closed, 1 half-open, 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    /// The outcomes of the last attempts, `true` for a failure.
    Closed {
        recent: VecDeque<bool>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probe_in_flight: bool,
    },
}

/// When the breaker trips and for how long.
#[derive(Debug, Clone, Copy)]
pub struct TripPolicy {
    /// Attempts the failure ratio is measured over (at least 1).
    pub window: usize,
    /// Share of the window that must have failed, in (0, 1].
    pub failure_ratio: f64,
    pub open_for: Duration,
}

/// See the module docs. Shared by every caller of one service.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: TripPolicy,
    /// Failures in a full window that trip the breaker.
    failures_to_trip: usize,
    inner: Mutex<Inner>,
}

/// Permission to send one request; report how it went with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Admission {
    probe: bool,
}

fn closed() -> Inner {
    Inner::Closed {
        recent: VecDeque::new(),
    }
}

impl CircuitBreaker {
    pub fn new(policy: TripPolicy) -> Self {
        let window = policy.window.max(1);
        let ratio = if policy.failure_ratio > 0.0 && policy.failure_ratio <= 1.0 {
            policy.failure_ratio
        } else {
            1.0
        };
        CircuitBreaker {
            failures_to_trip: ((window as f64 * ratio).ceil() as usize).clamp(1, window),
            policy: TripPolicy {
                window,
                failure_ratio: ratio,
                ..policy
            },
            inner: Mutex::new(closed()),
        }
    }

    /// `Some` when a request may be sent now.
    pub fn admit(&self) -> Option<Admission> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<Admission> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *inner {
            Inner::Closed { .. } => Some(Admission { probe: false }),
            Inner::Open { until } if now < *until => None,
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                Some(Admission { probe: true })
            }
            Inner::HalfOpen { probe_in_flight } if *probe_in_flight => None,
            Inner::HalfOpen { probe_in_flight } => {
                *probe_in_flight = true;
                Some(Admission { probe: true })
            }
        }
    }

    /// Reports the outcome of an admitted request.
    pub fn record(&self, admission: Admission, success: bool) {
        self.record_at(admission, success, Instant::now())
    }

    fn record_at(&self, admission: Admission, success: bool, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let open = Inner::Open {
            until: now + self.policy.open_for,
        };
        match &mut *inner {
            Inner::Closed { recent } => {
                recent.push_back(!success);
                if recent.len() > self.policy.window {
                    recent.pop_front();
                }
                let failures = recent.iter().filter(|f| **f).count();
                if recent.len() == self.policy.window && failures >= self.failures_to_trip {
                    *inner = open;
                }
            }
            // Only the probe's outcome moves a half-open breaker; a straggler admitted before the
            // breaker opened says nothing about the service now.
            Inner::HalfOpen { .. } if admission.probe => {
                *inner = if success { closed() } else { open };
            }
            _ => {}
        }
    }

    pub fn state(&self) -> BreakerState {
        match &*self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(window: usize, ratio: f64) -> CircuitBreaker {
        CircuitBreaker::new(TripPolicy {
            window,
            failure_ratio: ratio,
            open_for: Duration::from_secs(10),
        })
    }

    fn attempt(b: &CircuitBreaker, at: Instant, success: bool) {
        let a = b.admit_at(at).expect("admitted");
        b.record_at(a, success, at);
    }

    #[test]
    fn trips_on_a_failure_ratio_and_recovers_through_one_probe() {
        let b = breaker(4, 0.75);
        let t0 = Instant::now();
        // 2 of 4 failed: below the ratio.
        for ok in [false, true, false, true] {
            attempt(&b, t0, ok);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // The window slides: [ok, fail, ok, fail], then [fail, ok, fail, fail] trips.
        attempt(&b, t0, false);
        assert_eq!(b.state(), BreakerState::Closed);
        attempt(&b, t0, false);
        assert!(b.admit_at(t0 + Duration::from_secs(5)).is_none(), "open");
        let probe = b
            .admit_at(t0 + Duration::from_secs(11))
            .expect("probe after the open time");
        assert!(
            b.admit_at(t0 + Duration::from_secs(11)).is_none(),
            "one probe at a time"
        );
        b.record_at(probe, false, t0 + Duration::from_secs(11));
        assert!(
            b.admit_at(t0 + Duration::from_secs(12)).is_none(),
            "a failed probe reopens"
        );
        let probe = b.admit_at(t0 + Duration::from_secs(22)).expect("probe");
        b.record_at(probe, true, t0 + Duration::from_secs(22));
        assert!(b.admit_at(t0 + Duration::from_secs(22)).is_some(), "closed");
        // A fresh window after closing: three failures are not yet a full window.
        for _ in 0..3 {
            attempt(&b, t0 + Duration::from_secs(23), false);
        }
        assert!(b.admit_at(t0 + Duration::from_secs(23)).is_some());
    }

    #[test]
    fn a_steady_thirty_percent_failure_rate_does_not_trip_a_twenty_call_window_at_eighty_percent() {
        use rand::{Rng, SeedableRng};
        let b = breaker(20, 0.8);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        for _ in 0..100_000 {
            attempt(&b, t0, !rng.gen_bool(0.3));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
