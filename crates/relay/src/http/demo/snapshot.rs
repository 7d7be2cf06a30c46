//! `GET /demo/state`: one bounded picture of the whole cluster for the demo
//! page, polled every couple of seconds. Live Socket.IO events animate the
//! page between polls; the snapshot is what a page that just opened (or
//! missed something) starts from.
//!
//! Everything comes from read-only engine queries, each capped, so one poll
//! costs a handful of Redis round trips whatever the size of the city:
//! the newest active orders, the most recently seen fresh drivers, the
//! last entries of the event stream (timelines, store and drop positions,
//! alerts) and the last offer outcomes; then the presence of the stores
//! found.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    active_order::ActiveOrder,
    engine::{
        DriverLocation, Engine, EventStream, LocationCache, OrderStore, PresenceStore, StoreResult,
        StreamEntry,
    },
    events::{PresenceId, PresenceKind, Timestamp, is_terminal},
};

/// Orders and drivers on the page at most: beyond these a live map stops
/// being readable anyway, and the poll stays cheap.
pub const MAX_ORDERS: usize = 200;
pub const MAX_DRIVERS: usize = 500;
/// Stream entries read per poll for timelines, positions and alerts.
const RECENT_EVENTS: usize = 1000;
/// Outcomes read per poll; the newest merchant ones are listed, the
/// driver ones only counted.
const RECENT_OUTCOMES: usize = 300;
const MAX_MERCHANT_OFFERS: usize = 40;
const MAX_ALERTS: usize = 40;
const MAX_TIMELINE: usize = 16;
const MAX_STORES: usize = 200;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub now: Timestamp,
    /// Newest first.
    pub orders: Vec<OrderView>,
    pub drivers: Vec<DriverView>,
    pub stores: Vec<StoreView>,
    /// Newest first.
    pub alerts: Vec<AlertView>,
    /// Merchant offers (`merchant:new_order`), newest first.
    pub offers: Vec<OfferView>,
    /// Driver offers (`delivery:new_request`) among the recent outcomes, by result.
    pub driver_offers: OfferCounts,
    pub limits: Limits,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub orders: usize,
    pub drivers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub status: String,
    pub customer_id: String,
    pub store_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup: Option<Point>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<Point>,
    /// Oldest first; only what the recent stream window still holds.
    pub timeline: Vec<Step>,
}

/// One step of an order's timeline: a status, or a driver assignment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct DriverView {
    pub driver_id: String,
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    pub ts: Timestamp,
    /// Assigned to one of the listed active orders.
    pub busy: bool,
}

#[derive(Debug, Serialize)]
pub struct StoreView {
    pub store_id: String,
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Presence (CONTRACT §7): a merchant socket of the store is connected
    /// somewhere, or left less than the grace ago.
    pub online: bool,
}

#[derive(Debug, Serialize)]
pub struct AlertView {
    pub event_id: String,
    pub level: String,
    pub message: String,
    /// What the alert is about, when the backend says (it may add any field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct OfferView {
    pub event_id: String,
    pub order_id: String,
    pub target: String,
    /// `acked`, `timeout` or `no_recipient`.
    pub outcome: String,
    /// The merchant's answer, when acked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// When it was decided, about: the offer's append time plus its latency.
    pub at: Timestamp,
}

#[derive(Debug, Default, PartialEq, Serialize)]
pub struct OfferCounts {
    pub accepted: usize,
    pub declined: usize,
    pub timeout: usize,
    pub no_recipient: usize,
}

/// Runs the four queries at once and assembles their answers, then asks
/// which of the stores found are online (one more round trip).
pub async fn take<E: Engine>(engine: &E, now: Timestamp) -> StoreResult<Snapshot> {
    let (orders, drivers, events, outcomes) = tokio::try_join!(
        engine.orders().newest(MAX_ORDERS),
        engine.locations().fresh_drivers(MAX_DRIVERS),
        engine.stream().recent_events(RECENT_EVENTS),
        engine.stream().recent_outcomes(RECENT_OUTCOMES),
    )?;
    let mut snapshot = assemble(orders, drivers, &events, outcomes, now);
    let ids: Vec<PresenceId> = snapshot
        .stores
        .iter()
        .map(|s| PresenceId::new(PresenceKind::Store, s.store_id.clone()))
        .collect();
    let states = engine.presence().lookup(&ids).await?;
    for (store, state) in snapshot.stores.iter_mut().zip(states) {
        store.online = state.online;
    }
    Ok(snapshot)
}

