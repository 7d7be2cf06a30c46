//! The server API for backends: `POST /api/events` (the way in for
//! embedded mode, and a checked alternative to XADD), plus read access to
//! recent outcomes and dead letters. All behind `RELAY_API_KEY`.

use axum::{
    Json,
    extract::{Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{
    HttpState,
    errors::{ApiError, bearer},
    idempotency,
};
use crate::{
    engine::{Engine, EventStream, KeyedAppend, entry_size},
    events::{EventKind, OrderEvent, chat::ChatSender, decode_value},
    metrics::{self, IdempotentOutcome, PublishRejection, StoreOp},
};

#[derive(Deserialize)]
pub struct PublishBody {
    #[serde(rename = "type")]
    kind: String,
    data: Value,
}

/// 404 when the API is off, 401 for a wrong or missing key. The comparison
/// takes the same time wherever the keys differ.
fn authorize<E: Engine>(state: &HttpState<E>, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize_or(state, headers, || {
        metrics::publish_rejected(PublishRejection::Unauthorized);
    })
}

/// [`authorize`], with the route's own count of a refused key.
pub(super) fn authorize_or<E: Engine>(
    state: &HttpState<E>,
    headers: &HeaderMap,
    count_refusal: impl FnOnce(),
) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the publish API is off (RELAY_API_KEY is not set)",
        ));
    };
    let given = bearer(headers).unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(key.expose().as_bytes())) {
        Ok(())
    } else {
        count_refusal();
        Err(ApiError::unauthorized("wrong or missing API key"))
    }
}

pub async fn publish<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let key = idempotency::key(&headers)
        .inspect_err(|_| metrics::publish_rejected(PublishRejection::BadIdempotencyKey))?;
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics::publish_rejected(PublishRejection::TooLarge);
            return too_large(state.max_event_bytes);
        }
        metrics::publish_rejected(PublishRejection::BadBody);
        ApiError::bad_request(format!(
            "body must be {{\"type\": ..., \"data\": {{...}}}}: {}",
            e.body_text()
        ))
    })?;
    let kind = EventKind::parse(&body.kind).ok_or_else(|| {
        metrics::publish_rejected(PublishRejection::UnknownType);
        ApiError::bad_request(format!("unknown event type `{}`", body.kind))
    })?;
    let data = body.data.to_string();
    // The entry as appended, measured as the consumer measures it.
    if entry_size(kind.as_str(), &data) > state.max_event_bytes {
        metrics::publish_rejected(PublishRejection::TooLarge);
        return Err(too_large(state.max_event_bytes));
    }
    let event = decode_value(kind, body.data)
        .inspect_err(|_| metrics::publish_rejected(PublishRejection::InvalidEvent))?;
    // Only the relay speaks for a chat participant (its clients' `chat:send`);
    // the backend's messages are `system`.
    if let OrderEvent::ChatMessage(m) = &event
        && !matches!(m.from, ChatSender::System { .. })
    {
        metrics::publish_rejected(PublishRejection::InvalidEvent);
        return Err(ApiError::bad_request(
            "`from_role` is set by the relay for its clients' messages; a backend's chat.message is from `system`",
        ));
    }
    let stream = state.engine.stream();
    let appended = match key {
        None => stream
            .append(kind.as_str(), &data)
            .await
            .map(KeyedAppend::Appended),
        Some(key) => stream.append_keyed(key, kind.as_str(), &data).await,
    };
    let appended = appended.inspect_err(|_| {
        metrics::publish_rejected(PublishRejection::StoreUnavailable);
        metrics::store_error(StoreOp::Append);
    })?;
    let (event_id, replayed) = match appended {
        KeyedAppend::Appended(id) => {
            metrics::event_published(kind);
            (id, false)
        }
        KeyedAppend::Replayed(id) => {
            metrics::idempotent_request(IdempotentOutcome::Replayed);
            (id, true)
        }
        KeyedAppend::Conflict(id) => {
            metrics::idempotent_request(IdempotentOutcome::Conflict);
            return Err(idempotency::conflict(&id));
        }
    };
    let replayed_header = [(REPLAYED_HEADER, if replayed { "true" } else { "false" })];
    Ok((
        StatusCode::ACCEPTED,
        replayed_header,
        Json(json!({ "event_id": event_id })),
    ))
}

/// Tells a caller whether its request appended (`false`) or repeated an
/// earlier one with the same `Idempotency-Key` (`true`).
const REPLAYED_HEADER: &str = "idempotent-replayed";

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the event is larger than RELAY_MAX_EVENT_BYTES ({limit} bytes)"),
    )
}

#[derive(Deserialize)]
pub struct Recent {
    limit: Option<usize>,
}

impl Recent {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

pub async fn outcomes<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
    Query(recent): Query<Recent>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let outcomes = state
        .engine
        .stream()
        .recent_outcomes(recent.limit())
        .await?;
    Ok(Json(json!({ "outcomes": outcomes })))
}

pub async fn dead_letters<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
    Query(recent): Query<Recent>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let dead = state
        .engine
        .stream()
        .recent_dead_letters(recent.limit())
        .await?;
    Ok(Json(json!({ "dead_letters": dead })))
}
