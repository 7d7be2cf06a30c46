//! The memory engine: embedded single-node mode, for trying the relay out
//! and for development. Nothing leaves the process.

use socketioxide::adapter::LocalAdapter;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError, Health};

#[derive(Debug, Default)]
pub struct MemoryEngine;

impl Engine for MemoryEngine {
    type Adapter = LocalAdapter;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn adapter_state(&self) {}

    async fn finish_init((): ()) -> Result<(), EngineError> {
        Ok(())
    }

    async fn watch_health(&self, health: Health, shutdown: CancellationToken) {
        health.set_store_up(true);
        shutdown.cancelled().await;
    }
}
