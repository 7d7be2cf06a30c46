//! The one place HTTP errors are shaped: a status and `{ "error": "..." }`.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{auth::Rejection, engine::StoreError, events::DecodeError};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

/// A store that cannot serve now (down, slow, or this node shutting down)
/// is 503: the caller may try again, here or on another node. A store that
/// refuses the request or answers nonsense is 500: trying again gets the
/// same until an operator acts.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            Self::unavailable(e.to_string())
        } else {
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// An event that breaks the schema is the caller's to fix: 400, with what
/// to fix.
impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        Self::bad_request(e.to_string())
    }
}

/// A client token refused: 401 with the same message `connect_error` gives.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        Self::unauthorized(rejection.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use std::io;

    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    fn store(e: RedisError) -> ApiError {
        StoreError::from(e).into()
    }

    #[test]
    fn a_store_that_cannot_serve_now_is_503() {
        let refused = store(io::Error::from(io::ErrorKind::ConnectionRefused).into());
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refused.message.starts_with("store unavailable: "),
            "{refused:?}"
        );
        let slow = store(io::Error::from(io::ErrorKind::TimedOut).into());
        assert_eq!(slow.status, StatusCode::SERVICE_UNAVAILABLE);
        let loading = store((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading").into());
        assert_eq!(loading.status, StatusCode::SERVICE_UNAVAILABLE);
        let stopping = ApiError::from(StoreError::Cancelled);
        assert_eq!(
            (stopping.status, stopping.message.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        );
    }

    #[test]
    fn a_store_that_refuses_or_answers_nonsense_is_500() {
        let wrong_type = store(
            (
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "WRONGTYPE",
            )
                .into(),
        );
        assert_eq!(wrong_type.status, StatusCode::INTERNAL_SERVER_ERROR);
        let no_perm = store((ErrorKind::Server(ServerErrorKind::NoPerm), "NOPERM").into());
        assert_eq!(no_perm.status, StatusCode::INTERNAL_SERVER_ERROR);
        let garbled = ApiError::from(StoreError::BadData("not a stream entry".into()));
        assert_eq!(
            (garbled.status, garbled.message.as_str()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable store data: not a stream entry"
            )
        );
    }

    #[test]
    fn a_schema_violation_is_400_with_its_reason_and_detail() {
        let e = crate::events::decode(Some("order.created"), Some("[]")).unwrap_err();
        let api = ApiError::from(e.clone());
        assert_eq!(api.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.message, e.to_string());
        assert_eq!(api.message, "invalid_field: `data` must be a JSON object");
    }
}
