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

/// Test certificates made with `openssl` in a directory of their own: a CA,
/// a server certificate for 127.0.0.1 and a client certificate it signed,
/// and a second CA that signed neither.
pub struct TestCerts {
    dir: std::path::PathBuf,
}

impl TestCerts {
    pub fn generate(name: &str) -> Self {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate dir");
        let certs = Self { dir };
        certs.write(
            "server.ext",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        );
        certs.write(
            "client.ext",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        for ca in ["ca", "other-ca"] {
            certs.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=relay test {ca}"),
                "-keyout",
                &certs.path(&format!("{ca}.key")),
                "-out",
                &certs.path(&format!("{ca}.crt")),
            ]);
        }
        for (leaf, cn) in [("server", "127.0.0.1"), ("client", "relay")] {
            certs.openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &certs.path(&format!("{leaf}.key")),
                "-out",
                &certs.path(&format!("{leaf}.csr")),
            ]);
            certs.openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-CA",
                &certs.path("ca.crt"),
                "-CAkey",
                &certs.path("ca.key"),
                "-CAcreateserial",
                "-in",
                &certs.path(&format!("{leaf}.csr")),
                "-extfile",
                &certs.path(&format!("{leaf}.ext")),
                "-out",
                &certs.path(&format!("{leaf}.crt")),
            ]);
        }
        certs
    }

    /// A file of the set: `ca.crt`, `other-ca.crt`, `server.crt`,
    /// `server.key`, `client.crt`, `client.key`.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.dir.join(file), text).expect("write");
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A private `redis-server` that speaks TLS only, on a free loopback port,
/// killed on drop. `extra` are more `redis-server` arguments (ACL users).
pub struct TlsRedisServer {
    port: u16,
    _child: Child,
}

impl TlsRedisServer {
    /// `auth_clients`: whether the server requires a client certificate.
    pub async fn start(certs: &TestCerts, auth_clients: bool, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &certs.path("server.crt")])
            .args(["--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.crt")])
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        // Listening is enough: every client here speaks TLS through the node.
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self {
            port,
            _child: child,
        }
    }

    /// `rediss://[user:password@]127.0.0.1:port`.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("rediss://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("rediss://127.0.0.1:{}", self.port),
        }
    }
}
