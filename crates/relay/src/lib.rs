//! relay: a real-time event relay for a food-delivery platform.
//!
//! The modules follow the pipeline, and each imports only the ones listed
//! before it (docs/design.md draws the picture; `tests/it/layers.rs` fails
//! on an import that goes back up):
//!
//! - leaves: `config`, `sparse` (maps that give memory back),
//!   `telemetry`, `events` (the wire schema), `auth`,
//!   `rooms`, `active_order`, `outcome`, `metrics`, `tasks` (the tracker
//!   every long-lived task is spawned on, which restarts a task after a
//!   panic or fails the node);
//! - `engine`: the seam to Redis or memory (stream, history, orders,
//!   locations, sessions, per-room channels, the Socket.IO adapter);
//! - `interest`: which room channels this node subscribes to (the rooms of
//!   its own sockets);
//! - `location` (driver updates: cache and fan-out), `delivery` (what the
//!   room channels bring, to local sockets; recovery; gap fill) and
//!   `presence` (this node's sockets per store and driver, written to the
//!   engine);
//! - `gateway`: the Socket.IO namespace, handshake and client events;
//! - `stream`: the consumer group, per-order sequencing, dispatch, offers;
//! - `http`: the publish API, queries, probes, metrics, /demo;
//! - `server`: builds a node, runs its tasks, drains it; `cli` on top.

pub mod active_order;
pub mod auth;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod events;
pub mod gateway;
pub mod http;
pub mod interest;
pub mod location;
pub mod metrics;
pub mod outcome;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod sparse;
pub mod stream;
pub mod tasks;
pub mod telemetry;
