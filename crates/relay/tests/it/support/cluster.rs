//! A Redis and relay nodes sharing it, seen from the backend's side: XADD
//! events, read outcomes and dead letters, connect clients.

use std::{collections::HashMap, time::Duration};

use redis::Value;
use relay_client::{Client, ConnectOptions, Transport};
use serde_json::json;

use super::{Backend, Kind, NodeProcess, TestConnection, WAIT, unique_prefix};

pub const API_KEY: &str = "test-api-key";

pub struct Cluster {
    pub redis: Backend,
    pub prefix: String,
    pub nodes: Vec<NodeProcess>,
    extra: Vec<(String, String)>,
}

impl Cluster {
    /// Redis plus `n` ready nodes, with a key prefix of the test's own.
    pub async fn start(test: &str, n: usize, extra: &[(&str, &str)]) -> Self {
        Self::start_on(Kind::Server, test, n, extra).await
    }

    /// As [`Self::start`], on one server or on a Redis Cluster.
    pub async fn start_on(kind: Kind, test: &str, n: usize, extra: &[(&str, &str)]) -> Self {
        Self::start_with(Backend::start(kind).await, test, n, extra).await
    }

    /// As [`Self::start`], on a Redis made beforehand.
    pub async fn start_with(redis: Backend, test: &str, n: usize, extra: &[(&str, &str)]) -> Self {
        let mut cluster = Self {
            redis,
            prefix: unique_prefix(test),
            nodes: Vec::new(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for _ in 0..n {
            cluster.add_node(None).await;
        }
        cluster
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            self.redis.env(),
            ("RELAY_KEY_PREFIX".to_owned(), self.prefix.clone()),
            ("RELAY_API_KEY".to_owned(), API_KEY.to_owned()),
        ];
        env.extend(self.extra.iter().cloned());
        env
    }

    /// Starts one more node (with a fixed node id when given) and waits until ready.
    pub async fn add_node(&mut self, node_id: Option<&str>) -> usize {
        match node_id {
            Some(id) => self.add_node_with(&[("RELAY_NODE_ID", id)]).await,
            None => self.add_node_with(&[]).await,
        }
    }

    /// Starts one more node with settings of its own on top of the
    /// cluster's (a later value wins), and waits until ready.
    pub async fn add_node_with(&mut self, own: &[(&str, &str)]) -> usize {
        let mut env = self.env();
        env.extend(own.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.nodes.push(NodeProcess::spawn_ready(&env).await);
        self.nodes.len() - 1
    }

    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A key of the relay's own group `anchor` (docs/design.md, "Keys"):
    /// on a cluster it carries the group's hash tag.
    pub fn relay_key(&self, anchor: &str, name: &str) -> String {
        match self.redis {
            Backend::Server(_) => self.key(name),
            Backend::Cluster(_) => format!("{0}{{{0}{anchor}}}:{name}", self.prefix),
        }
    }

    /// A recovery history stream (`history:all`, `history:<room>`).
    pub fn history_key(&self, name: &str) -> String {
        self.relay_key("history", name)
    }

    /// `XADD {prefix}events * type <kind> data <json>`, as the backend does.
    pub async fn xadd(&self, kind: &str, data: serde_json::Value) -> String {
        let mut conn = self.redis.connection().await;
        self.xadd_cmd(kind, &data)
            .query_async(&mut conn)
            .await
            .expect("XADD")
    }

    /// Many entries in one pipeline, in order: `(type, data)` each.
    pub async fn xadd_many(&self, entries: impl IntoIterator<Item = (&str, serde_json::Value)>) {
        let mut conn = self.redis.connection().await;
        let mut pipe = redis::pipe();
        for (kind, data) in entries {
            pipe.add_command(self.xadd_cmd(kind, &data)).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("XADD batch");
    }

    fn xadd_cmd(&self, kind: &str, data: &serde_json::Value) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key("events"))
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("data")
            .arg(data.to_string());
        cmd
    }

    /// `order.created` of `order` for `customer` at `store`, no items.
    pub async fn create_order(&self, order: &str, customer: &str, store: &str) -> String {
        self.xadd(
            "order.created",
            json!({"order_id": order, "customer_id": customer, "store_id": store, "items": []}),
        )
        .await
    }

    /// Raw fields, for entries that are not JSON on purpose.
    pub async fn xadd_raw(&self, fields: &[(&str, &str)]) -> String {
        let mut conn = self.redis.connection().await;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key("events")).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async(&mut conn).await.expect("XADD")
    }

