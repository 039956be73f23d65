//! The one duration syntax of Loom, shared by workflow files (`timeout:`, `backoff:`), the
//! CLI's duration flags and `LOOM_AI_IDLE_TIMEOUT`: [`parse_duration`] turns text into a [`Duration`] or a
//! [`DurationError`] that says which forms are accepted; [`parse_timeout`] also bounds it.

use std::time::Duration;

/// The forms [`parse_duration`] accepts, for its messages.
const DURATION_FORMS: &str =
    "write a number with a unit (500ms, 30s, 10m, 1h, 1h 30m) or a number of seconds (30, 1.5)";

/// Text that [`parse_duration`] cannot read as a duration. Its message
/// says why and names the accepted forms; it does not repeat the text (callers show it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing was written.
    #[error("empty: {DURATION_FORMS}")]
    Empty,
    /// A negative number.
    #[error("must not be negative")]
    Negative,
    /// A unit that is not one of humantime's (`ms`, `s`, `m`, `h`, `days`, …).
    #[error("unknown unit '{0}': {DURATION_FORMS}")]
    UnknownUnit(String),
    /// A number too large for a [`Duration`](std::time::Duration).
    #[error("too large")]
    TooLarge,
    /// Anything else that is not a number with or without a unit.
    #[error("not a duration: {DURATION_FORMS}")]
    Malformed,
    /// Zero, where a deadline is meant ([`parse_timeout`](parse_timeout)).
    #[error("must be more than zero")]
    Zero,
    /// Over a week ([`parse_timeout`](parse_timeout)).
    #[error("must be at most a week")]
    TooLong,
}

/// The longest `timeout` or `backoff` a definition may set, and the longest `--timeout`.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A deadline as workflow files' `timeout:` and the CLI's `--timeout` take it: what
/// [`parse_duration`] reads, more than zero and at most [`MAX_DURATION`] (a week).
///
/// ```
/// use loom_core::parse_timeout;
/// assert!(parse_timeout("30s").is_ok());
/// assert!(parse_timeout("0").is_err());
/// assert!(parse_timeout("8 days").is_err());
/// ```
pub fn parse_timeout(text: &str) -> Result<Duration, DurationError> {
    match parse_duration(text)? {
        zero if zero.is_zero() => Err(DurationError::Zero),
        long if long > MAX_DURATION => Err(DurationError::TooLong),
        duration => Ok(duration),
    }
}

/// Parses a duration written as a number with a unit (`500ms`, `30s`, `10m`, `1h`, `1.5s`,
/// `1h 30m`; any unit `humantime` knows) or as a bare number of seconds (`30`, `1.5`).
///
/// ```
/// use std::time::Duration;
/// use loom_core::parse_duration;
///
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    // humantime wants a unit on every number; a bare number is seconds, as in most CLIs.
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().map_err(|_| DurationError::Malformed)?;
        return Duration::try_from_secs_f64(seconds).map_err(|_| DurationError::TooLarge);
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
            DurationError::UnknownUnit(unit)
        }
        humantime::DurationError::NumberOverflow => DurationError::TooLarge,
        _ => DurationError::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_forms() {
        let ok = |text, expected| assert_eq!(parse_duration(text), Ok(expected), "{text}");
        ok("500ms", Duration::from_millis(500));
        ok("30s", Duration::from_secs(30));
        ok("10m", Duration::from_secs(600));
        ok("1h", Duration::from_secs(3600));
        ok("1h 30m", Duration::from_secs(5400));
        ok("1.5s", Duration::from_millis(1500));
        ok("30", Duration::from_secs(30));
        ok("1.5", Duration::from_millis(1500));
        ok(" 0 ", Duration::ZERO);
    }

    #[test]
    fn rejections_say_why() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("-1"), Err(DurationError::Negative));
        assert_eq!(parse_duration("soon"), Err(DurationError::Malformed));
        assert_eq!(parse_duration("1.2.3"), Err(DurationError::Malformed));
        assert_eq!(
            parse_duration("5 fortnights"),
            Err(DurationError::UnknownUnit("fortnights".into()))
        );
        assert_eq!(
            parse_duration("99999999999999999999999"),
            Err(DurationError::TooLarge)
        );
        let message = DurationError::Malformed.to_string();
        assert!(message.contains("500ms, 30s, 10m, 1h"), "{message}");
        assert!(message.contains("number of seconds"), "{message}");
    }
}
