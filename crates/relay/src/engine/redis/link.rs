//! A Redis connection that can be dialed again on demand, to one server or
//! to a Redis Cluster: every store talks through a [`Link`] and works on
//! either.
//!
//! [`ConnectionManager`] (one server) and [`ClusterConnection`] reconnect
//! after I/O errors, and the cluster connection follows MOVED/ASK, slot
//! moves and failovers by itself. But a link that goes silent (a lost NAT
//! entry, a peer gone without a FIN or RST, a black-holed route) produces
//! no error, only response timeouts, which both treat as retryable on the
//! same connection: every command would time out until the kernel gives up
//! on the socket, many minutes later. The health watch notices the silence
//! and calls [`Link::redial`]; every command after that goes out on a fresh
//! connection.
//!
//! On a cluster, a plain pipeline goes out as one pipeline per primary on
//! connections of the link's own ([`NodePipelines`]), not through the
//! cluster connection: see [`Link::req_packed_commands`].

use std::sync::{Arc, RwLock};

use futures_util::future::join_all;
use redis::{
    Cmd, Pipeline, RedisFuture, RedisResult, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo},
};

use super::node_pipelines::NodePipelines;

#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    current: RwLock<Conn>,
    /// On a cluster: plain pipelines, one per primary.
    pipelines: Option<NodePipelines>,
}

/// How a fresh connection is made.
enum Dialer {
    Server {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
    },
}