/// The milliseconds of a stream id (`ms-seq`): when the entry was appended.
fn id_ms(id: &str) -> Timestamp {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

fn rfc3339_ms(s: &str) -> Option<Timestamp> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn point(value: Option<&Value>) -> Option<Point> {
    let v = value?;
    let (lat, lng) = (v.get("lat")?.as_f64()?, v.get("lng")?.as_f64()?);
    let valid = (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng);
    valid.then_some(Point { lat, lng })
}

fn text(data: &Map<String, Value>, key: &str) -> Option<String> {
    data.get(key)?.as_str().map(str::to_owned)
}

/// Pure assembly, so that it is tested without an engine.
pub fn assemble(
    orders: Vec<ActiveOrder>,
    drivers: Vec<(String, DriverLocation)>,
    events: &[StreamEntry],
    outcomes: Vec<Map<String, Value>>,
    now: Timestamp,
) -> Snapshot {
    let active: HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let mut store_of: HashMap<String, String> = orders
        .iter()
        .map(|o| (o.order_id.clone(), o.store_id.clone()))
        .collect();
    let mut timelines: HashMap<String, Vec<Step>> = HashMap::new();
    let mut pickups: HashMap<String, Point> = HashMap::new();
    let mut drops: HashMap<String, Point> = HashMap::new();
    // Keyed by store, so a store seen in many orders is one square.
    let mut stores: HashMap<String, StoreView> = HashMap::new();
    let mut alerts = Vec::new();

    // Oldest first: later positions and steps win.
    for entry in events {
        let (Some(kind), Some(data)) = (entry.kind_str(), entry.data_str()) else {
            continue;
        };
        let Ok(Value::Object(data)) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let at = id_ms(&entry.id);
        if kind == "admin.alert" {
            alerts.push(AlertView {
                event_id: entry.id.clone(),
                level: text(&data, "level").unwrap_or_else(|| "info".to_owned()),
                message: text(&data, "message").unwrap_or_default(),
                order_id: text(&data, "order_id"),
                store_id: text(&data, "store_id"),
                at,
            });
            continue;
        }
        let Some(order_id) = text(&data, "order_id") else {
            continue;
        };
        if kind == "order.created"
            && let Some(store) = text(&data, "store_id")
        {
            store_of.insert(order_id.clone(), store);
        }
        // Where the store and the customer are: a delivery request's pickup
        // and drop, or the same optional hints on `order.created` (the relay
        // ignores fields it does not know).
        if matches!(kind, "order.created" | "delivery.request") {
            if let Some(pickup) = point(data.get("pickup")) {
                if let Some(store) = store_of.get(&order_id)
                    && stores.len() < MAX_STORES
                {
                    let name = data
                        .get("pickup")
                        .and_then(|p| p.get("name"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    stores.insert(
                        store.clone(),
                        StoreView {
                            store_id: store.clone(),
                            lat: pickup.lat,
                            lng: pickup.lng,
                            name,
                            online: false,
                        },
                    );
                }
                if active.contains(order_id.as_str()) {
                    pickups.insert(order_id.clone(), pickup);
                }
            }
            if let Some(drop) = point(data.get("drop"))
                && active.contains(order_id.as_str())
            {
                drops.insert(order_id.clone(), drop);
            }
        }
        if !active.contains(order_id.as_str()) {
            continue;
        }
        let step = match kind {
            "order.created" => Some(Step {
                event_id: entry.id.clone(),
                status: Some("placed".to_owned()),
                assigned: None,
                at,
            }),
            "order.status" => text(&data, "status").map(|status| Step {
                event_id: entry.id.clone(),
                status: Some(status),
                assigned: None,
                at: text(&data, "timestamp")
                    .and_then(|t| rfc3339_ms(&t))
                    .unwrap_or(at),
            }),
            "order.assigned" => text(&data, "driver_id").map(|driver| Step {
                event_id: entry.id.clone(),
                status: None,
                assigned: Some(driver),
                at,
            }),
            _ => None,
        };
        if let Some(step) = step {
            let timeline = timelines.entry(order_id).or_default();
            if timeline.len() == MAX_TIMELINE {
                timeline.remove(0);
            }
            timeline.push(step);
        }
    }

    let busy: HashSet<&str> = orders
        .iter()
        .filter(|o| !is_terminal(&o.status))
        .filter_map(|o| o.driver_id.as_deref())
        .collect();
    let drivers = drivers
        .into_iter()
        .map(|(driver_id, l)| DriverView {
            busy: busy.contains(driver_id.as_str()),
            driver_id,
            lat: l.lat,
            lng: l.lng,
            heading: l.heading,
            ts: l.ts,
        })
        .collect();

    let mut offers = Vec::new();
    let mut driver_offers = OfferCounts::default();
    for outcome in outcomes.iter().rev() {
        let field = |k: &str| outcome.get(k).and_then(Value::as_str).unwrap_or_default();
        let response = outcome.get("response");
        let accepted = response
            .and_then(|r| r.get("accepted"))
            .and_then(Value::as_bool);
        match (field("event"), field("outcome")) {
            ("merchant:new_order", result) if offers.len() < MAX_MERCHANT_OFFERS => {
                let latency_ms = outcome.get("latency_ms").and_then(Value::as_u64);
                offers.push(OfferView {
                    event_id: field("event_id").to_owned(),
                    order_id: field("order_id").to_owned(),
                    target: field("target").to_owned(),
                    outcome: result.to_owned(),
                    accepted,
                    reason: response
                        .and_then(|r| r.get("reason"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    latency_ms,
                    at: id_ms(field("event_id")) + latency_ms.unwrap_or(0),
                });
            }
            ("delivery:new_request", "acked") if accepted == Some(true) => {
                driver_offers.accepted += 1;
            }
            ("delivery:new_request", "acked") => driver_offers.declined += 1,
            ("delivery:new_request", "timeout") => driver_offers.timeout += 1,
            ("delivery:new_request", "no_recipient") => driver_offers.no_recipient += 1,
            _ => {}
        }
    }

    let orders = orders
        .into_iter()
        .rev()
        .map(|o| OrderView {
            pickup: pickups.get(&o.order_id).copied(),
            drop: drops.get(&o.order_id).copied(),
            timeline: timelines.remove(&o.order_id).unwrap_or_default(),
            order_id: o.order_id,
            status: o.status,
            customer_id: o.customer_id,
            store_id: o.store_id,
            driver_id: o.driver_id,
            created_at: o.created_at,
            updated_at: o.updated_at,
        })
        .collect();
    let mut stores: Vec<StoreView> = stores.into_values().collect();
    stores.sort_by(|a, b| a.store_id.cmp(&b.store_id));
    alerts.reverse();
    alerts.truncate(MAX_ALERTS);

    Snapshot {
        now,
        orders,
        drivers,
        stores,
        alerts,
        offers,
        driver_offers,
        limits: Limits {
            orders: MAX_ORDERS,
            drivers: MAX_DRIVERS,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(id: &str, kind: &str, data: Value) -> StreamEntry {
        StreamEntry {
            id: id.to_owned(),
            kind: Some(kind.as_bytes().to_vec()),
            data: Some(data.to_string().into_bytes()),
            first_in_order: false,
        }
    }

    fn location(lat: f64, ts: Timestamp) -> DriverLocation {
        DriverLocation {
            lat,
            lng: 77.6,
            heading: Some(90.0),
            speed: None,
            ts,
        }
    }

    fn outcome(
        event: &str,
        order: &str,
        result: &str,
        response: Option<Value>,
    ) -> Map<String, Value> {
        let mut m = json!({
            "event_id": "1000-0", "event": event, "order_id": order,
            "target": "merchant_s1", "outcome": result, "latency_ms": 250,
        });
        if let Some(r) = response {
            m["response"] = r;
        }
        m.as_object().cloned().unwrap()
    }

    #[test]
    fn builds_timelines_positions_and_feeds_from_the_stream() {
        let mut o1 = ActiveOrder::placed("o1", "c1", "s1", 1_000);
        o1.status = "preparing".to_owned();
        o1.driver_id = Some("d1".to_owned());
        let o2 = ActiveOrder::placed("o2", "c2", "s2", 2_000);
        let events = [
            // An order that already ended: no timeline, but its store counts.
            entry(
                "500-0",
                "order.created",
                json!({"order_id": "o0", "customer_id": "c0", "store_id": "s9", "items": []}),
            ),
            entry(
                "600-0",
                "delivery.request",
                json!({"order_id": "o0", "pickup": {"lat": 12.9, "lng": 77.5, "name": "Dosa Hut"}, "drop": {"lat": 12.8, "lng": 77.4}, "fare": 1, "radius_m": 100}),
            ),
            entry(
                "1000-0",
                "order.created",
                json!({"order_id": "o1", "customer_id": "c1", "store_id": "s1", "items": []}),
            ),
            entry(
                "1100-0",
                "admin.alert",
                json!({"level": "warning", "message": "rain", "store_id": "s1"}),
            ),
            entry(
                "1200-0",
                "delivery.request",
                json!({"order_id": "o1", "pickup": {"lat": 12.97, "lng": 77.59}, "drop": {"lat": 12.95, "lng": 77.61}, "fare": 1, "driver_id": "d1"}),
            ),
            entry(
                "1300-0",
                "order.assigned",
                json!({"order_id": "o1", "driver_id": "d1"}),
            ),
            entry(
                "1400-0",
                "order.status",
                json!({"order_id": "o1", "status": "preparing", "timestamp": "1970-01-01T00:00:01.450Z"}),
            ),
            entry(
                "1500-0",
                "admin.alert",
                json!({"level": "info", "message": "later"}),
            ),
            entry("1600-0", "order.status", json!({"order_id": "o1"})),
            entry("1700-0", "order.status", json!("not an object")),
        ];
        let drivers = vec![
            ("d1".to_owned(), location(12.96, 1_650)),
            ("d2".to_owned(), location(12.94, 1_640)),
        ];
        let outcomes = vec![
            outcome(
                "merchant:new_order",
                "o1",
                "acked",
                Some(json!({"accepted": true})),
            ),
            outcome(
                "delivery:new_request",
                "o1",
                "acked",
                Some(json!({"accepted": true})),
            ),
            outcome(
                "delivery:new_request",
                "o1",
                "acked",
                Some(json!({"accepted": false})),
            ),
            outcome("delivery:new_request", "o1", "timeout", None),
            outcome(
                "merchant:new_order",
                "o2",
                "acked",
                Some(json!({"accepted": false, "reason": "closed"})),
            ),
        ];
        let s = assemble(vec![o1, o2], drivers, &events, outcomes, 9_999);

        assert_eq!(s.now, 9_999);
        let ids: Vec<_> = s.orders.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["o2", "o1"], "newest first");
        let o1 = &s.orders[1];
        assert_eq!(
            o1.pickup,
            Some(Point {
                lat: 12.97,
                lng: 77.59
            })
        );
        assert_eq!(
            o1.drop,
            Some(Point {
                lat: 12.95,
                lng: 77.61
            })
        );
        let steps: Vec<_> = o1
            .timeline
            .iter()
            .map(|s| (s.status.as_deref(), s.assigned.as_deref(), s.at))
            .collect();
        assert_eq!(
            steps,
            [
                (Some("placed"), None, 1_000),
                (None, Some("d1"), 1_300),
                (Some("preparing"), None, 1_450),
            ]
        );
        assert!(s.orders[0].timeline.is_empty());
        assert_eq!(s.orders[0].pickup, None);

        let busy: Vec<_> = s
            .drivers
            .iter()
            .map(|d| (d.driver_id.as_str(), d.busy))
            .collect();
        assert_eq!(busy, [("d1", true), ("d2", false)]);

        let stores: Vec<_> = s
            .stores
            .iter()
            .map(|s| (s.store_id.as_str(), s.name.as_deref()))
            .collect();
        assert_eq!(stores, [("s1", None), ("s9", Some("Dosa Hut"))]);

        let alerts: Vec<_> = s.alerts.iter().map(|a| a.message.as_str()).collect();
        assert_eq!(alerts, ["later", "rain"]);
        assert_eq!(s.alerts[1].level, "warning");
        assert_eq!(s.alerts[1].at, 1_100);
        assert_eq!(s.alerts[1].store_id.as_deref(), Some("s1"));
        assert_eq!(s.alerts[0].store_id, None);

        assert_eq!(s.offers.len(), 2);
        assert_eq!(s.offers[0].order_id, "o2");
        assert_eq!(s.offers[0].accepted, Some(false));
        assert_eq!(s.offers[0].reason.as_deref(), Some("closed"));
        assert_eq!(s.offers[1].accepted, Some(true));
        assert_eq!(s.offers[1].at, 1_250);
        assert_eq!(
            s.driver_offers,
            OfferCounts {
                accepted: 1,
                declined: 1,
                timeout: 1,
                no_recipient: 0
            }
        );
    }

    #[test]
    fn timelines_stay_bounded() {
        let order = ActiveOrder::placed("o1", "c1", "s1", 1);
        let events: Vec<_> = (0..MAX_TIMELINE + 4)
            .map(|n| {
                entry(
                    &format!("{}-0", 10 + n),
                    "order.status",
                    json!({"order_id": "o1", "status": format!("s{n}")}),
                )
            })
            .collect();
        let s = assemble(vec![order], Vec::new(), &events, Vec::new(), 0);
        let timeline = &s.orders[0].timeline;
        assert_eq!(timeline.len(), MAX_TIMELINE);
        assert_eq!(timeline.last().unwrap().status.as_deref(), Some("s19"));
    }
}
