use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{WAIT, free_port};

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.spawn().await;
        server
    }

    /// On a port chosen beforehand (a node may already be waiting for it).
    pub async fn start_on(port: u16) -> Self {
        let mut server = Self { port, child: None };
        server.spawn().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection without the redis crate's 500 ms response timeout, so
    /// that tests can wait with XREAD BLOCK.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to test redis")
    }

    /// Kills the server (SIGKILL, as a crash) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGSTOP: the server stalls with every connection open (nothing is
    /// answered, nothing is refused), as a Redis stuck on a slow disk or a
    /// long command.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the stalled server answers again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server); `make test` installs it");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
