//! Log lines on a budget: what a client can cause at will (refusals) is logged at most a few
//! times a second, and the lines held back are counted in the next one that is written.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `per_window` lines every `window`.
pub(crate) struct Sampled {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl Sampled {
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        Sampled {
            per_window,
            window,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be written now (with how many were held back since
    /// the last one), `None` when it is over budget.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at `now`.
    pub(crate) fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, written, held) = &mut *s;
        if now.saturating_duration_since(*start) >= self.window {
            *start = now;
            *written = 0;
        }
        if *written < self.per_window {
            *written += 1;
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_the_first_n_per_window_and_reports_the_rest() {
        let s = Sampled::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(s.admit_at(t0), Some(0));
        assert_eq!(s.admit_at(t0), Some(0));
        assert_eq!(s.admit_at(t0), None);
        assert_eq!(s.admit_at(t0 + Duration::from_secs(59)), None);
        // The next window logs again and reports what the last one left out.
        assert_eq!(s.admit_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(s.admit_at(t0 + Duration::from_secs(200)), Some(0));
    }

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_rest_counted() {
        let s = Sampled::new(3, Duration::from_millis(50));
        let admitted: Vec<_> = (0..10).map(|_| s.admit()).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.admit(), Some(7), "the next line says how many were held back");
    }
}
