//! The integration suite: one test binary, one module per capability.
//! Every test runs real processes: redis-server, relay nodes, Socket.IO
//! clients over real sockets.

// Shared harness: not every helper is used by every capability yet.
#[allow(dead_code)]
mod support;

mod api;
mod chat;
mod cli;
mod cluster;
mod demo;
mod engine;
mod events;
mod faults;
mod handshake;
mod idempotency;
mod interest;
mod interop;
mod layers;
mod lifecycle;
mod limits;
mod location;
mod network;
mod observability;
mod offers;
mod presence;
mod recovery;
mod redis_cluster;
mod redis_cluster_pipelines;
mod redis_tls;
mod refresh;
mod resubscribe;
mod rooms;
mod security;
mod storm;
mod stream;
mod supervision;
mod takeover;
mod transport;
