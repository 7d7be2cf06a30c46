//! Stream entry -> [`OrderEvent`], with a bounded reason for every refusal.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    AdminAlert, DeliveryRequest, DeliveryTarget, EventKind, GeoPoint, OrderAssigned, OrderCreated,
    OrderEvent, OrderStatus, time::is_rfc3339,
};

/// Why an entry cannot be handled. `reason` is the metric label and the
/// dead letter's `reason` prefix; `detail` tells a human what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct DecodeError {
    pub reason: DecodeReason,
    pub detail: String,
}

impl DecodeError {
    fn new(reason: DecodeReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The bounded reasons a stream entry or a published event is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeReason {
    MissingType,
    UnknownType,
    MissingData,
    /// `type` or `data` is not UTF-8 text.
    InvalidUtf8,
    BadJson,
    MissingField,
    InvalidField,
    /// The entry is beyond `RELAY_MAX_EVENT_BYTES`: refused before decoding.
    TooLarge,
}

impl DecodeReason {
    pub const ALL: [DecodeReason; 8] = [
        Self::MissingType,
        Self::UnknownType,
        Self::MissingData,
        Self::InvalidUtf8,
        Self::BadJson,
        Self::MissingField,
        Self::InvalidField,
        Self::TooLarge,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::MissingData => "missing_data",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadJson => "bad_json",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::TooLarge => "too_large",
        }
    }

    /// Whether an entry refused for this reason can have a known event type.
    pub const fn may_know_type(self) -> bool {
        !matches!(self, Self::MissingType | Self::UnknownType)
    }

    /// Whether an entry refused for this reason can lack a known event type
    /// (its `type` absent, unknown, not text, or never read).
    pub const fn may_lack_type(self) -> bool {
        matches!(
            self,
            Self::MissingType | Self::UnknownType | Self::InvalidUtf8 | Self::TooLarge
        )
    }
}

const MAX_ID_LEN: usize = 128;

/// Decodes a stream entry's `type` and `data` fields as read: bytes, which
/// must be UTF-8 text before anything else is looked at.
pub fn decode_entry(kind: Option<&[u8]>, data: Option<&[u8]>) -> Result<OrderEvent, DecodeError> {
    let kind = kind.map(|k| text("type", k)).transpose()?;
    let data = data.map(|d| text("data", d)).transpose()?;
    decode(kind, data)
}

fn text<'a>(field: &str, bytes: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| {
        DecodeError::new(
            DecodeReason::InvalidUtf8,
            format!("`{field}` is not UTF-8 text: {e}"),
        )
    })
}

/// Decodes the `type` and `data` fields of a stream entry (or of a publish
/// API body; both go through here so they accept exactly the same events).
pub fn decode(kind: Option<&str>, data: Option<&str>) -> Result<OrderEvent, DecodeError> {
    let kind = kind
        .ok_or_else(|| DecodeError::new(DecodeReason::MissingType, "entry has no `type` field"))?;
    let kind = EventKind::parse(kind).ok_or_else(|| {
        DecodeError::new(
            DecodeReason::UnknownType,
            format!("unknown event type `{kind}`"),
        )
    })?;
    let data = data
        .ok_or_else(|| DecodeError::new(DecodeReason::MissingData, "entry has no `data` field"))?;
    let value: Value = serde_json::from_str(data)
        .map_err(|e| DecodeError::new(DecodeReason::BadJson, format!("`data` is not JSON: {e}")))?;
    decode_value(kind, value)
}

