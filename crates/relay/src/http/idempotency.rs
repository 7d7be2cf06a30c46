//! The `Idempotency-Key` header of `POST /api/events`: which keys are
//! accepted, and how each outcome of a keyed append is answered.

use axum::http::{HeaderMap, StatusCode};

use super::errors::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted: room for a UUID, a hash or a composite of ids.
pub const MAX_KEY_LEN: usize = 255;

/// The request's key: `None` without the header, 400 for one that is
/// empty, longer than [`MAX_KEY_LEN`] or not all visible ASCII (`!` to `~`).
/// Keys are taken byte for byte: `a` and `A` are two keys.
pub fn key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request("Idempotency-Key must be given once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (! to ~)"
        )));
    }
    // Visible ASCII is valid UTF-8.
    Ok(value.to_str().ok())
}

/// A key used before for another event: the caller's bug, never retried.
pub fn conflict(first_event_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "Idempotency-Key was used within 24 h for a different event (appended as {first_event_id}); nothing was appended"
        ),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert_eq!(key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            key(&with(b"order-42:created")).unwrap(),
            Some("order-42:created")
        );
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            key(&with(longest.as_bytes())).unwrap(),
            Some(longest.as_str())
        );
        for bad in [
            &b""[..],
            "k".repeat(MAX_KEY_LEN + 1).as_bytes(),
            b"two words",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(key(&with(bad)).is_err(), "{bad:?} accepted");
        }
        let mut twice = with(b"a");
        twice.append(HEADER, HeaderValue::from_static("a"));
        assert!(key(&twice).is_err());
    }
}
