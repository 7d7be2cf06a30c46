//! Why an event could not be handled now (it stays pending and is retried).

use crate::{engine::StoreError, gateway::BroadcastFailed};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastFailed),
}
