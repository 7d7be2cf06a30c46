//! A Redis connection that can be dialed again on demand.
//!
//! [`ConnectionManager`] reconnects after I/O errors, but a link that goes
//! silent (a lost NAT entry, a peer gone without a FIN or RST, a
//! black-holed route) produces no error, only response timeouts, which it
//! treats as retryable on the same connection: every command would time
//! out until the kernel gives up on the socket, many minutes later. The
//! health watch notices the silence and calls [`Link::redial`]; every
//! command after that goes out on a fresh connection.

use std::sync::{Arc, RwLock};

use redis::{
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};

#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: RwLock<ConnectionManager>,
}

impl Link {
    /// Prepares the connection without dialing it.
    pub fn new(client: redis::Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let current = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                current: RwLock::new(current),
            }),
        })
    }

    /// The connection commands go out on now.
    pub fn manager(&self) -> ConnectionManager {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the connection with a new one, dialed on first use. Commands
    /// in flight on the old one end with their response timeout.
    pub fn redial(&self) -> RedisResult<()> {
        let fresh = ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.config.clone(),
        )?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.manager();
        Box::pin(async move { conn.send_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.manager();
        Box::pin(async move { conn.send_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}
