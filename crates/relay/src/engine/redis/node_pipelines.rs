//! A plain (non-transaction) pipeline on a Redis Cluster, sent as one
//! pipeline per primary on the relay's own connection to that primary,
//! with per-command replies, and never sent twice.
//!
//! redis 1.8.1's `ClusterConnection` refuses a pipeline whose keys span
//! slots, and its `route_pipeline` re-sends a whole pipeline when one reply
//! is a redirect, so commands that already ran run again (link.rs). Here:
//!
//! - the commands are grouped by the primary that owns their key's slot in
//!   a `CLUSTER SLOTS` snapshot ([`SlotMap`]), and each group goes out as
//!   one pipeline on that primary's connection ([`Nodes`]); errors come
//!   back as values, one per command;
//! - a reply that says the command did not run there (MOVED, ASK,
//!   TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN, READONLY, NOSCRIPT) sends
//!   that command again, alone, once the first pass is over: to the node a
//!   MOVED names, to the node an ASK names with ASKING in front of it (one
//!   pipeline of two, see [`NodePipelines::resend_one`] for why not through
//!   the cluster connection), after a SCRIPT LOAD on every node for a
//!   NOSCRIPT, and through the cluster connection (which waits and tries
//!   again) for the rest;
//! - an I/O error or a timeout on a node's connection leaves its commands'
//!   outcome unknown: they are not sent again (that could run them twice),
//!   the pipeline fails as it would on one server, and the connection is
//!   dropped for a new one;
//! - a MOVED, or a node that cannot be dialed, reads the slot map again,
//!   once the batch is done; a node that failed, before the next batch
//!   (the failed batch's caller hears of it at once). Batches meanwhile use
//!   the old map, and a read waits one response timeout at most.
//!
//! **Order per key.** Commands of different keys were never ordered on a
//! cluster (they go to different nodes), but those of one key must run in
//! pipeline order, each exactly once. A node runs a pipeline's commands in
//! order, but it need not *refuse* them together: between two commands of
//! one key another client may load the script (NOSCRIPT, then the next
//! EVALSHA runs), the cluster may come back (CLUSTERDOWN, then a command
//! runs), a migration may be aborted (ASK, then the key is served here
//! again). Had both gone in one pipeline, the first would be re-sent after
//! the second ran. So a key has at most one command in flight: the pipeline
//! goes out in rounds, round *n* carrying the *n*-th command of every key
//! (still one pipeline per node per round), and a key whose command was
//! refused leaves the rounds: that command and all its later ones are sent
//! again, one after the other, once the rounds are over. A refused command did not run, every command before it of its key
//! ran (or the key would have left the rounds earlier), and none after it
//! was sent: the order holds, and each command runs once. Nearly every
//! pipeline of the relay names each key once (a driver's hash, a room's
//! publish), so it is one round; a key named n times costs n round trips,
//! as it did when every command of a key waited for the one before.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Script, ServerError, ServerErrorKind, Value,
    aio::ConnectionLike,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};

use super::nodes::{NodeClient, Nodes};
use super::slots::{NodeAddr, SlotMap, args, command_key, slot};
use crate::metrics::{self, ResendReason};

/// Slot maps are read at most this often, however many MOVED replies come.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Refusals of one command after which its last one is its reply.
const MAX_REDIRECTS: usize = 5;

pub struct NodePipelines {
    nodes: Nodes,
    map: RwLock<Option<Arc<SlotMap>>>,
    /// One `CLUSTER SLOTS` at a time; batches meanwhile use the old map.
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
    /// A node failed: the next batch reads the map first. Not the failed
    /// batch itself, whose caller should hear of the failure at once.
    stale: AtomicBool,
    /// Longest wait for `CLUSTER SLOTS`: the cluster connection's own
    /// retries would otherwise hold a batch for several response timeouts
    /// when the node it asks does not answer.
    refresh_timeout: Duration,
    /// Script bodies by SHA1, for a node that answers NOSCRIPT.
    scripts: RwLock<HashMap<String, Arc<str>>>,
}

/// What one node did with its part of a round.
enum NodeOutcome {
    /// A reply per command, in order.
    Replies(Vec<Value>),
    /// Nothing reached the node (it could not be dialed).
    Unreachable,
    /// The connection failed: what ran is unknown.
    Failed(RedisError),
}

