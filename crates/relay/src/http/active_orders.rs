//! `GET /orders/active`: what a reconnecting client resyncs from.

use axum::{Json, extract::State, http::HeaderMap};
use serde::Serialize;

use super::{
    HttpState,
    errors::{ApiError, bearer},
};
use crate::{
    active_order::ActiveOrder,
    auth::Rejection,
    engine::{DriverLocation, Engine, LocationCache, OrderStore},
    events::{is_terminal, rfc3339},
};

#[derive(Serialize)]
pub struct ActiveOrders {
    orders: Vec<OrderView>,
}

#[derive(Serialize)]
struct OrderView {
    order_id: String,
    status: String,
    updated_at: String,
    customer_id: String,
    store_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_location: Option<LocationView>,
}

#[derive(Serialize)]
struct LocationView {
    lat: f64,
    lng: f64,
    ts: u64,
}

impl From<DriverLocation> for LocationView {
    fn from(l: DriverLocation) -> Self {
        Self {
            lat: l.lat,
            lng: l.lng,
            ts: l.ts,
        }
    }
}

pub async fn active<E: Engine>(
    State(state): State<HttpState<E>>,
    headers: HeaderMap,
) -> Result<Json<ActiveOrders>, ApiError> {
    let token = bearer(&headers).ok_or(Rejection::MissingToken)?;
    let principal = state.verifier.verify(token)?;
    let orders = state.engine.orders().active_for(&principal).await?;
    let mut views = Vec::with_capacity(orders.len());
    // An order with its final status is ended right after that status went
    // out: a client that resyncs on seeing it must not find it still active.
    for order in orders.into_iter().filter(|o| !is_terminal(&o.status)) {
        let location = match &order.driver_id {
            // A missing location is not worth failing the resync for.
            Some(driver) => state.engine.locations().latest(driver).await.ok().flatten(),
            None => None,
        };
        views.push(view(order, location));
    }
    Ok(Json(ActiveOrders { orders: views }))
}

fn view(order: ActiveOrder, location: Option<DriverLocation>) -> OrderView {
    OrderView {
        updated_at: rfc3339(order.updated_at),
        order_id: order.order_id,
        status: order.status,
        customer_id: order.customer_id,
        store_id: order.store_id,
        driver_id: order.driver_id,
        driver_location: location.map(Into::into),
    }
}
