//! relay: a real-time event relay for a food-delivery platform.
//!
//! The modules follow the pipeline, and each imports only the ones listed
//! before it (docs/design.md draws the picture; `tests/it/layers.rs` fails
//! on an import that goes back up):
//!
//! - leaves: `config`, `telemetry`, `events` (the wire schema), `auth`,
//!   `rooms`, `active_order`, `outcome`, `metrics`, `tasks` (the tracker
//!   every long-lived task is spawned on);
//! - `engine`: the seam to Redis or memory (stream, history, orders,
//!   locations, sessions, the Socket.IO adapter);
//! - `location` (driver updates: cache and fan-out), `delivery`
//!   (recorded events to local sockets, recovery) and `presence` (this
//!   node's sockets per store and driver, written to the engine);
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
pub mod location;
pub mod metrics;
pub mod outcome;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod stream;
pub mod tasks;
pub mod telemetry;
