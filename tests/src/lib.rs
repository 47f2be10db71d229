//! The end-to-end harness: real PostgreSQL clusters, the real nisshi broker and the real service
//! binaries, each on its own free port under its own directory, so tests run in parallel and
//! leave nothing behind. The same code starts the local stack (`stack` binary) with the seed's
//! names and ports.

pub mod api_client;
pub mod broker;
pub mod otelite;
pub mod postgres;
pub mod process;
pub mod stack;
pub mod verify;
pub mod wait;
pub mod workload;

pub use api_client::ApiClient;
pub use stack::{Ports, Stack, StackOptions};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("the OS hands out a free port")
}
