//! What nodes send each other on the per-room channels: only the nodes with
//! a socket in a room subscribe to its channel, so a node hears only what
//! its own sockets need (docs/design.md, "Interest routing").

use serde::{Deserialize, Serialize};

use super::Recorded;

/// One message on a room's channel; the room is the channel's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Routed {
    /// A driver's location for the room, except the driver's own sockets
    /// (`except`, a room). `node` delivered it to its own sockets already.
    Location {
        node: String,
        except: String,
        data: serde_json::Value,
    },
    /// A recorded event. It goes to the channel of every room it targets, so
    /// a node in several of them gets copies: it delivers the first.
    Recorded(Recorded),
    /// Every socket of the channel's room on every node joins `room`: the
    /// cluster-wide join, routed to the nodes that have such sockets (they
    /// subscribe to `room` before joining).
    Join { room: String },
    /// Every socket of the channel's room on every node leaves `room`.
    Leave { room: String },
}

/// See [`Routed::locations_of`].
const LOCATIONS: &str = "~loc:";

#[derive(Debug, thiserror::Error)]
#[error("malformed room message: {0}")]
pub struct MalformedRouted(#[from] serde_json::Error);

impl Routed {
    pub fn encode(&self) -> Vec<u8> {
        // Strings, numbers and JSON values only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedRouted> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The pseudo-room whose channel carries the locations of `room`: its
    /// own channel, so that a node whose only sockets in the room are the
    /// driver's (who gets no copy of its own updates, and whose node
    /// delivered them already) does not hear them. No room name starts
    /// with `~`.
    pub fn locations_of(room: &str) -> String {
        format!("{LOCATIONS}{room}")
    }

    /// The room of a [`Self::locations_of`] pseudo-room; None for a room.
    pub fn located(room: &str) -> Option<&str> {
        room.strip_prefix(LOCATIONS)
    }

    /// A recorded event's message around its offset, for a script that
    /// learns the offset as it records the event: `head`, the offset and
    /// `tail` together are the bytes of [`Routed::encode`] with that
    /// offset (the tag comes first, then the fields in declared order, the
    /// offset first of them). `recorded.offset` is ignored.
    pub fn recorded_around_offset(recorded: &Recorded) -> Option<(Vec<u8>, Vec<u8>)> {
        const HEAD: &[u8] = br#"{"k":"recorded","offset":""#;
        let blank = Routed::Recorded(Recorded {
            offset: String::new(),
            ..recorded.clone()
        })
        .encode();
        let tail = blank.strip_prefix(HEAD)?;
        tail.starts_with(b"\"")
            .then(|| (HEAD.to_vec(), tail.to_vec()))
    }

    /// How every encoded location of `node` begins (the tag, then the node:
    /// serde keeps the declared order), so that a node can skip its own
    /// without decoding them.
    pub fn location_prefix(node: &str) -> Vec<u8> {
        let mut prefix = br#"{"k":"location","node":"#.to_vec();
        prefix.extend(serde_json::to_vec(node).unwrap_or_default());
        prefix.push(b',');
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let all = [
            Routed::Location {
                node: "n1".into(),
                except: "driver_d1".into(),
                data: serde_json::json!({"order_id": "o1", "lat": 1.5}),
            },
            Routed::Recorded(Recorded {
                offset: "1-0".into(),
                event: "admin:alert".into(),
                data: "{}".into(),
                rooms: vec!["admin_updates".into()],
                then_leave: None,
            }),
            Routed::Join {
                room: "order_o1".into(),
            },
            Routed::Leave {
                room: "order_o1".into(),
            },
        ];
        for message in all {
            assert_eq!(Routed::decode(&message.encode()).unwrap(), message);
        }
        let recorded = Recorded {
            offset: "1764700000000-7".into(),
            event: "order:status_update".into(),
            data: r#"{"offset":"x","seq":2}"#.into(),
            rooms: vec!["order_o1".into(), "customer_c1".into()],
            then_leave: Some("order_o1".into()),
        };
        let (head, tail) = Routed::recorded_around_offset(&recorded).unwrap();
        let spliced = [head, recorded.offset.clone().into_bytes(), tail].concat();
        assert_eq!(spliced, Routed::Recorded(recorded).encode());
        let own = Routed::Location {
            node: "n\"1".into(),
            except: "driver_d1".into(),
            data: serde_json::json!({}),
        };
        assert!(own.encode().starts_with(&Routed::location_prefix("n\"1")));
        assert!(!own.encode().starts_with(&Routed::location_prefix("n")));
        assert!(Routed::decode(b"{\"k\":\"nope\"}").is_err());
        let located = Routed::locations_of("order_o1");
        assert_eq!(Routed::located(&located), Some("order_o1"));
        assert_eq!(Routed::located("order_o1"), None);
    }
}
