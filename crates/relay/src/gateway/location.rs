//! `driver:location_update` in, `order:driver_location` out.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Extension, SocketRef, State, TryData},
};

use super::budget::EventBudget;
use crate::{
    auth::{Principal, Role},
    events::{LocationUpdate, Reject},
    location::{LocationPipeline, deliver},
    metrics,
    rooms::Room,
};

pub async fn update<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
    Extension(principal): Extension<Principal>,
    Extension(budget): Extension<Arc<EventBudget>>,
    State(pipeline): State<Arc<LocationPipeline>>,
) {
    metrics::location_received();
    // The driver's order rooms on this node are kept current by the order
    // events (cluster-wide joins and leaves): no store read per update.
    let rooms = socket
        .rooms()
        .into_iter()
        .filter(|room| room.starts_with(Room::ORDER_PREFIX))
        .map(|room| room.into_owned());
    let accepted = admit(&principal, &budget, data.as_ref().ok())
        .and_then(|update| pipeline.accept(principal.sub(), update, rooms));
    let deliveries = match accepted {
        Ok(deliveries) => deliveries,
        Err(reject) => {
            metrics::location_rejected(reject);
            let _ = ack.send(&json!({ "ok": false, "error": reject.message() }));
            return;
        }
    };
    deliver(&io, &deliveries).await;
    metrics::location_accepted(deliveries.len());
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
