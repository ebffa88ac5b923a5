//! When to try again after a transient failure: exponential backoff with jitter.
//!
//! The `backoff` crate stays behind this one module (RustSec flags it unmaintained; `backon`
//! is its successor), so replacing it touches nothing else.

use std::time::Duration;

use backoff::backoff::Backoff;

use crate::config::RetryConfig;

/// The wait before attempt `attempt + 1`, after `attempt` (1-based) failed: the initial delay
/// doubled at each retry, capped, with ±20% jitter, and never less than what the server asked
/// (itself capped at `RETRY_MAX_DELAY_SECONDS`).
pub fn delay_after(policy: &RetryConfig, attempt: u32, server_asked: Option<Duration>) -> Duration {
    let mut b = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial_delay)
        .with_multiplier(2.0)
        .with_randomization_factor(0.2)
        .with_max_interval(policy.max_delay)
        .with_max_elapsed_time(None)
        .build();
    let mut delay = policy.initial_delay;
    for _ in 0..attempt.max(1) {
        delay = b.next_backoff().unwrap_or(policy.max_delay);
    }
    let delay = delay.min(policy.max_delay);
    // The server's wish counts, up to RETRY_MAX_DELAY_SECONDS: one `Retry-After: 100000000`
    // must not park the run for years.
    match server_asked {
        Some(asked) if asked > delay => asked.min(policy.max_delay),
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            max_retry_count: 10,
            initial_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(900),
            timeout: Duration::from_secs(3600),
        }
    }

    #[test]
    fn doubles_with_jitter_and_caps() {
        let p = policy();
        let d1 = delay_after(&p, 1, None).as_secs_f64();
        let d3 = delay_after(&p, 3, None).as_secs_f64();
        assert!((48.0..=72.0).contains(&d1), "{d1}");
        assert!((192.0..=288.0).contains(&d3), "{d3}");
        assert!(delay_after(&p, 20, None) <= Duration::from_secs(900));
        assert_eq!(
            delay_after(&p, 1, Some(Duration::from_secs(500))),
            Duration::from_secs(500)
        );
    }

    #[test]
    fn the_server_s_wish_is_capped_at_the_max_delay() {
        let p = policy();
        assert_eq!(
            delay_after(&p, 1, Some(Duration::from_secs(100_000_000))),
            Duration::from_secs(900)
        );
    }
}