    /// Waits until the group has delivered every entry up to `last` and
    /// acknowledged all of them: every entry handled to its end.
    pub async fn wait_all_handled(&self, last: &str) {
        let mut conn = self.redis.connection().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(self.key("events"))
                .query_async(&mut conn)
                .await
                .expect("XINFO GROUPS");
            let group = groups
                .groups
                .iter()
                .find(|g| g.name == self.key("relay"))
                .expect("the group");
            if group.last_delivered_id == last && group.pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "entries up to {last} not handled within {WAIT:?}: {group:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until the entry `id` has been handled to its end: delivered to
    /// the group and acknowledged (others may still be pending).
    pub async fn wait_handled(&self, id: &str) {
        let mut conn = self.redis.connection().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let delivered: Vec<Value> = redis::cmd("XRANGE")
                .arg(self.key("events"))
                .arg(id)
                .arg(id)
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(self.key("events"))
                .query_async(&mut conn)
                .await
                .expect("XINFO GROUPS");
            let read = groups.groups.iter().any(|g| {
                g.name == self.key("relay")
                    && relay::engine::cmp_offsets(&g.last_delivered_id, id).is_ge()
            });
            let pending: Vec<Value> = redis::cmd("XPENDING")
                .arg(self.key("events"))
                .arg(self.key("relay"))
                .arg(id)
                .arg(id)
                .arg(1)
                .query_async(&mut conn)
                .await
                .expect("XPENDING");
            if !delivered.is_empty() && read && pending.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "entry {id} not handled within {WAIT:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (XREAD BLOCK, bounded) until `stream` holds at least `n`
    /// entries, and returns them all as field maps with their ids.
    pub async fn wait_entries(
        &self,
        name: &str,
        n: usize,
    ) -> Vec<(String, HashMap<String, String>)> {
        self.wait_entries_until(name, WAIT, &format!("{n} entries"), |entries| {
            entries.len() >= n
        })
        .await
    }

    /// Waits (XREAD BLOCK, within `bound`) until the entries of `name`
    /// satisfy `done` (`what` says what is awaited when they never do), and
    /// returns them all.
    pub async fn wait_entries_until(
        &self,
        name: &str,
        bound: Duration,
        what: &str,
        done: impl Fn(&[(String, HashMap<String, String>)]) -> bool,
    ) -> Vec<(String, HashMap<String, String>)> {
        let key = self.key(name);
        let mut conn = self.redis.connection().await;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let entries = read_all(&mut conn, &key).await;
            if done(&entries) {
                return entries;
            }
            let last = entries
                .last()
                .map_or("0-0".to_owned(), |(id, _)| id.clone());
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{key}: no {what} within {bound:?}: {entries:?}"
            );
            let _: Value = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(left.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(last)
                .query_async(&mut conn)
                .await
                .expect("XREAD");
        }
    }

    pub async fn entries(&self, name: &str) -> Vec<(String, HashMap<String, String>)> {
        self.entries_of(&self.key(name)).await
    }

    /// As [`Self::entries`], of a whole key name.
    pub async fn entries_of(&self, key: &str) -> Vec<(String, HashMap<String, String>)> {
        read_all(&mut self.redis.connection().await, key).await
    }

    /// Caches a driver location the way the relay does (CONTRACT §4).
    pub async fn cache_location(&self, driver: &str, lat: f64, lng: f64) {
        let mut conn = self.redis.connection().await;
        let ts = relay::events::now_ms();
        // Two slots on a cluster: the geo set, and the driver's hash.
        let _: Value = redis::cmd("GEOADD")
            .arg(self.key("drivers:geo"))
            .arg(lng)
            .arg(lat)
            .arg(driver)
            .query_async(&mut conn)
            .await
            .expect("cache location");
        let _: Value = redis::pipe()
            .cmd("HSET")
            .arg(self.key(&format!("driver:{driver}")))
            .arg(&[
                ("lat", lat.to_string()),
                ("lng", lng.to_string()),
                ("ts", ts.to_string()),
            ])
            .cmd("EXPIRE")
            .arg(self.key(&format!("driver:{driver}")))
            .arg(120)
            .query_async(&mut conn)
            .await
            .expect("cache location");
    }
}

async fn read_all(conn: &mut TestConnection, key: &str) -> Vec<(String, HashMap<String, String>)> {
    let rows: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    rows
}

/// A WebSocket client with its token in `auth`.
pub async fn connect(url: &str, jwt: &str) -> Client {
    connect_with(url, jwt, Transport::WebSocket).await
}

pub async fn connect_with(url: &str, jwt: &str, transport: Transport) -> Client {
    Client::connect(
        ConnectOptions::new(url)
            .transport(transport)
            .auth(json!({ "token": jwt }))
            .timeout(WAIT),
    )
    .await
    .expect("connect")
}

/// Waits for `name`, failing on any other event first.
pub async fn expect_event(client: &mut Client, name: &str) -> relay_client::Event {
    let event = client
        .next_event(WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
    assert_eq!(event.name, name, "expected {name}, got {event:?}");
    event
}