pub fn decode_value(kind: EventKind, value: Value) -> Result<OrderEvent, DecodeError> {
    if !value.is_object() {
        return Err(DecodeError::new(
            DecodeReason::InvalidField,
            "`data` must be a JSON object",
        ));
    }
    let event = match kind {
        EventKind::OrderCreated => {
            let e: OrderCreated = fields(value)?;
            ids(&[
                ("order_id", &e.order_id),
                ("customer_id", &e.customer_id),
                ("store_id", &e.store_id),
            ])?;
            range("accept_timeout_s", e.accept_timeout_s, 1, 3600)?;
            OrderEvent::Created(e)
        }
        EventKind::OrderStatus => {
            let e: OrderStatus = fields(value)?;
            ids(&[("order_id", &e.order_id), ("status", &e.status)])?;
            if let Some(ts) = &e.timestamp
                && !is_rfc3339(ts)
            {
                return Err(DecodeError::new(
                    DecodeReason::InvalidField,
                    "`timestamp` must be RFC 3339",
                ));
            }
            OrderEvent::Status(e)
        }
        EventKind::OrderAssigned => {
            let e: OrderAssigned = fields(value)?;
            ids(&[("order_id", &e.order_id), ("driver_id", &e.driver_id)])?;
            OrderEvent::Assigned(e)
        }
        EventKind::DeliveryRequest => OrderEvent::DeliveryRequest(delivery_request(value)?),
        EventKind::AdminAlert => {
            let e: AdminAlert = fields(value)?;
            ids(&[("level", &e.level)])?;
            OrderEvent::AdminAlert(e)
        }
        EventKind::ChatMessage => {
            let Value::Object(map) = value else {
                return Err(DecodeError::new(
                    DecodeReason::InvalidField,
                    "`data` must be a JSON object",
                ));
            };
            OrderEvent::ChatMessage(super::chat::decode_entry(map).map_err(|e| match e {
                super::chat::ChatEntryError::Missing(field) => DecodeError::new(
                    DecodeReason::MissingField,
                    format!("missing field `{field}`"),
                ),
                super::chat::ChatEntryError::Invalid(field, why) => {
                    DecodeError::new(DecodeReason::InvalidField, format!("`{field}` {why}"))
                }
            })?)
        }
    };
    Ok(event)
}