impl NodePipelines {
    pub fn new(client: NodeClient, connect_timeout: Duration, response_timeout: Duration) -> Self {
        Self {
            nodes: Nodes::new(client, connect_timeout, response_timeout),
            map: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
            stale: AtomicBool::new(false),
            refresh_timeout: response_timeout,
            scripts: RwLock::default(),
        }
    }

    /// Makes a NOSCRIPT of `script` recoverable: its body is loaded on the
    /// nodes that lack it.
    pub fn know_script(&self, code: &str) -> Script {
        let script = Script::new(code);
        self.scripts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(script.get_hash().to_owned(), Arc::from(code));
        script
    }

    /// Drops every node connection and the slot map (the health watch's
    /// redial): the next batch reads the map and dials again.
    pub fn reset(&self) {
        self.nodes.reset();
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn current_map(&self) -> Option<Arc<SlotMap>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a plain pipeline: a reply per command, in pipeline order, server
    /// errors as [`Value::ServerError`] (as one server's connection gives
    /// them).
    pub async fn run(
        &self,
        conn: &ClusterConnection,
        pipeline: &Pipeline,
    ) -> RedisResult<Vec<Value>> {
        let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        if self.stale.swap(false, Ordering::AcqRel) {
            self.refresh(conn).await;
        }
        let map = match self.current_map() {
            Some(map) => map,
            None => {
                // The first batch reads the map; until it is there (or
                // while it cannot be read) the cluster connection routes.
                self.refresh(conn).await;
                match self.current_map() {
                    Some(map) => map,
                    None => {
                        let all: Vec<(usize, Route)> =
                            (0..cmds.len()).map(|i| (i, Route::Cluster)).collect();
                        self.resend(conn, &cmds, &all, &HashSet::new(), &mut replies)
                            .await?;
                        return Ok(replies
                            .into_iter()
                            .map(|r| r.unwrap_or(Value::Nil))
                            .collect());
                    }
                }
            }
        };

        // Each key's commands, in order, until they run or leave the rounds.
        let mut queues: HashMap<&[u8], VecDeque<usize>> = HashMap::new();
        let mut diverted: Vec<(usize, Route)> = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            match command_key(cmd) {
                Some(key) => queues.entry(key).or_default().push_back(i),
                None => diverted.push((i, Route::Cluster)),
            }
        }
        let mut noscript: HashSet<&[u8]> = HashSet::new();
        let mut refresh = false;
        let mut failure: Option<RedisError> = None;
        loop {
            let mut rounds: HashMap<usize, Vec<usize>> = HashMap::new();
            for (key, queue) in &mut queues {
                let Some(&first) = queue.front() else {
                    continue;
                };
                match map.owner(slot(key)) {
                    Some(node) => rounds.entry(node).or_default().push(first),
                    None => {
                        metrics::redis_cluster_resent(ResendReason::Unrouted, queue.len());
                        diverted.extend(queue.drain(..).map(|i| (i, Route::Cluster)));
                    }
                }
            }
            if rounds.is_empty() {
                break;
            }
            let sent = join_all(rounds.into_iter().map(|(node, batch)| {
                let addr = &map.nodes()[node];
                let cmds = &cmds;
                async move {
                    let outcome = self.send(addr, cmds, &batch).await;
                    (addr, batch, outcome)
                }
            }))
            .await;
            for (addr, batch, outcome) in sent {
                match outcome {
                    NodeOutcome::Replies(values) => {
                        for (i, value) in batch.into_iter().zip(values) {
                            let Some(queue) = command_key(cmds[i]).and_then(|k| queues.get_mut(k))
                            else {
                                continue;
                            };
                            match refused(&value) {
                                None => {
                                    replies[i] = Some(value);
                                    queue.pop_front();
                                }
                                Some(reason) => {
                                    refresh |= reason == ResendReason::Moved;
                                    if reason == ResendReason::NoScript
                                        && let Some(sha) = script_sha(cmds[i])
                                    {
                                        noscript.insert(sha);
                                    }
                                    metrics::redis_cluster_resent(reason, queue.len());
                                    let route = Route::after(&value, addr);
                                    diverted.extend(queue.drain(..).map(|i| (i, route.clone())));
                                }
                            }
                        }
                    }
                    NodeOutcome::Unreachable => {
                        refresh = true;
                        for i in batch {
                            if let Some(queue) =
                                command_key(cmds[i]).and_then(|k| queues.get_mut(k))
                            {
                                metrics::redis_cluster_resent(ResendReason::Unrouted, queue.len());
                                diverted.extend(queue.drain(..).map(|i| (i, Route::Cluster)));
                            }
                        }
                    }
                    NodeOutcome::Failed(e) => {
                        refresh = true;
                        failure.get_or_insert(e);
                    }
                }
            }
            if failure.is_some() {
                // What ran on the failed node is unknown: the pipeline fails,
                // and nothing more of it is sent.
                break;
            }
        }
        if let Some(e) = failure {
            self.stale.store(true, Ordering::Release);
            return Err(e);
        }
        if refresh {
            self.refresh(conn).await;
        }
        if !diverted.is_empty() {
            self.resend(conn, &cmds, &diverted, &noscript, &mut replies)
                .await?;
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or(Value::Nil))
            .collect())
    }

    /// One round's commands for one node, as one pipeline.
    async fn send(&self, addr: &NodeAddr, cmds: &[&Cmd], batch: &[usize]) -> NodeOutcome {
        let mut pipe = Pipeline::with_capacity(batch.len());
        for &i in batch {
            pipe.add_command(cmds[i].clone());
        }
        self.send_pipeline(addr, &pipe).await
    }

    /// `pipe` on the connection to `addr`: a reply per command.
    async fn send_pipeline(&self, addr: &NodeAddr, pipe: &Pipeline) -> NodeOutcome {
        let node = match self.nodes.get(addr).await {
            Ok(node) => node,
            Err(e) => {
                tracing::debug!(host = %addr.host, port = addr.port, error = %e, "cluster node not dialed; its commands go through the cluster connection");
                return NodeOutcome::Unreachable;
            }
        };
        let mut conn = node.conn.clone();
        match conn.req_packed_commands(pipe, 0, pipe.len()).await {
            Ok(values) if values.len() == pipe.len() => NodeOutcome::Replies(values),
            Ok(values) => {
                // Never seen; treated like a broken connection.
                self.nodes.forget(addr, &node);
                metrics::redis_cluster_node_failure();
                NodeOutcome::Failed(RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "cluster node answered a pipeline with the wrong number of replies",
                    format!("{} for {}", values.len(), pipe.len()),
                )))
            }
            Err(e) => {
                self.nodes.forget(addr, &node);
                metrics::redis_cluster_node_failure();
                tracing::warn!(host = %addr.host, port = addr.port, error = %e, commands = pipe.len(), "pipeline to a cluster node failed; its outcome is unknown, so it is not sent again");
                NodeOutcome::Failed(e)
            }
        }
    }

    /// Sends the refused commands again, each alone, following where the
    /// refusal pointed: the commands of one key one after the other in
    /// their order (the next starts where the one before ran), keys side by
    /// side. Scripts a node lacked are loaded first, once each.
    async fn resend(
        &self,
        conn: &ClusterConnection,
        cmds: &[&Cmd],
        diverted: &[(usize, Route)],
        noscript: &HashSet<&[u8]>,
        replies: &mut [Option<Value>],
    ) -> RedisResult<()> {
        for sha in noscript {
            self.load_script(conn, sha).await;
        }
        let mut groups: Vec<Vec<(usize, &Route)>> = Vec::new();
        let mut by_key: HashMap<Option<&[u8]>, usize> = HashMap::new();
        for (i, route) in diverted {
            let group = *by_key.entry(command_key(cmds[*i])).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push((*i, route));
        }
        let runs = groups.into_iter().map(|group| async move {
            let mut out = Vec::with_capacity(group.len());
            let mut next: Option<Route> = None;
            for (i, route) in group {
                let start = next.take().unwrap_or_else(|| route.clone());
                let (value, ran_at) = self.resend_one(conn, cmds[i], start).await?;
                next = Some(ran_at);
                out.push((i, value));
            }
            RedisResult::Ok(out)
        });
        for run in join_all(runs).await {
            for (i, value) in run? {
                replies[i] = Some(value);
            }
        }
        Ok(())
    }

    /// One refused command, until a node runs it (or refuses it for good,
    /// or [`MAX_REDIRECTS`] refusals later): its reply, and where it went.
    ///
    /// ASK and MOVED are followed here, on the link's own node connections,
    /// not by the cluster connection: redis 1.8.1 sends ASKING and the
    /// command as two requests on a connection other requests share, so
    /// two redirected commands side by side can go out as ASKING, ASKING,
    /// command, command, and the second meets the importing node without
    /// its ASKING: MOVED back, and after three tries the error (found by
    /// `redis_cluster_pipelines::cluster_pipeline_during_a_slot_migration_*`).
    /// ASKING and the command go out here as one pipeline, which nothing
    /// else interleaves with.
    async fn resend_one(
        &self,
        conn: &ClusterConnection,
        cmd: &Cmd,
        mut route: Route,
    ) -> RedisResult<(Value, Route)> {
        let mut reply = Value::Nil;
        for _ in 0..MAX_REDIRECTS {
            reply = match &route {
                Route::Cluster => as_value(conn.clone().req_packed_command(cmd).await)?,
                Route::Node(addr) | Route::Asking(addr) => {
                    let mut pipe = Pipeline::with_capacity(2);
                    if matches!(route, Route::Asking(_)) {
                        pipe.cmd("ASKING");
                    }
                    pipe.add_command(cmd.clone());
                    match self.send_pipeline(addr, &pipe).await {
                        NodeOutcome::Replies(mut values) => values.pop().unwrap_or(Value::Nil),
                        NodeOutcome::Unreachable => {
                            route = Route::Cluster;
                            continue;
                        }
                        NodeOutcome::Failed(e) => return Err(e),
                    }
                }
            };
            match refused(&reply) {
                None => return Ok((reply, route)),
                Some(ResendReason::NoScript) => {
                    // Lost since the load before the resend (a failover,
                    // another SCRIPT FLUSH): load it, then the same route.
                    let loaded = match script_sha(cmd) {
                        Some(sha) => self.load_script(conn, sha).await,
                        None => false,
                    };
                    if !loaded {
                        return Ok((reply, route));
                    }
                }
                Some(ResendReason::Moved) => {
                    self.refresh(conn).await;
                    route = Route::after(&reply, &NodeAddr::default());
                }
                Some(_) => route = Route::after(&reply, &NodeAddr::default()),
            }
        }
        Ok((reply, Route::Cluster))
    }

    /// SCRIPT LOAD of a known script on every node; false for an unknown one.
    async fn load_script(&self, conn: &ClusterConnection, sha: &[u8]) -> bool {
        let body = std::str::from_utf8(sha).ok().and_then(|sha| {
            self.scripts
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(sha)
                .cloned()
        });
        let Some(body) = body else {
            return false;
        };
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(&*body);
        if let Err(e) = conn.clone().req_packed_command(&load).await {
            tracing::debug!(error = %e, "SCRIPT LOAD on the cluster");
        }
        true
    }

    /// Reads `CLUSTER SLOTS` unless another batch does already, or did
    /// within [`MIN_REFRESH_INTERVAL`].
    async fn refresh(&self, conn: &ClusterConnection) {
        let recent = self
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL);
        if recent && self.current_map().is_some() {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.refreshing);
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let reply = tokio::time::timeout(
            self.refresh_timeout,
            conn.clone()
                .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        });
        match reply.map(|reply| SlotMap::from_cluster_slots(&reply)) {
            Ok(Some(map)) => {
                metrics::redis_cluster_slot_map();
                *self.map.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(map));
            }
            Ok(None) => tracing::warn!("CLUSTER SLOTS reply not understood"),
            Err(e) => tracing::debug!(error = %e, "CLUSTER SLOTS"),
        }
    }
}

