//! Numbers written for people in alert texts.

use std::time::Duration;

use crate::alerts::model::Annotations;

/// `12345` as `12,345`.
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `0.853` as `85%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

/// A duration rounded to what matters: `45s`, `12m`, `3h 20m`, `2d 4h`.
pub fn duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// The three annotations every alert carries.
pub fn annotations(summary: String, description: String, action: &str) -> Annotations {
    Annotations::from([
        ("summary".to_owned(), summary),
        ("description".to_owned(), description),
        ("action".to_owned(), action.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(28_232), "28,232");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(percent(0.853), "85%");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(12 * 60 + 5)), "12m");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 20 * 60)), "3h 20m");
        assert_eq!(
            duration(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d 4h"
        );
    }
}
