//! Blocking std-thread adapter for ternmq.
//!
//! This crate will hold `SyncClient`, a blocking MQTT client for programs without an async
//! runtime, and a thread-based broker `Server`, both driving the sans-IO state machines of
//! [`ternmq_core`] from plain `std::net` sockets and threads.
//!
//! It is empty until the client and broker-server work lands: nothing here pretends to work yet.

pub use ternmq_core as core;
