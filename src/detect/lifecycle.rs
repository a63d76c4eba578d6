//! The alert lifecycle: pending → firing after a hold time → resolved after a quiet time.
//!
//! The hold time stops one noisy evaluation from paging anyone; the quiet time is the hysteresis
//! that stops a firing alert from flapping while its cluster's window thins out and refills.
//! Times are event times, so a replay walks through the same transitions.

use crate::alert::AlertStatus;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    Pending { since_ms: i64 },
    Firing { since_ms: i64, last_true_ms: i64 },
}

/// One tracked alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lifecycle {
    pub phase: Phase,
    pub opened_ms: i64,
    hold_ms: i64,
    quiet_ms: i64,
}

/// What an evaluation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    To(AlertStatus),
}

impl Lifecycle {
    /// Starts tracking when the condition first holds; reports `Pending`.
    pub fn open(now_ms: i64, hold_secs: i64, quiet_secs: i64) -> (Self, Transition) {
        (
            Lifecycle {
                phase: Phase::Pending { since_ms: now_ms },
                opened_ms: now_ms,
                hold_ms: hold_secs * 1000,
                quiet_ms: quiet_secs * 1000,
            },
            Transition::To(AlertStatus::Pending),
        )
    }

    /// Evaluates the condition at `now_ms`. A `Resolved` transition means tracking ends.
    pub fn step(&mut self, condition: bool, now_ms: i64) -> Transition {
        match self.phase {
            Phase::Pending { since_ms } => {
                if !condition {
                    // A pending alert that never fired is withdrawn; the record says resolved so
                    // every opened alert has an end.
                    Transition::To(AlertStatus::Resolved)
                } else if now_ms - since_ms >= self.hold_ms {
                    self.phase = Phase::Firing {
                        since_ms: now_ms,
                        last_true_ms: now_ms,
                    };
                    Transition::To(AlertStatus::Firing)
                } else {
                    Transition::None
                }
            }
            Phase::Firing {
                since_ms,
                last_true_ms,
            } => {
                if condition {
                    self.phase = Phase::Firing {
                        since_ms,
                        last_true_ms: last_true_ms.max(now_ms),
                    };
                    Transition::None
                } else if now_ms - last_true_ms >= self.quiet_ms {
                    Transition::To(AlertStatus::Resolved)
                } else {
                    Transition::None
                }
            }
        }
    }

    pub fn is_firing(&self) -> bool {
        matches!(self.phase, Phase::Firing { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_fires_after_hold_and_resolves_after_quiet() {
        let (mut l, t) = Lifecycle::open(0, 60, 300);
        assert_eq!(t, Transition::To(AlertStatus::Pending));
        assert_eq!(l.step(true, 30_000), Transition::None);
        assert_eq!(l.step(true, 60_000), Transition::To(AlertStatus::Firing));
        assert_eq!(
            l.step(false, 100_000),
            Transition::None,
            "quiet time not over"
        );
        assert_eq!(
            l.step(true, 200_000),
            Transition::None,
            "condition back: no flap"
        );
        assert_eq!(l.step(false, 400_000), Transition::None);
        assert_eq!(
            l.step(false, 500_000),
            Transition::To(AlertStatus::Resolved)
        );
    }

    #[test]
    fn a_pending_alert_whose_condition_lapses_is_withdrawn() {
        let (mut l, _) = Lifecycle::open(0, 60, 300);
        assert_eq!(l.step(false, 10_000), Transition::To(AlertStatus::Resolved));
    }
}
