//! A circuit breaker: stop calling a service that keeps failing, and let one probe find out when
//! it is back.
//!
//! Closed → (N consecutive failed attempts) → Open → (open time passes) → HalfOpen, where exactly
//! one request goes through: its success closes the breaker, its failure opens it again. While
//! open, callers learn at once that the service is out, so the summarizer falls back instead of
//! every event waiting out its own timeouts.

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
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// See the module docs. Shared by every caller of one service.
#[derive(Debug)]
pub struct CircuitBreaker {
    failures_to_open: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

/// Permission to send one request; report how it went with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Admission {
    probe: bool,
}

impl CircuitBreaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            failures_to_open: failures_to_open.max(1),
            open_for,
            inner: Mutex::new(Inner::Closed {
                consecutive_failures: 0,
            }),
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
            until: now + self.open_for,
        };
        match (&mut *inner, success) {
            (Inner::Closed { .. }, true) => {
                *inner = Inner::Closed {
                    consecutive_failures: 0,
                }
            }
            (
                Inner::Closed {
                    consecutive_failures,
                },
                false,
            ) => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.failures_to_open {
                    *inner = open;
                }
            }
            // Only the probe's outcome moves a half-open breaker; a straggler admitted before the
            // breaker opened says nothing about the service now.
            (Inner::HalfOpen { .. }, true) if admission.probe => {
                *inner = Inner::Closed {
                    consecutive_failures: 0,
                }
            }
            (Inner::HalfOpen { .. }, false) if admission.probe => *inner = open,
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

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_one_probe() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            let a = b.admit_at(t0).expect("closed");
            b.record_at(a, false, t0);
        }
        // A success in between resets the count.
        let a = b.admit_at(t0).unwrap();
        b.record_at(a, true, t0);
        for _ in 0..3 {
            let a = b.admit_at(t0).expect("closed");
            b.record_at(a, false, t0);
        }
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
    }
}
