//! The Redis a test's relay nodes share: one server or a Redis Cluster,
//! so that one test body runs against both.

use redis::{Cmd, Pipeline, RedisFuture, Value, aio::ConnectionLike};
use relay::config::{RedisTarget, Secret};

use super::{RedisCluster, RedisServer};

/// Which kind of Redis a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Cluster,
}

pub enum Backend {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub async fn start(kind: Kind) -> Self {
        match kind {
            Kind::Server => Self::Server(RedisServer::start().await),
            Kind::Cluster => Self::Cluster(RedisCluster::start().await),
        }
    }

    /// The variable and value that point a node at it.
    pub fn env(&self) -> (String, String) {
        match self {
            Self::Server(s) => ("REDIS_URL".to_owned(), s.url()),
            Self::Cluster(c) => ("REDIS_CLUSTER_URLS".to_owned(), c.seeds()),
        }
    }

    /// For engines made in the test process.
    pub fn target(&self) -> RedisTarget {
        match self {
            Self::Server(s) => RedisTarget::Server(Secret::new(s.url())),
            Self::Cluster(c) => {
                RedisTarget::Cluster(c.seed_urls().into_iter().map(Secret::new).collect())
            }
        }
    }

    /// A connection without a response timeout (tests wait with XREAD BLOCK).
    pub async fn connection(&self) -> TestConnection {
        match self {
            Self::Server(s) => TestConnection::Server(s.connection().await),
            Self::Cluster(c) => TestConnection::Cluster(c.connection().await),
        }
    }

    /// The one server, for tests of faults a cluster has its own tests for.
    pub fn server(&self) -> &RedisServer {
        match self {
            Self::Server(s) => s,
            Self::Cluster(_) => panic!("this test needs a single redis-server"),
        }
    }

    pub fn server_mut(&mut self) -> &mut RedisServer {
        match self {
            Self::Server(s) => s,
            Self::Cluster(_) => panic!("this test needs a single redis-server"),
        }
    }

    pub fn cluster(&self) -> &RedisCluster {
        match self {
            Self::Cluster(c) => c,
            Self::Server(_) => panic!("this test needs a redis cluster"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        match self {
            Self::Cluster(c) => c,
            Self::Server(_) => panic!("this test needs a redis cluster"),
        }
    }

    pub fn url(&self) -> String {
        self.server().url()
    }

    pub fn port(&self) -> u16 {
        self.server().port()
    }

    pub async fn kill(&mut self) {
        self.server_mut().kill().await;
    }

    pub async fn restart(&mut self) {
        self.server_mut().restart().await;
    }

    pub fn pause(&self) {
        self.server().pause();
    }

    pub fn resume(&self) {
        self.server().resume();
    }
}

/// A connection to either kind.
#[derive(Clone)]
pub enum TestConnection {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for TestConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
