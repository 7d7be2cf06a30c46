//! The backend's event stream, from the consumer group to the sockets:
//! `consumer` reads and acknowledges entries in per-order sequence,
//! `dispatch` turns each event into order state and emits, and `offers`
//! holds the offers that wait for a recipient's ack.

pub mod consumer;
pub mod dispatch;
mod error;
pub mod offers;

pub use consumer::{Consumer, ConsumerSettings};
pub use dispatch::{Dispatcher, Effect, Refusal};
pub use error::DispatchError;
