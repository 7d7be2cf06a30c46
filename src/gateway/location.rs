//! `driver:location_update` in, `order:driver_location` out.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Extension, SocketRef, State, TryData},
};

use crate::{
    auth::{Principal, Role},
    engine::DriverLocation,
    location::{EventBudget, LocationPipeline, LocationUpdate, Reject},
    metrics,
};

pub const DRIVER_LOCATION: &str = "order:driver_location";

/// The payload of `order:driver_location` (CONTRACT §2).
#[derive(Debug, Serialize)]
pub struct DriverLocationEvent<'a> {
    pub order_id: &'a str,
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    pub ts: u64,
}

impl<'a> DriverLocationEvent<'a> {
    pub fn new(order_id: &'a str, l: &DriverLocation) -> Self {
        Self {
            order_id,
            lat: l.lat,
            lng: l.lng,
            heading: l.heading,
            speed: l.speed,
            ts: l.ts,
        }
    }
}

pub async fn update<A: Adapter>(
    socket: SocketRef<A>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(pipeline): State<Arc<LocationPipeline>>,
) {
    metrics::location_received();
    let accepted = admit(&principal, &budget, data.as_ref().ok())
        .and_then(|update| pipeline.accept(principal.sub(), update));
    let location = match accepted {
        Ok(location) => location,
        Err(reject) => {
            metrics::location_rejected(reject.as_str());
            let _ = ack.send(&json!({ "ok": false, "error": reject.message() }));
            return;
        }
    };
    // The driver's order rooms on this node are kept current by the order
    // events (cluster-wide joins and leaves): no store read per update.
    let rooms: Vec<String> = socket
        .rooms()
        .into_iter()
        .filter(|room| room.starts_with("order_"))
        .map(|room| room.into_owned())
        .collect();
    for room in &rooms {
        let event = DriverLocationEvent::new(&room["order_".len()..], &location);
        // Volatile: a client too slow for this update gets the next one.
        if let Err(e) = socket
            .to(room.clone())
            .volatile()
            .emit(DRIVER_LOCATION, &event)
            .await
        {
            tracing::debug!(error = %e, "location fan-out failed");
        }
    }
    metrics::location_accepted(rooms.len());
    let _ = ack.send(&json!({ "ok": true }));
}

fn admit(
    principal: &Principal,
    budget: &EventBudget,
    data: Option<&Value>,
) -> Result<LocationUpdate, Reject> {
    if !budget.admit(tokio::time::Instant::now()) {
        return Err(Reject::RateLimited);
    }
    if principal.role() != Role::Driver {
        return Err(Reject::NotDriver);
    }
    LocationUpdate::parse(data.ok_or(Reject::InvalidPayload)?)
}
