use std::time::{SystemTime, UNIX_EPOCH};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Unix milliseconds.
pub type Timestamp = u64;

pub fn now_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T16:40:46.811Z`.
pub fn rfc3339(ms: Timestamp) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Whether a backend-supplied timestamp is RFC 3339.
pub fn is_rfc3339(s: &str) -> bool {
    OffsetDateTime::parse(s, &Rfc3339).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_checks_rfc3339() {
        assert_eq!(rfc3339(1_795_711_246_811), "2026-11-26T16:40:46.811Z");
        assert!(is_rfc3339("2026-11-26T16:40:46Z"));
        assert!(is_rfc3339("2026-11-26T16:40:46.5+05:30"));
        assert!(!is_rfc3339("yesterday"));
    }
}