/// Where a refused command goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// The cluster connection, which routes by its own map and waits and
    /// tries again on TRYAGAIN, CLUSTERDOWN, LOADING.
    Cluster,
    /// A node's own connection (the target of a MOVED, or the node that
    /// lacked a script).
    Node(NodeAddr),
    /// ASKING and the command, as one pipeline, to the target of an ASK.
    Asking(NodeAddr),
}

impl Route {
    /// Where to go after `reply` from the node at `addr`.
    fn after(reply: &Value, addr: &NodeAddr) -> Self {
        let Value::ServerError(e) = reply else {
            return Self::Cluster;
        };
        match e.kind() {
            Some(ServerErrorKind::Moved) => redirect_target(e).map_or(Self::Cluster, Self::Node),
            Some(ServerErrorKind::Ask) => redirect_target(e).map_or(Self::Cluster, Self::Asking),
            Some(ServerErrorKind::NoScript) if !addr.host.is_empty() => Self::Node(addr.clone()),
            _ => Self::Cluster,
        }
    }
}

/// The node of a MOVED or ASK: `<slot> <host>:<port>`.
fn redirect_target(e: &ServerError) -> Option<NodeAddr> {
    let target = e.details()?.split_whitespace().nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    Some(NodeAddr {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// Why a reply says its command did not run on that node, if it does.
fn refused(reply: &Value) -> Option<ResendReason> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    Some(match e.kind()? {
        ServerErrorKind::Moved => ResendReason::Moved,
        ServerErrorKind::Ask => ResendReason::Ask,
        ServerErrorKind::NoScript => ResendReason::NoScript,
        ServerErrorKind::TryAgain
        | ServerErrorKind::ClusterDown
        | ServerErrorKind::BusyLoading
        | ServerErrorKind::MasterDown
        | ServerErrorKind::ReadOnly => ResendReason::Busy,
        _ => return None,
    })
}

/// The SHA1 of an `EVALSHA`.
fn script_sha(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = args(cmd);
    let name = args.next()?;
    (name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVALSHA_RO"))
        .then(|| args.next())
        .flatten()
}

/// A server error as a reply value, as in a pipeline on one server; any
/// other error (I/O, timeout) stays an error.
fn as_value(reply: RedisResult<Value>) -> RedisResult<Value> {
    match reply {
        Ok(value) => Ok(value),
        Err(e) => ServerError::try_from(e).map(Value::ServerError),
    }
}

#[cfg(test)]
mod tests {
    use redis::{ServerErrorKind, Value};

    use super::*;

    fn server_error(line: &[u8]) -> Value {
        redis::parse_redis_value(line).expect("parses")
    }

    #[test]
    fn only_replies_that_mean_not_run_are_sent_again() {
        let cases: [(&[u8], Option<ResendReason>); 9] = [
            (b"-MOVED 3999 127.0.0.1:6381\r\n", Some(ResendReason::Moved)),
            (b"-ASK 3999 127.0.0.1:6381\r\n", Some(ResendReason::Ask)),
            (
                b"-NOSCRIPT No matching script.\r\n",
                Some(ResendReason::NoScript),
            ),
            (
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                Some(ResendReason::Busy),
            ),
            (
                b"-CLUSTERDOWN The cluster is down\r\n",
                Some(ResendReason::Busy),
            ),
            (
                b"-LOADING Redis is loading the dataset in memory\r\n",
                Some(ResendReason::Busy),
            ),
            (
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                None,
            ),
            (b"-ERR unknown command\r\n", None),
            (b":1\r\n", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                refused(&server_error(line)),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let Value::ServerError(e) = server_error(b"-MOVED 1 h:1\r\n") else {
            panic!("a server error");
        };
        assert_eq!(e.kind(), Some(ServerErrorKind::Moved));
    }

    #[test]
    fn a_redirect_names_where_the_command_goes_next() {
        let here = NodeAddr {
            host: "10.0.0.1".to_owned(),
            port: 7000,
        };
        let there = NodeAddr {
            host: "10.0.0.2".to_owned(),
            port: 7001,
        };
        let after = |line: &[u8]| Route::after(&server_error(line), &here);
        assert_eq!(
            after(b"-MOVED 3999 10.0.0.2:7001\r\n"),
            Route::Node(there.clone())
        );
        assert_eq!(after(b"-ASK 3999 10.0.0.2:7001\r\n"), Route::Asking(there));
        assert_eq!(
            after(b"-NOSCRIPT No matching script.\r\n"),
            Route::Node(here.clone())
        );
        assert_eq!(after(b"-CLUSTERDOWN down\r\n"), Route::Cluster);
        assert_eq!(after(b"-MOVED 3999\r\n"), Route::Cluster);
    }

    #[test]
    fn an_evalsha_names_its_script() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("abc").arg(1).arg("k");
        assert_eq!(script_sha(&evalsha), Some(&b"abc"[..]));
        let mut hset = redis::cmd("HSET");
        hset.arg("k").arg("f").arg(1);
        assert_eq!(script_sha(&hset), None);
    }

    #[test]
    fn server_errors_become_values_and_io_errors_stay_errors() {
        let moved = server_error(b"-MOVED 1 h:1\r\n");
        let Value::ServerError(e) = moved.clone() else {
            panic!("a server error");
        };
        assert_eq!(as_value(Err(RedisError::from(e))), Ok(moved));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(as_value(Err(io)).is_err());
    }
}
