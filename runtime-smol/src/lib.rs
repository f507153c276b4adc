//! smol adapter for ternmq: the MQTT broker [`Server`] on smol (async-io, async-channel,
//! futures-lite).
//!
//! It binds the sans-IO broker of [`ternmq_core`] to smol's reactor and timers through the
//! core's [`Driver`](ternmq_core::broker::driver::Driver); protocol logic lives in the core.
//! The async client on smol is not in this version yet (use `ternmq-tokio` or the blocking
//! `ternmq-std` client meanwhile).
//!
//! ```no_run
//! use ternmq_smol::{Server, ServerConfig};
//!
//! smol::block_on(async {
//!     let server = Server::bind(ServerConfig::new("127.0.0.1:1883".parse().unwrap())).await?;
//!     server.run().await
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod server;

pub use server::{AsyncAuthenticator, Server, ServerConfig, ShutdownHandle};
pub use ternmq_core as core;
pub use ternmq_store::{Durability, StoreConfig};
