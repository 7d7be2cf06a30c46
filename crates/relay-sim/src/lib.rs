//! Tools that drive relay nodes from outside, through the public interface
//! only: `simulate` plays a small city for demos and soak runs, `loadgen`
//! runs the benchmark scenarios. They live apart from the server so that
//! their dependencies (an HTTP client, a Socket.IO client) and their code
//! never ship in the production binary.

pub mod cli;
pub mod loadgen;
pub mod simulate;
