//! A TCP proxy between a node and Redis that breaks the link on command, in
//! the ways real networks do: it stalls (bytes wait, then flow again), it
//! black-holes (bytes vanish and nothing ever answers, as after a lost NAT
//! entry or a dead peer), and it resets (every connection gets a RST).
//! tc netem and Toxiproxy are not available on these machines.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
    task::JoinHandle,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Bytes flow both ways.
    None,
    /// Bytes are held back (connections stay open) until the fault ends.
    Stall,
}

struct Shared {
    fault: watch::Sender<Fault>,
    /// Bumped by `blackhole_open_connections`: connections born in an older
    /// generation are dead.
    generation: watch::Sender<u64>,
    /// Bumped by `reset_all`: connections born before it are reset.
    resets: watch::Sender<u64>,
    open: AtomicUsize,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            fault: watch::channel(Fault::None).0,
            generation: watch::channel(0).0,
            resets: watch::channel(0).0,
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Self {
            addr,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds every byte back until [`Self::heal`].
    pub fn stall(&self) {
        self.shared.fault.send_replace(Fault::Stall);
    }

    /// Lets bytes flow again (what a stall held back is delivered).
    pub fn heal(&self) {
        self.shared.fault.send_replace(Fault::None);
    }

    /// Every connection open now goes silent for good: what is sent on it
    /// is swallowed and nothing comes back, without a FIN or RST. Only a
    /// peer that notices the silence and dials again gets through.
    pub fn blackhole_open_connections(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Sends a RST on every open connection, both sides.
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|g| *g += 1);
    }

    /// Connections through the proxy that are open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            // Every close by the proxy is then a RST, which is what a reset
            // is for; a zero linger never blocks the thread.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
            let born = (*shared.generation.borrow(), *shared.resets.borrow());
            shared.open.fetch_add(1, Ordering::Relaxed);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let a = tokio::spawn(pump(client_read, server_write, shared.clone(), born));
            let b = tokio::spawn(pump(server_read, client_write, shared.clone(), born));
            let _ = tokio::join!(a, b);
            shared.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Copies one direction until either side closes or the proxy resets it.
async fn pump(from: OwnedReadHalf, to: OwnedWriteHalf, shared: Arc<Shared>, born: (u64, u64)) {
    let mut resets = shared.resets.subscribe();
    tokio::select! {
        () = copy(from, to, &shared, born.0) => {}
        _ = resets.wait_for(|r| *r != born.1) => {}
    }
}

async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared, born: u64) {
    let mut fault = shared.fault.subscribe();
    let generation = shared.generation.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A stall holds this chunk (and, by not reading, everything after).
        if fault.wait_for(|f| *f != Fault::Stall).await.is_err() {
            return;
        }
        // Black-holed: swallow, never answer, never close.
        if *generation.borrow() != born {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
