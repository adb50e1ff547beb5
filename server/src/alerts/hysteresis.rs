//! Hysteresis: a level is entered only after it has held for several samples, and left only after the
//! value has stayed below a lower bound for several samples, so a value hovering at a threshold does not
//! make an alert flap.

use super::model::Severity;
use super::settings::{Hysteresis, Levels};

/// The thresholds one sample is judged against, most urgent last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub levels: [(Severity, Option<f64>); 2],
    pub hysteresis: Hysteresis,
}

impl Thresholds {
    /// The warning and critical levels of a rule.
    pub fn of(levels: &Levels) -> Thresholds {
        Thresholds {
            levels: [
                (Severity::Warning, levels.warning),
                (Severity::Critical, levels.critical),
            ],
            hysteresis: levels.hysteresis,
        }
    }

    /// A rule with one level.
    pub fn single(severity: Severity, threshold: f64, hysteresis: Hysteresis) -> Thresholds {
        Thresholds {
            levels: [(severity, None), (severity, Some(threshold))],
            hysteresis,
        }
    }

    /// The most urgent level `value` reaches.
    fn reached(&self, value: f64) -> Option<Severity> {
        self.levels
            .iter()
            .rev()
            .find(|(_, threshold)| threshold.is_some_and(|threshold| value >= threshold))
            .map(|(severity, _)| *severity)
    }

    fn threshold(&self, severity: Severity) -> Option<f64> {
        self.levels
            .iter()
            .rev()
            .find(|(level, _)| *level == severity)
            .and_then(|(_, threshold)| *threshold)
    }
}

/// The state of one rule for one subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    /// The level the alert fires at, if it fires.
    firing: Option<Severity>,
    /// A more urgent level than `firing` being reached, and for how many samples in a row.
    rising: Option<(Severity, u32)>,
    /// Samples in a row below the clear bound of `firing`.
    clearing: u32,
}

impl Tracker {
    /// A tracker that starts at `firing` (as the database says the alert stands).
    pub fn firing_at(severity: Severity) -> Tracker {
        Tracker {
            firing: Some(severity),
            ..Tracker::default()
        }
    }

    /// The level the alert should fire at now.
    pub fn firing(&self) -> Option<Severity> {
        self.firing
    }

    /// Whether the tracker holds nothing worth keeping (not firing, not on its way to).
    pub fn is_idle(&self) -> bool {
        *self == Tracker::default()
    }

    /// Takes one sample and returns the level the alert should fire at now.
    pub fn observe(&mut self, value: f64, thresholds: &Thresholds) -> Option<Severity> {
        let hysteresis = thresholds.hysteresis;
        let reached = thresholds.reached(value);
        match reached {
            Some(level) if Some(level) > self.firing => {
                let count = match self.rising {
                    Some((rising, count)) if rising == level => count + 1,
                    _ => 1,
                };
                if count >= hysteresis.fire_after {
                    self.firing = Some(level);
                    self.rising = None;
                } else {
                    self.rising = Some((level, count));
                }
            }
            _ => self.rising = None,
        }
        if let Some(level) = self.firing {
            let clear_bound = thresholds
                .threshold(level)
                .map_or(f64::INFINITY, |threshold| {
                    threshold * hysteresis.clear_ratio
                });
            if value < clear_bound {
                self.clearing += 1;
                if self.clearing >= hysteresis.resolve_after {
                    // Step down to the level still held (entered at once: it was held all along).
                    self.firing = reached.filter(|reached| *reached < level);
                    self.clearing = 0;
                }
            } else {
                self.clearing = 0;
            }
        }
        self.firing
    }

    /// Takes one sample of an event rule: `happened` fires at once; `quiet_samples` samples in a row
    /// without it resolve.
    pub fn observe_event(
        &mut self,
        happened: bool,
        severity: Severity,
        quiet_samples: u32,
    ) -> Option<Severity> {
        if happened {
            self.firing = Some(severity);
            self.clearing = 0;
        } else if self.firing.is_some() {
            self.clearing += 1;
            if self.clearing >= quiet_samples {
                self.firing = None;
                self.clearing = 0;
            }
        }
        self.firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(fire_after: u32, resolve_after: u32) -> Thresholds {
        Thresholds::of(&Levels {
            enabled: true,
            warning: Some(0.5),
            critical: Some(0.8),
            hysteresis: Hysteresis {
                fire_after,
                resolve_after,
                clear_ratio: 0.9,
            },
        })
    }

    #[test]
    fn fires_only_after_the_level_held_for_enough_samples() {
        let thresholds = thresholds(2, 2);
        let mut tracker = Tracker::default();
        assert_eq!(tracker.observe(0.6, &thresholds), None);
        assert_eq!(
            tracker.observe(0.4, &thresholds),
            None,
            "the run was broken"
        );
        assert_eq!(tracker.observe(0.6, &thresholds), None);
        assert_eq!(tracker.observe(0.7, &thresholds), Some(Severity::Warning));
        assert_eq!(tracker.observe(0.85, &thresholds), Some(Severity::Warning));
        assert_eq!(tracker.observe(0.9, &thresholds), Some(Severity::Critical));
    }

    #[test]
    fn a_value_oscillating_around_the_threshold_does_not_flap() {
        let thresholds = thresholds(2, 2);
        let mut tracker = Tracker::default();
        let mut changes = 0;
        let mut last = None;
        // Around the warning threshold 0.5: in and out of it every sample, then steadily above.
        let values = [
            0.49, 0.51, 0.49, 0.51, 0.52, 0.53, 0.48, 0.52, 0.47, 0.51, 0.49, 0.5,
        ];
        for value in values {
            let now = tracker.observe(value, &thresholds);
            if now != last {
                changes += 1;
                last = now;
            }
        }
        assert_eq!(changes, 1, "fired once and stayed firing");
        assert_eq!(last, Some(Severity::Warning));
        // It resolves only after two samples below 0.45 (0.5 × 0.9).
        assert_eq!(tracker.observe(0.44, &thresholds), Some(Severity::Warning));
        assert_eq!(tracker.observe(0.46, &thresholds), Some(Severity::Warning));
        assert_eq!(tracker.observe(0.44, &thresholds), Some(Severity::Warning));
        assert_eq!(tracker.observe(0.40, &thresholds), None);
    }

    #[test]
    fn critical_steps_down_to_warning_while_the_warning_level_holds() {
        let thresholds = thresholds(1, 2);
        let mut tracker = Tracker::default();
        assert_eq!(tracker.observe(0.9, &thresholds), Some(Severity::Critical));
        assert_eq!(tracker.observe(0.6, &thresholds), Some(Severity::Critical));
        assert_eq!(tracker.observe(0.6, &thresholds), Some(Severity::Warning));
    }

    #[test]
    fn events_fire_at_once_and_resolve_after_quiet_samples() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.observe_event(false, Severity::Critical, 3), None);
        assert_eq!(
            tracker.observe_event(true, Severity::Critical, 3),
            Some(Severity::Critical)
        );
        assert_eq!(
            tracker.observe_event(false, Severity::Critical, 3),
            Some(Severity::Critical)
        );
        assert_eq!(
            tracker.observe_event(true, Severity::Critical, 3),
            Some(Severity::Critical)
        );
        for _ in 0..2 {
            assert!(
                tracker
                    .observe_event(false, Severity::Critical, 3)
                    .is_some()
            );
        }
        assert_eq!(tracker.observe_event(false, Severity::Critical, 3), None);
        assert!(tracker.is_idle());
    }
}
