//! Following a Redis stream the relay writes for the backend
//! (`{prefix}presence`, `{prefix}chat`) as a production backend would:
//! from the newest entry at start, every later entry once, in order,
//! reconnecting when Redis goes away.

use std::{collections::HashMap, time::Duration};

use redis::{AsyncConnectionConfig, Value};

use super::{Ctx, clock::real_sleep, stats::bump};

const BLOCK_MS: u64 = 2000;
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// One stream entry: its id and fields.
pub type Entry = (String, HashMap<String, String>);

/// Calls `on_entry` for each entry appended to `key` from now on, until
/// the run stops.
pub async fn follow(ctx: &Ctx, url: &str, key: &str, mut on_entry: impl FnMut(Entry)) {
    // Changes from now on: what happened before the run is not this city's.
    // `$` until the newest entry's id is known.
    let mut last = "$".to_owned();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 3000)));
    let mut conn = None;
    loop {
        if ctx.stop.is_cancelled() {
            return;
        }
        if conn.is_none() {
            let dialed = match redis::Client::open(url) {
                Ok(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match dialed {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Redis for {key}");
                    bump(&ctx.stats.errors);
                    if real_sleep(RETRY_EVERY, &ctx.stop).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if last == "$" {
            // Pinned to the newest entry now: a `$` in each read would miss
            // what arrives between two reads.
            let newest: redis::RedisResult<Vec<Entry>> = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(c)
                .await;
            match newest {
                Ok(newest) => {
                    last = newest
                        .first()
                        .map_or("0-0".to_owned(), |(id, _)| id.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading {key} failed");
                    conn = None;
                    continue;
                }
            }
        }
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("COUNT")
            .arg(500)
            .arg("STREAMS")
            .arg(key)
            .arg(&last);
        let read = tokio::select! {
            () = ctx.stop.cancelled() => return,
            read = xread.query_async::<Value>(c) => read,
        };
        match read {
            Ok(reply) => {
                for entry in entries(reply) {
                    last = entry.0.clone();
                    on_entry(entry);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading {key} failed");
                bump(&ctx.stats.errors);
                conn = None;
            }
        }
    }
}

/// The entries of an XREAD reply on one stream.
pub fn entries(reply: Value) -> Vec<Entry> {
    let rows: Option<Vec<(String, Vec<Entry>)>> = redis::from_redis_value(reply).ok();
    rows.into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xread_reply_reads_as_entries() {
        let entry = |id: &str, online: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(
                    ["kind", "store", "id", "s1", "online", online, "ts", "1"]
                        .iter()
                        .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                        .collect(),
                ),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"relay:presence".to_vec()),
            Value::Array(vec![entry("1-0", "true"), entry("2-0", "false")]),
        ])]);
        let read = entries(reply);
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].0, "2-0");
        assert_eq!(read[1].1["online"], "false");
        assert!(entries(Value::Nil).is_empty());
    }
}
