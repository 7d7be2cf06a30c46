//! What a client sends once connected, as the relay receives it: one
//! Socket.IO packet in the text format, after Engine.IO's message prefix `4`
//! (`2["driver:location_update",{...}]`, `21["order:subscribe",{...}]` with
//! an ack id, `3<id>[{...}]` for the ack of an offer,
//! `0{"token":...}` for a connect), decoded by socketioxide's parser exactly
//! as the gateway's extractors do, then checked by the relay's own code.
//!
//! Beyond "no panic": an accepted location update is within the contract's
//! ranges, holds exactly the numbers the driver wrote (as a correctly rounding
//! parser reads them), and survives the relay's own
//! re-encoding (the `order:driver_location` emit and the fan-out batch to the
//! other nodes) bit for bit; accepted order ids and sync ids are within their
//! length limits; an accepted chat payload (`chat:send`, `chat:history`,
//! `chat:typing`) is within its limits; an `auth:refresh` token is read exactly as the handshake
//! reads its `auth` payload (else `missing token`); an offer's ack is stored
//! as JSON that reads back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::{
    engine::DriverLocation,
    events::LocationUpdate,
    auth::Rejection,
    gateway::{
        DriverLocationEvent, OrderRef, SyncRequest, check_history, check_send, check_typing,
        last_event_id, order_ref, refresh_token, token_from,
    },
};
use serde_json::Value;
use socketioxide_core::{
    Str,
    packet::PacketData,
    parser::{Parse, ParseConfig, ParserState},
};
use socketioxide_parser_common::CommonParser;

/// The number a client wrote for `key`, read by a correctly rounding parser
/// (Rust's, as a browser's): only when the packet names `key` once and has
/// no escapes, so that it can only be the payload's own field.
fn written(packet: &str, key: &str) -> Option<f64> {
    if packet.contains('\\') {
        return None;
    }
    let quoted = format!("\"{key}\"");
    let mut found = packet.match_indices(&quoted);
    let (at, _) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let rest = packet[at + quoted.len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = rest
        .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn location(packet: &str, payload: &Value) {
    let Ok(update) = LocationUpdate::parse(payload) else {
        return;
    };
    let LocationUpdate {
        lat,
        lng,
        heading,
        speed,
    } = update;
    assert!(
        lat.is_finite() && (-90.0..=90.0).contains(&lat),
        "lat {lat}"
    );
    assert!(
        lng.is_finite() && (-180.0..=180.0).contains(&lng),
        "lng {lng}"
    );
    assert!(heading.is_none_or(|h| h.is_finite() && (0.0..360.0).contains(&h)));
    assert!(speed.is_none_or(|s| s.is_finite() && s >= 0.0));
    // CONTRACT §2: `lat` and `lng` exactly as the driver sent them.
    for (key, held) in [("lat", lat), ("lng", lng)] {
        if let Some(sent) = written(packet, key) {
            assert!(held == sent, "{key} sent as {sent}, held as {held}");
        }
    }

    let event = DriverLocationEvent::new(
        "o1",
        &DriverLocation {
            lat,
            lng,
            heading,
            speed,
            ts: 0,
        },
    );
    let emitted = serde_json::to_string(&event).expect("numbers and strings");
    let read_back: DriverLocationEvent = serde_json::from_str(&emitted).expect("own output");
    let bits = |e: &DriverLocationEvent| {
        (
            e.lat.to_bits(),
            e.lng.to_bits(),
            e.heading.map(f64::to_bits),
            e.speed.map(f64::to_bits),
        )
    };
    assert_eq!(
        bits(&read_back),
        bits(&event),
        "re-encoding changed the location: {emitted}"
    );
    let again: Value = serde_json::from_str(&emitted).expect("own output");
    assert_eq!(LocationUpdate::parse(&again), Ok(update));
}

fn event(packet: &str, mut value: socketioxide_core::Value) {
    let Ok(name) = CommonParser.read_event(&value) else {
        return;
    };
    // The names the gateway registers handlers for (gateway/connection.rs).
    match name {
        "driver:location_update" => {
            if let Ok(payload) = CommonParser.decode_value::<Value>(&mut value, true) {
                location(packet, &payload);
            }
        }
        "order:subscribe" | "order:unsubscribe" => {
            let data = CommonParser.decode_value::<OrderRef>(&mut value, true);
            if let Ok(id) = order_ref(data) {
                assert!(!id.is_empty() && id.len() <= 128, "order id {id:?}");
            }
        }
        "auth:refresh" => {
            let data = CommonParser.decode_value::<Value>(&mut value, true);
            match refresh_token(data.as_ref().ok()) {
                // What the handshake would read from the same payload as `auth`.
                Ok(token) => {
                    assert!(!token.is_empty(), "empty token");
                    let auth = data.as_ref().expect("a token came from a payload");
                    assert_eq!(token_from(Some(auth), None).as_deref(), Some(token.as_str()));
                }
                Err(rejection) => assert_eq!(rejection, Rejection::MissingToken),
            }
        }
        "chat:send" => {
            let data = CommonParser.decode_value::<relay::events::chat::ChatSend>(&mut value, true);
            if let Ok(send) = check_send(data, 1000) {
                assert!(!send.text.trim().is_empty(), "blank text accepted");
                assert!(send.text.chars().count() <= 1000, "text too long");
                assert!(!send.order_id.is_empty() && send.order_id.len() <= 128);
                assert!(send.client_msg_id.is_none_or(|c| !c.is_empty() && c.len() <= 128));
            }
        }
        "chat:history" => {
            let data =
                CommonParser.decode_value::<relay::events::chat::ChatHistoryQuery>(&mut value, true);
            if let Ok(query) = check_history(data) {
                assert!(query.limit.is_some_and(|l| (1..=200).contains(&l)));
                assert!(!query.order_id.is_empty() && query.order_id.len() <= 128);
            }
        }
        "chat:typing" => {
            let data = CommonParser.decode_value::<relay::events::chat::ChatTyping>(&mut value, true);
            if let Ok(typing) = check_typing(data) {
                assert!(!typing.order_id.is_empty() && typing.order_id.len() <= 128);
            }
        }
        "sync" => {
            let data = CommonParser.decode_value::<SyncRequest>(&mut value, true);
            if let Some(id) = last_event_id(data) {
                assert!(!id.is_empty() && id.len() <= 64, "last_event_id {id:?}");
            }
        }
        _ => {}
    }
}

/// The ack of a `merchant:new_order` or `delivery:new_request`: kept as the
/// outcome's `response` field, which the backend reads as JSON.
fn ack(mut value: socketioxide_core::Value) {
    if let Ok(response) = CommonParser.decode_value::<Value>(&mut value, false) {
        let stored = response.to_string();
        let read_back: Value = serde_json::from_str(&stored).expect("stored response is JSON");
        assert_eq!(read_back, response, "{stored}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Engine.IO hands the Socket.IO layer text frames only as UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let state = ParserState::default();
    let Ok(packet) =
        CommonParser.decode_str(&ParseConfig::default(), &state, Str::from(text.to_owned()))
    else {
        return;
    };
    match packet.inner {
        PacketData::Connect(auth) => {
            if let Ok(auth) = CommonParser.decode_default::<Value>(auth.as_ref())
                && let Some(token) = token_from(Some(&auth), None)
            {
                assert!(!token.is_empty());
            }
        }
        PacketData::Event(value, _) | PacketData::BinaryEvent(value, _) => event(text, value),
        PacketData::EventAck(value, _) | PacketData::BinaryAck(value, _) => ack(value),
        PacketData::Disconnect | PacketData::ConnectError(_) => {}
    }
});
