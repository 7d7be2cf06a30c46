//! Presence (CONTRACT §7): drivers connect one after another, alternately
//! to each node, then leave one after another. Each driver's entries in
//! `{prefix}presence` are read back and their `ts` compared with the
//! moment its connection was accepted (online) and the moment it left plus
//! the nodes' grace (offline). Every driver must have exactly one online and
//! one offline entry.

use std::{collections::HashMap, time::Duration};

use super::{Latencies, LoadgenError, Target, machine};
use relay::{auth::Role, events::now_ms};

/// Bound on waiting for the last entries, beyond the grace.
const ENTRIES_LIMIT: Duration = Duration::from_secs(20);

/// One driver's moments, unix ms.
#[derive(Debug, Default, Clone)]
struct Driver {
    connected: u64,
    left: u64,
    online: Vec<u64>,
    offline: Vec<u64>,
}

pub async fn run(target: &Target, drivers: usize, grace: Duration) -> Result<String, LoadgenError> {
    let run = &target.run;
    let id = |i: usize| format!("{run}-pd{i}");
    let key = format!("{}presence", target.prefix);
    let mut conn = target.connection().await?;
    // Entries from now on: ids are `ms-seq`, so a time is a valid start.
    let start = format!("{}-0", now_ms());
    let mut book: Vec<Driver> = vec![Driver::default(); drivers];

    let mut clients = Vec::with_capacity(drivers);
    for (i, driver) in book.iter_mut().enumerate() {
        let client = target
            .connect_all(vec![(
                target.node(i).to_owned(),
                target.token(&id(i), Role::Driver),
            )])
            .await?
            .pop()
            .ok_or_else(|| LoadgenError::Setup("no client".into()))?;
        driver.connected = now_ms();
        clients.push(client);
    }
    let index: HashMap<String, usize> = (0..drivers).map(|i| (id(i), i)).collect();
    wait_for(&mut conn, &key, &start, &index, &mut book, true).await?;
    for (client, driver) in clients.into_iter().zip(book.iter_mut()) {
        driver.left = now_ms();
        client.disconnect().await;
    }
    tokio::time::sleep(grace).await;
    wait_for(&mut conn, &key, &start, &index, &mut book, false).await?;

    let (mut online, mut offline) = (Latencies::default(), Latencies::default());
    let mut odd = 0;
    for d in &book {
        if d.online.len() != 1 || d.offline.len() != 1 {
            odd += 1;
        }
        if let Some(ts) = d.online.first() {
            online.record(Duration::from_millis(ts.saturating_sub(d.connected)));
        }
        if let Some(ts) = d.offline.first() {
            let due = d.left + grace.as_millis() as u64;
            offline.record(Duration::from_millis(ts.saturating_sub(due)));
        }
    }
    let fmt = |l: &mut Latencies| match l.summary() {
        Some([p50, p90, p99, max]) => {
            format!("p50 {p50:.0} ms, p90 {p90:.0} ms, p99 {p99:.0} ms, max {max:.0} ms")
        }
        None => "none".to_owned(),
    };
    Ok(format!(
        "### Presence\n\n\
         {drivers} drivers connect one after another, alternately to each of {nodes} nodes, then \
         leave one after another; the nodes' grace is {grace_ms} ms. Entries of `{key}` against \
         the client's accepted connection and its leaving. Machine: {machine}.\n\n\
         | figure | value |\n| --- | --- |\n\
         | entries | {on} online, {off} offline; {odd} drivers without exactly one of each |\n\
         | online entry after the connection was accepted | {online} |\n\
         | offline entry after leaving + the grace | {offline} |\n",
        nodes = target.nodes.len(),
        grace_ms = grace.as_millis(),
        machine = machine(),
        on = book.iter().map(|d| d.online.len()).sum::<usize>(),
        off = book.iter().map(|d| d.offline.len()).sum::<usize>(),
        online = fmt(&mut online),
        offline = fmt(&mut offline),
    ))
}

/// Reads `key` from `start` until every driver has an entry of state
/// `online` (all entries are re-read: the stream is small), within a bound.
async fn wait_for(
    conn: &mut super::RedisConn,
    key: &str,
    start: &str,
    index: &HashMap<String, usize>,
    book: &mut [Driver],
    online: bool,
) -> Result<(), LoadgenError> {
    let deadline = tokio::time::Instant::now() + ENTRIES_LIMIT;
    loop {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg(start)
            .arg("+")
            .query_async(conn)
            .await?;
        for d in book.iter_mut() {
            d.online.clear();
            d.offline.clear();
        }
        for (_, fields) in entries {
            let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
            let Some(&i) = index.get(field("id")) else {
                continue;
            };
            if field("kind") != "driver" {
                continue;
            }
            let ts = field("ts").parse().unwrap_or(0);
            if field("online") == "true" {
                book[i].online.push(ts);
            } else {
                book[i].offline.push(ts);
            }
        }
        let done = book.iter().all(|d| {
            if online {
                !d.online.is_empty()
            } else {
                !d.offline.is_empty()
            }
        });
        if done {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LoadgenError::Setup(format!(
                "not every driver's {} entry appeared in {key} within {ENTRIES_LIMIT:?}",
                if online { "online" } else { "offline" }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