/// The order an entry belongs to, for per-order sequencing: the `order_id`
/// string of a JSON object `data`, whatever the type. The stream read script
/// applies the same rule (see `engine/redis/stream.rs`), and takes no key
/// from `data` that is not UTF-8 text (it is dead-lettered undecoded).
pub fn sequence_key(data: Option<&[u8]>) -> Option<String> {
    let data = std::str::from_utf8(data?).ok()?;
    match serde_json::from_str::<Keyed>(data).ok()?.0? {
        Value::String(id) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// An object's `order_id`, other fields skipped unparsed. A repeated key
/// counts once, the last one, as when `decode` and the read script's cjson
/// read it (a derived struct refuses the object instead).
struct Keyed(Option<Value>);

impl<'de> Deserialize<'de> for Keyed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Key {
            OrderId,
            #[serde(other)]
            Other,
        }
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Keyed;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Keyed, M::Error> {
                let mut order_id = None;
                while let Some(key) = map.next_key()? {
                    match key {
                        Key::OrderId => order_id = Some(map.next_value()?),
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Keyed(order_id))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

fn fields<T: DeserializeOwned>(value: Value) -> Result<T, DecodeError> {
    serde_json::from_value(value).map_err(|e| {
        let detail = e.to_string();
        let reason = if detail.starts_with("missing field") {
            DecodeReason::MissingField
        } else {
            DecodeReason::InvalidField
        };
        DecodeError::new(reason, detail)
    })
}

fn ids(values: &[(&str, &str)]) -> Result<(), DecodeError> {
    for (name, value) in values {
        if value.is_empty() || value.len() > MAX_ID_LEN {
            return Err(DecodeError::new(
                DecodeReason::InvalidField,
                format!("`{name}` must be a non-empty string of at most {MAX_ID_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

fn range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    v: T,
    min: T,
    max: T,
) -> Result<(), DecodeError> {
    if v < min || v > max {
        return Err(DecodeError::new(
            DecodeReason::InvalidField,
            format!("`{name}` must be between {min} and {max}"),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawDeliveryRequest {
    order_id: String,
    pickup: GeoPoint,
    drop: Value,
    fare: Value,
    driver_id: Option<String>,
    radius_m: Option<f64>,
    max_drivers: Option<u32>,
    timer_s: Option<u32>,
}

fn delivery_request(value: Value) -> Result<DeliveryRequest, DecodeError> {
    let raw: RawDeliveryRequest = fields(value)?;
    ids(&[("order_id", &raw.order_id)])?;
    let p = &raw.pickup;
    if !(p.lat.is_finite()
        && (-90.0..=90.0).contains(&p.lat)
        && p.lng.is_finite()
        && (-180.0..=180.0).contains(&p.lng))
    {
        return Err(DecodeError::new(
            DecodeReason::InvalidField,
            "`pickup` needs lat in [-90, 90] and lng in [-180, 180]",
        ));
    }
    if !raw.drop.is_object() {
        return Err(DecodeError::new(
            DecodeReason::InvalidField,
            "`drop` must be an object",
        ));
    }
    if !raw.fare.is_number() {
        return Err(DecodeError::new(
            DecodeReason::InvalidField,
            "`fare` must be a number",
        ));
    }
    let target = match (raw.driver_id, raw.radius_m) {
        (Some(driver), None) => {
            ids(&[("driver_id", &driver)])?;
            DeliveryTarget::Driver(driver)
        }
        (None, Some(radius_m)) => {
            if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= 100_000.0) {
                return Err(DecodeError::new(
                    DecodeReason::InvalidField,
                    "`radius_m` must be in (0, 100000]",
                ));
            }
            let max_drivers = raw.max_drivers.unwrap_or(10);
            range("max_drivers", max_drivers, 1, 100)?;
            DeliveryTarget::Nearby {
                radius_m,
                max_drivers,
            }
        }
        (Some(_), Some(_)) => {
            return Err(DecodeError::new(
                DecodeReason::InvalidField,
                "give either `driver_id` or `radius_m`, not both",
            ));
        }
        (None, None) => {
            return Err(DecodeError::new(
                DecodeReason::MissingField,
                "missing field `driver_id` or `radius_m`",
            ));
        }
    };
    let timer_s = raw.timer_s.unwrap_or(30);
    range("timer_s", timer_s, 1, 600)?;
    Ok(DeliveryRequest {
        order_id: raw.order_id,
        pickup: raw.pickup,
        drop: raw.drop,
        fare: raw.fare,
        target,
        timer_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the `stream_entry` fuzz target: without serde_json's
    /// `float_roundtrip`, a number the publish API accepted was appended as
    /// text that the consumer read back as another number.
    #[test]
    fn the_consumer_decodes_what_the_api_accepted() {
        let data: Value = serde_json::from_str(
            r#"{"order_id":"o9","pickup":{"lat":1,"lng":2},"drop":{"lng":1515555555500000000000000000000000000000000000000000001144161427.21},"fare":12.5,"radius_m":2500.5}"#,
        )
        .expect("json");
        let accepted = decode_value(EventKind::DeliveryRequest, data.clone()).expect("valid");
        let appended = data.to_string();
        assert_eq!(
            decode(Some("delivery.request"), Some(&appended)),
            Ok(accepted)
        );
    }

    fn reason(kind: Option<&str>, data: Option<&str>) -> &'static str {
        decode(kind, data).expect_err("must fail").reason.as_str()
    }

    #[test]
    fn decodes_every_kind() {
        let created = decode(
            Some("order.created"),
            Some(r#"{"order_id":"o1","customer_id":"c1","store_id":"s1","items":[{"sku":"x"}]}"#),
        )
        .expect("created");
        assert!(matches!(
            created,
            OrderEvent::Created(OrderCreated {
                accept_timeout_s: 60,
                ..
            })
        ));
        let status = decode(
            Some("order.status"),
            Some(r#"{"order_id":"o1","status":"preparing"}"#),
        )
        .expect("status");
        assert_eq!(status.order_id(), Some("o1"));
        decode(
            Some("order.assigned"),
            Some(r#"{"order_id":"o1","driver_id":"d1"}"#),
        )
        .expect("assigned");
        let geo = decode(
            Some("delivery.request"),
            Some(r#"{"order_id":"o1","pickup":{"lat":12.9,"lng":77.5,"name":"Store"},"drop":{"lat":1,"lng":2},"fare":50,"radius_m":3000}"#),
        )
        .expect("geo request");
        let OrderEvent::DeliveryRequest(geo) = geo else {
            panic!("kind")
        };
        assert_eq!(
            geo.target,
            DeliveryTarget::Nearby {
                radius_m: 3000.0,
                max_drivers: 10
            }
        );
        assert_eq!(geo.timer_s, 30);
        assert_eq!(geo.pickup.extra["name"], "Store");
        let alert = decode(
            Some("admin.alert"),
            Some(r#"{"level":"warn","message":"m","zone":"north"}"#),
        )
        .expect("alert");
        let OrderEvent::AdminAlert(alert) = alert else {
            panic!("kind")
        };
        assert_eq!(alert.extra["zone"], "north");
    }

    #[test]
    fn refuses_malformed_entries_with_a_reason() {
        assert_eq!(reason(None, Some("{}")), "missing_type");
        assert_eq!(reason(Some("order.exploded"), Some("{}")), "unknown_type");
        assert_eq!(reason(Some("order.status"), None), "missing_data");
        assert_eq!(reason(Some("order.status"), Some("{nope")), "bad_json");
        assert_eq!(
            reason(Some("order.status"), Some(r#"{"order_id":"o1"}"#)),
            "missing_field"
        );
        assert_eq!(
            reason(Some("order.status"), Some(r#"{"order_id":7,"status":"x"}"#)),
            "invalid_field"
        );
        assert_eq!(
            reason(
                Some("order.status"),
                Some(r#"{"order_id":"o1","status":""}"#)
            ),
            "invalid_field"
        );
        assert_eq!(
            reason(
                Some("order.status"),
                Some(r#"{"order_id":"o1","status":"x","timestamp":"noon"}"#)
            ),
            "invalid_field"
        );
        assert_eq!(reason(Some("order.status"), Some("[1,2]")), "invalid_field");
        let no_target = r#"{"order_id":"o1","pickup":{"lat":1,"lng":2},"drop":{},"fare":1}"#;
        assert_eq!(
            reason(Some("delivery.request"), Some(no_target)),
            "missing_field"
        );
        let bad_pickup =
            r#"{"order_id":"o1","pickup":{"lat":91,"lng":2},"drop":{},"fare":1,"driver_id":"d"}"#;
        assert_eq!(
            reason(Some("delivery.request"), Some(bad_pickup)),
            "invalid_field"
        );
    }

    #[test]
    fn fields_that_are_not_utf8_are_refused_as_such() {
        let reason = |kind: &[u8], data: &[u8]| {
            decode_entry(Some(kind), Some(data))
                .expect_err("must fail")
                .reason
        };
        let status = br#"{"order_id":"o1","status":"ready"}"#;
        assert_eq!(
            reason(b"order.status", b"{\"order_id\":\"o1\xff\"}"),
            DecodeReason::InvalidUtf8
        );
        assert_eq!(
            reason(b"order.st\xc3\x28tus", status),
            DecodeReason::InvalidUtf8
        );
        assert!(decode_entry(Some(b"order.status"), Some(status)).is_ok());
        assert_eq!(
            decode_entry(None, Some(status)).unwrap_err().reason,
            DecodeReason::MissingType
        );
        // No sequencing key from data that is not text (the read script agrees).
        assert_eq!(
            sequence_key(Some(b"{\"order_id\":\"o1\",\"x\":\"\xfe\"}")),
            None
        );
    }

    #[test]
    fn sequence_key_is_the_order_id_string() {
        assert_eq!(
            sequence_key(Some(br#"{"order_id":"o1","x":1}"#)).as_deref(),
            Some("o1")
        );
        assert_eq!(sequence_key(Some(br#"{"order_id":5}"#)), None);
        assert_eq!(sequence_key(Some(br#"{"level":"x"}"#)), None);
        assert_eq!(sequence_key(Some(b"nope")), None);
        assert_eq!(sequence_key(None), None);
    }

    /// From the `stream_entry` fuzz target: with a repeated `order_id` the
    /// entry was decoded as one order's event but not sequenced at all,
    /// while the read script queued it under the last one.
    #[test]
    fn sequence_key_reads_a_repeated_order_id_as_decode_does() {
        let data = r#"{"order_id":"o1","driver_id":"d1","order_id":"o2"}"#;
        let event = decode(Some("order.assigned"), Some(data)).expect("assigned");
        assert_eq!(event.order_id(), Some("o2"));
        assert_eq!(sequence_key(Some(data.as_bytes())).as_deref(), Some("o2"));
        // Not an object: no order, as for `decode` and the read script.
        assert_eq!(sequence_key(Some(br#"["o1"]"#)), None);
        assert_eq!(sequence_key(Some(br#"{"order_id":null}"#)), None);
    }
}
