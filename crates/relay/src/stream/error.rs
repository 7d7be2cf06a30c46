//! Why an event could not be handled now: retried in place when the cause
//! passes, else left pending for redelivery.

use crate::{engine::StoreError, gateway::BroadcastFailed};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastFailed),
}

impl DispatchError {
    /// A broadcast fails while the namespace or the adapter's link is not
    /// up, which passes; a store error, by its kind.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Broadcast(_) => true,
        }
    }
}
