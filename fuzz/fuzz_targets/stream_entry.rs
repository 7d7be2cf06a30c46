//! Backend events, both ways in (CONTRACT §3, §5): the `type` and `data`
//! fields of an `XADD` entry as the consumer decodes them, and the body of
//! `POST /api/events` as the publish API checks and appends it.
//!
//! Input: a body starting with `{` is a publish API body; anything else is
//! `<type>\n<data>`, any bytes (no newline: an entry without `data`; an empty type: an
//! entry without `type`).
//!
//! Beyond "no panic": every refusal is told by its bounded reason; a decoded
//! event is of the entry's type and within the schema's limits; its order is
//! the one the per-order sequencing keys it by, and that key follows the same
//! rule for every JSON `data`; and whatever the publish API accepts, the
//! consumer decodes from the appended entry to the same event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::events::{
    DecodeError, DecodeReason, DeliveryTarget, EventKind, OrderEvent, decode, decode_entry,
    decode_value, is_rfc3339, sequence_key,
};
use serde::Deserialize;
use serde_json::Value;

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128
}

/// The reason is one of the bounded set by its type; what the dead letter
/// and the 400 say starts with its label.
fn check_refusal(e: &DecodeError) {
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: ", e.reason.as_str())),
        "{text}"
    );
}

fn check_event(kind: &str, data: &str, event: &OrderEvent) {
    assert_eq!(event.kind().as_str(), kind);
    match event {
        OrderEvent::Created(e) => {
            assert!(id_ok(&e.order_id) && id_ok(&e.customer_id) && id_ok(&e.store_id));
            assert!((1..=3600).contains(&e.accept_timeout_s));
        }
        OrderEvent::Status(e) => {
            assert!(id_ok(&e.order_id) && id_ok(&e.status));
            assert!(e.timestamp.as_deref().is_none_or(is_rfc3339));
        }
        OrderEvent::Assigned(e) => assert!(id_ok(&e.order_id) && id_ok(&e.driver_id)),
        OrderEvent::DeliveryRequest(e) => {
            assert!(id_ok(&e.order_id));
            let p = &e.pickup;
            assert!(p.lat.is_finite() && (-90.0..=90.0).contains(&p.lat));
            assert!(p.lng.is_finite() && (-180.0..=180.0).contains(&p.lng));
            assert!(e.drop.is_object() && e.fare.is_number());
            assert!((1..=600).contains(&e.timer_s));
            match &e.target {
                DeliveryTarget::Driver(d) => assert!(id_ok(d)),
                DeliveryTarget::Nearby {
                    radius_m,
                    max_drivers,
                } => {
                    assert!(radius_m.is_finite() && *radius_m > 0.0 && *radius_m <= 100_000.0);
                    assert!((1..=100).contains(max_drivers));
                }
            }
        }
        OrderEvent::AdminAlert(e) => assert!(!e.level.is_empty() && e.level.len() <= 128),
        OrderEvent::ChatMessage(e) => {
            assert!(id_ok(&e.order_id) && !e.text.trim().is_empty());
            let role = e.from.role();
            assert!(role == "system" || ["customer", "driver", "support", "admin"].contains(&role));
        }
    }
    // Per-order sequencing must key the entry by the order it is handled as.
    if let Some(order) = event.order_id() {
        assert_eq!(
            sequence_key(Some(data.as_bytes())).as_deref(),
            Some(order),
            "sequenced under another order: {data}"
        );
    }
}

/// The sequencing key is the `order_id` string of an object, read as a JSON
/// parser that keeps the last of repeated keys reads it (as `decode` and the
/// read script's cjson do), decodable or not.
fn check_sequencing(data: &str) {
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return;
    };
    let expected = value
        .get("order_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty());
    assert_eq!(
        sequence_key(Some(data.as_bytes())).as_deref(),
        expected,
        "{data}"
    );
}

fn text(b: Option<&[u8]>) -> Option<&str> {
    b.and_then(|b| std::str::from_utf8(b).ok())
}

/// The fields as the consumer reads them: bytes, text or not.
fn entry(kind: Option<&[u8]>, data: Option<&[u8]>) {
    if let Some(data) = text(data) {
        check_sequencing(data);
    } else if data.is_some() {
        // Not text: no order, as for the read script.
        assert_eq!(sequence_key(data), None);
    }
    match decode_entry(kind, data) {
        Ok(event) => check_event(
            text(kind).expect("decoded: has a text type"),
            text(data).expect("decoded: has text data"),
            &event,
        ),
        Err(e) => {
            check_refusal(&e);
            let not_text = |b: Option<&[u8]>| b.is_some() && text(b).is_none();
            assert_eq!(
                e.reason == DecodeReason::InvalidUtf8,
                not_text(kind) || not_text(data),
                "{e}"
            );
        }
    }
}

/// The publish API's body (`http/api.rs`: `PublishBody`, read by axum's
/// `Json`, i.e. serde_json from the request bytes).
#[derive(Deserialize)]
struct PublishBody {
    #[serde(rename = "type")]
    kind: String,
    data: Value,
}

fn publish(body: &[u8]) {
    let Ok(body) = serde_json::from_slice::<PublishBody>(body) else {
        return;
    };
    let Some(kind) = EventKind::parse(&body.kind) else {
        return;
    };
    // What the API appends, as it appends it.
    let data = body.data.to_string();
    match decode_value(kind, body.data) {
        Ok(accepted) => {
            check_event(kind.as_str(), &data, &accepted);
            let consumed = decode(Some(kind.as_str()), Some(&data)).unwrap_or_else(|e| {
                panic!("accepted by the API, refused by the consumer: {e}: {data}")
            });
            assert_eq!(
                consumed, accepted,
                "the consumer decoded another event: {data}"
            );
        }
        Err(e) => check_refusal(&e),
    }
}

fuzz_target!(|input: &[u8]| {
    if input.first() == Some(&b'{') {
        return publish(input);
    }
    // Stream fields are bytes, text or not (engine/redis/values.rs).
    let (kind, data) = match input.iter().position(|b| *b == b'\n') {
        Some(at) => (&input[..at], Some(&input[at + 1..])),
        None => (input, None),
    };
    entry(Some(kind).filter(|k| !k.is_empty()), data);
});
