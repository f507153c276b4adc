//! Tokio adapter for ternmq.
//!
//! This crate will bind the sans-IO state machines of [`ternmq_core`] to Tokio: an async MQTT
//! `Client` and a broker `Server` over TCP (TLS and WebSocket behind the same transport seam
//! later). The adapter only moves bytes and time between sockets and the core; every protocol
//! decision stays in the core.
//!
//! It is empty until the client and broker-server work lands: nothing here pretends to work yet.

pub use ternmq_core as core;
