//! smol adapter for ternmq.
//!
//! This crate will bind the sans-IO state machines of [`ternmq_core`] to smol (`async-io` and
//! `futures-lite`): the same async MQTT `Client` and broker `Server` as the Tokio adapter, for
//! applications that run on smol. It only moves bytes and time; protocol logic lives in the core.
//!
//! It is empty until the client and broker-server work lands: nothing here pretends to work yet.

pub use ternmq_core as core;
