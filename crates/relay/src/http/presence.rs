//! `GET /api/presence?store_id=...&driver_id=...` (CONTRACT §7): whether
//! stores and drivers are online, and since when, for the backend. Behind
//! `RELAY_API_KEY` like the rest of the server API.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{RawQuery, State},
    http::HeaderMap,
};
use serde::Serialize;

use super::{HttpState, api::authorize_or, errors::ApiError};
use crate::{
    engine::{Engine, PresenceStore},
    events::{PresenceId, PresenceKind, PresenceState},
    metrics::{self, PresenceQueryRejection, StoreOp},
};

/// Ids one request may ask about, stores and drivers together.
pub const MAX_IDS: usize = 1000;

/// Longer ids are refused: no store or user id is anywhere near this.
pub const MAX_ID_BYTES: usize = 256;

#[derive(Debug, Default, Serialize)]
pub struct PresenceAnswer {
    pub stores: BTreeMap<String, PresenceState>,
    pub drivers: BTreeMap<String, PresenceState>,
}

/// Why a query was refused, with the message the 400 carries.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown parameter `{0}` (use store_id and driver_id)")]
    UnknownParameter(String),
    #[error("{0} must not be empty")]
    EmptyId(&'static str),
    #[error("{0} longer than {MAX_ID_BYTES} bytes")]
    LongId(&'static str),
    #[error("name at least one store_id or driver_id")]
    NoIds,
    #[error("at most {MAX_IDS} ids per request (got {0})")]
    TooMany(usize),
}

impl QueryError {
    pub fn label(&self) -> PresenceQueryRejection {
        match self {
            Self::TooMany(_) => PresenceQueryRejection::TooManyIds,
            _ => PresenceQueryRejection::BadQuery,
        }
    }
}

/// The ids a query names, in order, each once.
pub fn presence_query(query: Option<&str>) -> Result<Vec<PresenceId>, QueryError> {
    let mut ids: Vec<PresenceId> = Vec::new();
    let mut named = 0usize;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let (kind, param) = match name.as_ref() {
            "store_id" => (PresenceKind::Store, "store_id"),
            "driver_id" => (PresenceKind::Driver, "driver_id"),
            other => {
                return Err(QueryError::UnknownParameter(
                    other.chars().take(64).collect(),
                ));
            }
        };
        if value.is_empty() {
            return Err(QueryError::EmptyId(param));
        }
        if value.len() > MAX_ID_BYTES {
            return Err(QueryError::LongId(param));
        }
        named += 1;
        if named > MAX_IDS {
            // Counted to the end so that the message says how many.
            continue;
        }
        let who = PresenceId::new(kind, value.into_owned());
        if !ids.contains(&who) {
            ids.push(who);
        }
    }
    if named > MAX_IDS {
        return Err(QueryError::TooMany(named));
    }
    if ids.is_empty() {
        return Err(QueryError::NoIds);
    }
    Ok(ids)
}

pub async fn presence<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<PresenceAnswer>, ApiError> {
    authorize_or(&state, &headers, || {
        metrics::presence_query_rejected(PresenceQueryRejection::Unauthorized);
    })?;
    let ids = presence_query(query.as_deref()).map_err(|e| {
        metrics::presence_query_rejected(e.label());
        ApiError::bad_request(e.to_string())
    })?;
    let states = state
        .engine
        .presence()
        .lookup(&ids)
        .await
        .inspect_err(|_| metrics::store_error(StoreOp::Presence))?;
    let mut answer = PresenceAnswer::default();
    for (who, state) in ids.into_iter().zip(states) {
        let map = match who.kind {
            PresenceKind::Store => &mut answer.stores,
            PresenceKind::Driver => &mut answer.drivers,
        };
        map.insert(who.id, state);
    }
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_stores_and_drivers_each_once() {
        let ids = presence_query(Some("store_id=s1&driver_id=d%201&store_id=s1&store_id=s2"))
            .expect("valid");
        assert_eq!(
            ids,
            [
                PresenceId::new(PresenceKind::Store, "s1"),
                PresenceId::new(PresenceKind::Driver, "d 1"),
                PresenceId::new(PresenceKind::Store, "s2"),
            ]
        );
    }

    #[test]
    fn bad_queries_are_refused_with_what_to_fix() {
        assert_eq!(presence_query(None), Err(QueryError::NoIds));
        assert_eq!(presence_query(Some("")), Err(QueryError::NoIds));
        assert_eq!(
            presence_query(Some("store=s1")),
            Err(QueryError::UnknownParameter("store".into()))
        );
        assert_eq!(
            presence_query(Some("store_id=")),
            Err(QueryError::EmptyId("store_id"))
        );
        let long = format!("driver_id={}", "d".repeat(MAX_ID_BYTES + 1));
        assert_eq!(
            presence_query(Some(&long)),
            Err(QueryError::LongId("driver_id"))
        );
        let many: Vec<String> = (0..=MAX_IDS).map(|i| format!("store_id=s{i}")).collect();
        assert_eq!(
            presence_query(Some(&many.join("&"))),
            Err(QueryError::TooMany(MAX_IDS + 1))
        );
        let exactly: Vec<String> = (0..MAX_IDS).map(|i| format!("driver_id=d{i}")).collect();
        assert_eq!(
            presence_query(Some(&exactly.join("&"))).map(|ids| ids.len()),
            Ok(MAX_IDS)
        );
    }
}
