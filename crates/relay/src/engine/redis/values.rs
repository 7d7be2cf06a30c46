//! Reading raw Redis replies (stream entries, XINFO field lists) that the
//! redis crate's typed helpers do not cover, e.g. script results.

use std::collections::HashMap;

use redis::Value;

use crate::engine::traits::StreamEntry;

pub fn bulk_string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

pub fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
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

pub fn parse_entries(value: Value) -> Vec<StreamEntry> {
    let Value::Array(rows) = value else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(parse_entry)
        .map(|(id, mut fields)| StreamEntry {
            id,
            kind: fields.remove("type").and_then(bulk_string),
            data: fields.remove("data").and_then(bulk_string),
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
        assert_eq!(entries[0].kind.as_deref(), Some("order.status"));
        assert_eq!(entries[1].id, "2-0");
        assert_eq!(entries[1].data, None);
    }
}
