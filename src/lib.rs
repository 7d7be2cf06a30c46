//! relay: a real-time event relay for a food-delivery platform.
//!
//! Layers, each importing only the ones listed before it:
//! `config` -> `auth`, `rooms`, `metrics` -> `engine` (Redis | memory) ->
//! `gateway` (Socket.IO) -> `http` -> `server` -> `cli`.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod dispatch;
pub mod engine;
pub mod events;
pub mod gateway;
pub mod http;
pub mod loadgen;
pub mod location;
pub mod metrics;
pub mod offers;
pub mod orders;
pub mod outcome;
pub mod procfs;
pub mod rooms;
pub mod server;
pub mod shutdown;
pub mod simulate;
pub mod telemetry;