/// The connection commands go out on now.
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Dialer {
    /// Prepares a connection without dialing it: a node starts (unready)
    /// while Redis is unreachable, and the connection is made on first use.
    fn dial(&self) -> RedisResult<Conn> {
        Ok(match self {
            Self::Server { client, config } => Conn::Server(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            ),
            Self::Cluster { client, config } => {
                Conn::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
        })
    }
}

impl Link {
    /// A link to one server.
    pub fn server(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        Self::with(Dialer::Server { client, config }, None)
    }

    /// A link to a Redis Cluster, whose plain pipelines go out through
    /// `pipelines`. Must run inside the runtime: the cluster connection's
    /// own task starts here.
    pub fn cluster(
        client: ClusterClient,
        config: ClusterConfig,
        pipelines: NodePipelines,
    ) -> RedisResult<Self> {
        Self::with(Dialer::Cluster { client, config }, Some(pipelines))
    }

    fn with(dialer: Dialer, pipelines: Option<NodePipelines>) -> RedisResult<Self> {
        let current = dialer.dial()?;
        Ok(Self {
            inner: Arc::new(Inner {
                dialer,
                current: RwLock::new(current),
                pipelines,
            }),
        })
    }

    /// A Lua script to call with EVALSHA, also inside pipelines: on a
    /// cluster a node that lacks it (after a failover or a SCRIPT FLUSH)
    /// gets it loaded, and the call runs.
    pub fn script(&self, code: &str) -> Script {
        match &self.inner.pipelines {
            Some(pipelines) => pipelines.know_script(code),
            None => Script::new(code),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.dialer, Dialer::Cluster { .. })
    }

    /// The connection commands go out on now.
    pub fn conn(&self) -> Conn {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the connection with a new one, dialed on first use, and on
    /// a cluster drops every per-node connection and the slot map too.
    /// Commands in flight on the old ones end with their response timeout.
    pub fn redial(&self) -> RedisResult<()> {
        let fresh = self.inner.dialer.dial()?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        if let Some(pipelines) = &self.inner.pipelines {
            pipelines.reset();
        }
        Ok(())
    }

    /// SUBSCRIBE on one server; SSUBSCRIBE on a cluster, where a classic
    /// channel would reach every node of the cluster and a sharded one only
    /// the shard that owns its slot. Either connection subscribes again by
    /// itself after a reconnect, and the cluster's after a failover or a
    /// slot move too (its subscription tracker follows the slot map).
    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self.conn() {
            Conn::Server(mut c) => c.subscribe(channel).await,
            Conn::Cluster(mut c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        match self.conn() {
            Conn::Server(mut c) => c.unsubscribe(channel).await,
            Conn::Cluster(mut c) => c.sunsubscribe(channel).await,
        }
    }

    /// Many channels: one SUBSCRIBE on one server; on a cluster one
    /// SSUBSCRIBE per channel, side by side (a sharded subscription names
    /// channels of one slot only).
    pub async fn subscribe_many(&self, channels: &[String]) -> RedisResult<()> {
        match self.conn() {
            Conn::Server(mut c) => c.subscribe(channels).await,
            Conn::Cluster(c) => {
                let each = channels.iter().map(|chan| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(chan).await }
                });
                join_all(each).await.into_iter().collect()
            }
        }
    }

    pub async fn unsubscribe_many(&self, channels: &[String]) -> RedisResult<()> {
        match self.conn() {
            Conn::Server(mut c) => c.unsubscribe(channels).await,
            Conn::Cluster(c) => {
                let each = channels.iter().map(|chan| {
                    let mut c = c.clone();
                    async move { c.sunsubscribe(chan).await }
                });
                join_all(each).await.into_iter().collect()
            }
        }
    }

    /// Whether every primary of a cluster says `cluster_state:ok` (always
    /// true on one server). While a shard has lost its primary and no
    /// replica has taken over yet, the cluster says `fail`; a PING would not
    /// tell, because the connection drops a failed primary from its map.
    pub async fn cluster_ok(&self) -> RedisResult<bool> {
        let Conn::Cluster(mut c) = self.conn() else {
            return Ok(true);
        };
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("INFO");
        let reply = c.route_command(cmd, routing).await?;
        let infos: Vec<Value> = match reply {
            Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
            Value::Array(items) => items,
            other => vec![other],
        };
        Ok(!infos.is_empty()
            && infos.into_iter().all(|info| match info {
                Value::BulkString(text) => text
                    .windows(b"cluster_state:ok".len())
                    .any(|w| w == b"cluster_state:ok"),
                Value::VerbatimString { text, .. } => text.contains("cluster_state:ok"),
                _ => false,
            }))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self.conn() {
            Conn::Server(mut c) => Box::pin(async move { c.send_packed_command(cmd).await }),
            Conn::Cluster(mut c) => Box::pin(async move { c.req_packed_command(cmd).await }),
        }
    }

    /// On a cluster a transaction goes through the cluster connection
    /// (it must be one slot, which the connection checks); a plain
    /// pipeline goes out as one pipeline per primary ([`NodePipelines`]).
    ///
    /// Not through `ClusterConnection::req_packed_commands`: redis 1.8.1
    /// refuses a pipeline whose keys span slots, and the relay's pipelines
    /// span keys whose names the contract fixes (a driver's hash each). Not
    /// through `ClusterConnection::route_pipeline` either: it re-sends such a
    /// pipeline whole, to the redirect target, when any one of its replies
    /// is MOVED, ASK, TRYAGAIN, CLUSTERDOWN or READONLY (cluster_async
    /// request.rs `choose_response`), so the commands that already ran run
    /// again (a SPUBLISH delivered twice); keys of the old owner then bounce
    /// back, and once the retries are spent it returns only the first
    /// redirect error, not which commands ran. Measured against a 3-node
    /// cluster: INCR a, INCR b routed to a's node returned MOVED and left
    /// a=2, b=2. [`NodePipelines`] sends again only the commands a node
    /// refused (which did not run), one by one, each once.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self.conn() {
            Conn::Server(mut c) => {
                Box::pin(async move { c.send_packed_commands(pipeline, offset, count).await })
            }
            Conn::Cluster(mut c) if pipeline.is_transaction() => {
                Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
            }
            Conn::Cluster(mut c) => match &self.inner.pipelines {
                Some(pipelines) => Box::pin(async move { pipelines.run(&c, pipeline).await }),
                None => {
                    Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
                }
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self.conn() {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}
