//! When a failed delivery is tried again: exponential backoff with full jitter, honouring a
//! receiver's `Retry-After` within reason.

use std::time::Duration;

use rand::Rng;

use super::DeliverySettings;

/// Longest `Retry-After` honoured: a receiver asking for more is retried after this, so one
/// misconfigured receiver cannot park deliveries for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Shortest delay between two attempts, so a zero draw of the jitter never turns into a busy loop.
const FLOOR: Duration = Duration::from_millis(100);

/// How long to wait before the next attempt of a delivery that has failed `attempts` times (at least
/// 1): uniform in `[0, min(retry_max, retry_initial * 2^(attempts-1))]` ("full jitter", which spreads
/// retries of many deliveries to one recovering receiver), at least 100 ms, and at least the
/// receiver's `Retry-After` (capped at [`MAX_RETRY_AFTER`]).
pub fn retry_delay(
    attempts: u32,
    settings: &DeliverySettings,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .and_then(|factor| settings.retry_initial.checked_mul(factor))
        .map_or(settings.retry_max, |delay| delay.min(settings.retry_max));
    let nanos = rng.random_range(0..=ceiling.as_nanos());
    // `nanos` is at most `ceiling`'s, so its whole seconds fit in a u64.
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    let jittered = Duration::new(seconds, subsec).max(FLOOR);
    match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn settings() -> DeliverySettings {
        DeliverySettings {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            ..DeliverySettings::default()
        }
    }

    #[test]
    fn stays_within_the_doubling_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..=6u32 {
            let ceiling = Duration::from_secs(1 << (attempts - 1));
            let mut longest = Duration::ZERO;
            for _ in 0..500 {
                let delay = retry_delay(attempts, &settings(), None, &mut rng);
                assert!(delay >= FLOOR && delay <= ceiling, "{attempts}: {delay:?}");
                longest = longest.max(delay);
            }
            // Full jitter: the draws reach well into the upper half of the range.
            assert!(longest > ceiling / 2, "{attempts}: {longest:?}");
        }
    }

    #[test]
    fn is_capped_at_retry_max() {
        let mut rng = StdRng::seed_from_u64(8);
        for attempts in [7, 20, 31, 32, 33, 64, 1000] {
            for _ in 0..200 {
                let delay = retry_delay(attempts, &settings(), None, &mut rng);
                assert!(delay <= Duration::from_secs(60), "{attempts}: {delay:?}");
            }
        }
    }

    #[test]
    fn does_not_overflow() {
        let mut rng = StdRng::seed_from_u64(9);
        let huge = DeliverySettings {
            retry_initial: Duration::MAX,
            retry_max: Duration::MAX,
            ..DeliverySettings::default()
        };
        for attempts in [0, 1, 2, u32::MAX] {
            retry_delay(attempts, &huge, None, &mut rng);
            let delay = retry_delay(attempts, &settings(), None, &mut rng);
            assert!(delay <= Duration::from_secs(60));
        }
        let delay = retry_delay(u32::MAX, &huge, Some(Duration::MAX), &mut rng);
        assert!(delay >= MAX_RETRY_AFTER);
    }

    #[test]
    fn never_below_the_floor() {
        let mut rng = StdRng::seed_from_u64(10);
        let tiny = DeliverySettings {
            retry_initial: Duration::ZERO,
            retry_max: Duration::ZERO,
            ..DeliverySettings::default()
        };
        assert_eq!(retry_delay(3, &tiny, None, &mut rng), FLOOR);
    }

    #[test]
    fn honours_retry_after_and_caps_it() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..100 {
            let delay = retry_delay(1, &settings(), Some(Duration::from_secs(7)), &mut rng);
            assert_eq!(delay, Duration::from_secs(7));
        }
        let delay = retry_delay(1, &settings(), Some(Duration::from_secs(86_400)), &mut rng);
        assert_eq!(delay, MAX_RETRY_AFTER);
        // A short Retry-After does not shorten the backoff.
        for _ in 0..100 {
            let delay = retry_delay(1, &settings(), Some(Duration::ZERO), &mut rng);
            assert!(delay >= FLOOR && delay <= Duration::from_secs(1));
        }
    }
}
