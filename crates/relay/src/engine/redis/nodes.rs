//! One plain connection per primary of a Redis Cluster, for the per-node
//! pipelines: dialed on first use with the cluster client's TLS files and
//! ACL user (the engine builds each node's client), dropped after an I/O
//! error or a timeout so that the next batch dials again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{AsyncConnectionConfig, RedisResult, aio::MultiplexedConnection};
use tokio::sync::OnceCell;

use super::slots::NodeAddr;

/// Makes the client of one node: the seeds' scheme, TLS files, user and
/// password, on the node's host and port.
pub type NodeClient = Arc<dyn Fn(&NodeAddr) -> RedisResult<redis::Client> + Send + Sync>;

/// After a node could not be dialed, its commands go through the cluster
/// connection for this long without trying again: a node that drops SYNs
/// would otherwise hold every batch for the connect timeout.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);

type Cell = Arc<OnceCell<MultiplexedConnection>>;

pub struct Nodes {
    client: NodeClient,
    config: AsyncConnectionConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conns: HashMap<NodeAddr, Cell>,
    /// Nodes that could not be dialed, until when they are left alone.
    down: HashMap<NodeAddr, Instant>,
}

/// A node's connection, as handed out: [`Nodes::forget`] drops this one
/// and not a newer one dialed meanwhile.
pub struct NodeConn {
    pub conn: MultiplexedConnection,
    cell: Cell,
}

impl Nodes {
    pub fn new(client: NodeClient, connect_timeout: Duration, response_timeout: Duration) -> Self {
        Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            state: Mutex::default(),
        }
    }

    /// The connection to `addr`, dialed now if there is none. An error
    /// means nothing was sent to the node.
    pub async fn get(&self, addr: &NodeAddr) -> RedisResult<NodeConn> {
        let cell = {
            let mut state = self.lock();
            if let Some(until) = state.down.get(addr) {
                if Instant::now() < *until {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster node recently unreachable",
                    )));
                }
                state.down.remove(addr);
            }
            state.conns.entry(addr.clone()).or_default().clone()
        };
        let dialed = cell
            .get_or_try_init(|| async {
                let client = (self.client)(addr)?;
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await
            })
            .await;
        match dialed {
            Ok(conn) => Ok(NodeConn {
                conn: conn.clone(),
                cell,
            }),
            Err(e) => {
                let mut state = self.lock();
                remove_if_same(&mut state.conns, addr, &cell);
                state
                    .down
                    .insert(addr.clone(), Instant::now() + DIAL_BACKOFF);
                Err(e)
            }
        }
    }

    /// Drops `conn` (after an I/O error or a timeout on it): the next
    /// batch for `addr` dials again.
    pub fn forget(&self, addr: &NodeAddr, conn: &NodeConn) {
        remove_if_same(&mut self.lock().conns, addr, &conn.cell);
    }

    /// Drops every connection (the health watch's redial).
    pub fn reset(&self) {
        let mut state = self.lock();
        state.conns.clear();
        state.down.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn remove_if_same(conns: &mut HashMap<NodeAddr, Cell>, addr: &NodeAddr, cell: &Cell) {
    if conns.get(addr).is_some_and(|c| Arc::ptr_eq(c, cell)) {
        conns.remove(addr);
    }
}
