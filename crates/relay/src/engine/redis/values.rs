//! Reading what the Lua scripts return (their replies have no typed form in
//! the redis crate), and turning the crate's typed stream entries into ours.

use std::collections::HashMap;

use redis::{Value, streams::StreamId};

use crate::engine::traits::StreamEntry;

pub fn bulk_string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// A value's bytes as they are, text or not.
pub fn bulk_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// `[k1, v1, k2, v2, ...]` (RESP2) or a map (RESP3) into a map.
pub fn field_map(value: Value) -> HashMap<String, Value> {
    let mut map = HashMap::new();
    match value {
        Value::Array(items) => {
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = bulk_string(k) {
                    map.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = bulk_string(k) {
                    map.insert(k, v);
                }
            }
        }
        _ => {}
    }
    map
}

/// One `[id, [field, value, ...]]`; the fields are nil for an entry that was
/// deleted while pending.
pub fn parse_entry(value: Value) -> Option<(String, HashMap<String, Value>)> {
    let Value::Array(mut pair) = value else {
        return None;
    };
    if pair.len() != 2 {
        return None;
    }
    let fields = field_map(pair.pop()?);
    let id = bulk_string(pair.pop()?)?;
    Some((id, fields))
}

/// A stream entry as XRANGE, XREAD or XCLAIM gave it, its fields' bytes
/// as they are.
pub fn stream_entry(mut entry: StreamId) -> StreamEntry {
    let mut take = |k: &str| entry.map.remove(k).and_then(bulk_bytes);
    StreamEntry {
        kind: take("type"),
        data: take("data"),
        id: entry.id,
        first_in_order: false,
    }
}

/// A script's list of stream entries (the read script's XREADGROUP).
pub fn parse_entries(value: Value) -> Vec<StreamEntry> {
    let Value::Array(rows) = value else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(parse_entry)
        .map(|(id, mut fields)| StreamEntry {
            id,
            kind: fields.remove("type").and_then(bulk_bytes),
            data: fields.remove("data").and_then(bulk_bytes),
            first_in_order: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// XCLAIM and XRANGE replies through the crate's typed form, an entry
    /// deleted while pending (nil fields) included.
    #[test]
    fn typed_stream_replies_become_entries() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("type"),
                    bulk("order.status"),
                    bulk("data"),
                    bulk("{}"),
                ]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let claimed: redis::streams::StreamClaimReply = redis::from_redis_value(reply).unwrap();
        let entries: Vec<_> = claimed.ids.into_iter().map(stream_entry).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].kind_str(), Some("order.status"));
        assert_eq!(entries[0].data_str(), Some("{}"));
        assert_eq!(
            (entries[1].id.as_str(), entries[1].kind_str()),
            ("2-0", None)
        );
    }

    #[test]
    fn fields_that_are_not_text_keep_their_bytes() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![
                bulk("type"),
                Value::BulkString(b"order.\xffstatus".to_vec()),
                bulk("data"),
                Value::BulkString(b"{\"a\":\"\xc3\x28\"}".to_vec()),
            ]),
        ])]);
        let entries = parse_entries(reply);
        assert_eq!(entries[0].kind.as_deref(), Some(&b"order.\xffstatus"[..]));
        assert_eq!(
            entries[0].data.as_deref(),
            Some(&b"{\"a\":\"\xc3\x28\"}"[..])
        );
        assert_eq!(entries[0].kind_str(), None);
    }

    #[test]
    fn parses_stream_entries_including_deleted_ones() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("type"),
                    bulk("order.status"),
                    bulk("data"),
                    bulk("{}"),
                ]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let entries = parse_entries(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].kind_str(), Some("order.status"));
        assert_eq!(entries[1].id, "2-0");
        assert_eq!(entries[1].data, None);
    }
}
