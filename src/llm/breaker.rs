//! A circuit breaker per provider: after `failure_threshold` consecutive
//! failures the provider is skipped for `open_secs`, then a single trial call
//! decides whether it is back. A provider that is down then costs a message
//! nothing but a skipped step, instead of a timeout on every call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight since then; others are refused until it
    /// ends, or until `open_for` has passed (a trial that was cancelled — a
    /// race loser, a client gone — never reports back).
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go out now. Moving from open to half-open admits
    /// exactly one caller.
    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now >= since + self.open_for => {
                *state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub fn failure(&self, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// 0 closed, 1 half-open, 2 open: the value of the breaker-state gauge.
    pub fn gauge(&self) -> f64 {
        match *self.lock() {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_admits_one_trial_later() {
        let breaker = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..2 {
            breaker.failure(t0);
            assert!(breaker.allow(t0));
        }
        breaker.failure(t0);
        assert!(!breaker.allow(t0));
        assert!(!breaker.allow(t0 + Duration::from_secs(29)));
        let later = t0 + Duration::from_secs(30);
        assert!(breaker.allow(later), "one trial call after open_for");
        assert!(!breaker.allow(later), "only one trial at a time");
        breaker.failure(later);
        assert!(matches!(breaker.state(), State::Open { .. }));
        let again = later + Duration::from_secs(30);
        assert!(breaker.allow(again));
        breaker.success();
        assert_eq!(breaker.state(), State::Closed { failures: 0 });
        assert!(breaker.allow(again));
    }

    #[test]
    fn a_trial_that_never_reports_back_does_not_close_the_provider_for_good() {
        let breaker = Breaker::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        breaker.failure(t0);
        let trial = t0 + Duration::from_secs(10);
        assert!(breaker.allow(trial));
        // The trial was cancelled: no success, no failure.
        assert!(!breaker.allow(trial + Duration::from_secs(9)));
        assert!(
            breaker.allow(trial + Duration::from_secs(10)),
            "another trial"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(1));
        let now = Instant::now();
        breaker.failure(now);
        breaker.success();
        breaker.failure(now);
        assert!(breaker.allow(now));
    }
}
