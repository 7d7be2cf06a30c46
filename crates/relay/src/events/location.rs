//! `driver:location_update` payloads: parsed and checked field by field.

use serde_json::Value;

/// Why a location update was dropped. `as_str` is the metric label;
/// `message` is what the driver's ack says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NotDriver,
    InvalidPayload,
    OutOfRange,
    TooFrequent,
    RateLimited,
    Backpressure,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Self::NotDriver,
        Self::InvalidPayload,
        Self::OutOfRange,
        Self::TooFrequent,
        Self::RateLimited,
        Self::Backpressure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotDriver => "not_driver",
            Self::InvalidPayload => "invalid_payload",
            Self::OutOfRange => "out_of_range",
            Self::TooFrequent => "too_frequent",
            Self::RateLimited => "rate_limited",
            Self::Backpressure => "backpressure",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::NotDriver => "only drivers send locations",
            Self::InvalidPayload => {
                "invalid payload: expected { lat, lng, heading?, speed? } as numbers"
            }
            Self::OutOfRange => {
                "out of range: lat in [-90, 90], lng in [-180, 180], heading in [0, 360), speed >= 0"
            }
            Self::TooFrequent => {
                "too frequent: updates closer together than the minimum interval are dropped"
            }
            Self::RateLimited => "rate limited: too many events on this connection",
            Self::Backpressure => "overloaded: update dropped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocationUpdate {
    pub lat: f64,
    pub lng: f64,
    pub heading: Option<f64>,
    pub speed: Option<f64>,
}

impl LocationUpdate {
    /// Every field a finite JSON number in range; heading and speed optional
    /// (absent or null). Numbers given as strings are refused.
    pub fn parse(value: &Value) -> Result<Self, Reject> {
        let object = value.as_object().ok_or(Reject::InvalidPayload)?;
        let number = |name: &str| -> Result<Option<f64>, Reject> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|v| v.is_finite())
                    .map(Some)
                    .ok_or(Reject::InvalidPayload),
                Some(_) => Err(Reject::InvalidPayload),
            }
        };
        let lat = number("lat")?.ok_or(Reject::InvalidPayload)?;
        let lng = number("lng")?.ok_or(Reject::InvalidPayload)?;
        let heading = number("heading")?;
        let speed = number("speed")?;
        let in_range = (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lng)
            && heading.is_none_or(|h| (0.0..360.0).contains(&h))
            && speed.is_none_or(|s| s >= 0.0);
        if !in_range {
            return Err(Reject::OutOfRange);
        }
        Ok(Self {
            lat,
            lng,
            heading,
            speed,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// From the `client_payload` fuzz target: without serde_json's
    /// `float_roundtrip`, shortest-form coordinates (as a browser's
    /// JSON.stringify writes them) were held one ulp off, about 6% of them.
    #[test]
    fn coordinates_are_held_exactly_as_sent() {
        let payload: Value =
            serde_json::from_str(r#"{"lat":10.938711676632721,"lng":-57.179661383605676}"#)
                .expect("json");
        let update = LocationUpdate::parse(&payload).expect("valid");
        assert_eq!(update.lat.to_string(), "10.938711676632721");
        assert_eq!(update.lng.to_string(), "-57.179661383605676");
    }

    #[test]
    fn accepts_the_contract_example_and_optional_fields() {
        let full = LocationUpdate::parse(
            &json!({"lat": 12.9716, "lng": 77.5946, "heading": 90, "speed": 40}),
        )
        .expect("valid");
        assert_eq!(
            (full.lat, full.lng, full.heading, full.speed),
            (12.9716, 77.5946, Some(90.0), Some(40.0))
        );
        let bare = LocationUpdate::parse(&json!({"lat": -90, "lng": 180, "heading": null}))
            .expect("valid");
        assert_eq!((bare.heading, bare.speed), (None, None));
    }

    #[test]
    fn refuses_bad_fields_with_a_reason() {
        let cases = [
            (json!("12,77"), Reject::InvalidPayload),
            (json!({"lat": 12.9}), Reject::InvalidPayload),
            (json!({"lat": "12.9", "lng": 77.5}), Reject::InvalidPayload),
            (
                json!({"lat": 12.9, "lng": 77.5, "speed": "fast"}),
                Reject::InvalidPayload,
            ),
            (json!({"lat": 90.5, "lng": 77.5}), Reject::OutOfRange),
            (json!({"lat": 12.9, "lng": -180.1}), Reject::OutOfRange),
            (
                json!({"lat": 12.9, "lng": 77.5, "heading": 360}),
                Reject::OutOfRange,
            ),
            (
                json!({"lat": 12.9, "lng": 77.5, "heading": -1}),
                Reject::OutOfRange,
            ),
            (
                json!({"lat": 12.9, "lng": 77.5, "speed": -0.5}),
                Reject::OutOfRange,
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(LocationUpdate::parse(&payload), Err(reason), "{payload}");
        }
    }
}
