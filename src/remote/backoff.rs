//! Retry delays: exponential backoff with full jitter, and `Retry-After` parsing.
//!
//! Full jitter (a uniform delay between zero and the exponential cap) spreads the retries of many
//! concurrent callers, so a service that failed under load is not hit by all of them again at the
//! same instant. A `Retry-After` from the server is a floor: we never come back sooner than asked.

use std::time::Duration;

use rand::Rng;

use super::RemoteSettings;

/// The delay before retry number `retry` (1 for the first retry).
pub fn delay(settings: &RemoteSettings, retry: u32, retry_after: Option<Duration>) -> Duration {
    let cap = exponential_cap(settings, retry);
    let jittered = if cap.is_zero() {
        cap
    } else {
        Duration::from_millis(rand::thread_rng().gen_range(0..=cap.as_millis() as u64))
    };
    match retry_after {
        Some(asked) => {
            let asked = asked.min(Duration::from_millis(settings.retry_after_max_ms));
            asked.max(jittered)
        }
        None => jittered,
    }
}

/// `initial × 2^(retry-1)`, capped at `backoff_max_ms`.
pub fn exponential_cap(settings: &RemoteSettings, retry: u32) -> Duration {
    let factor = 1u64 << retry.saturating_sub(1).min(20);
    Duration::from_millis(
        settings
            .backoff_initial_ms
            .saturating_mul(factor)
            .min(settings.backoff_max_ms),
    )
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(Duration::from_secs_f64(seconds));
        }
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let s = RemoteSettings {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..Default::default()
        };
        assert_eq!(exponential_cap(&s, 1), Duration::from_millis(100));
        assert_eq!(exponential_cap(&s, 3), Duration::from_millis(400));
        assert_eq!(exponential_cap(&s, 10), Duration::from_millis(1000));
        for retry in 1..8 {
            assert!(delay(&s, retry, None) <= exponential_cap(&s, retry));
        }
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_the_configured_maximum() {
        let s = RemoteSettings {
            backoff_initial_ms: 10,
            backoff_max_ms: 20,
            retry_after_max_ms: 5_000,
            ..Default::default()
        };
        assert_eq!(
            delay(&s, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            delay(&s, 1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
