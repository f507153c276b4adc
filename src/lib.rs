//! ternmq: an MQTT v3.1.1 and v5.0 broker and client with a sans-IO core.
//!
//! This facade re-exports the workspace crates:
//!
//! - [`core`] (always): the codec, topic model and protocol state machines, with no I/O.
//! - `tokio`, `smol`, `blocking` (features of the same names, `blocking` is feature `std`): the
//!   runtime adapters.
//! - `store` (feature `store`): the embedded durable store.
//! - [`sim`] (feature `sim`): deterministic simulation of clients and a broker on a virtual
//!   clock and a faulty network, with the protocol's promises checked.
//!
//! It also holds [`auth`]: Mosquitto-compatible password and ACL files, as an authenticator
//! and an authorizer for the broker.
//!
//! The `ternmq` program (feature `cli`) is built from `src/bin/ternmq/`.

pub mod auth;

pub use ternmq_core as core;
pub use ternmq_core::{broker, codec, topic};

#[cfg(feature = "cluster")]
pub use ternmq_cluster as cluster;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "smol")]
pub use ternmq_smol as smol;
#[cfg(feature = "std")]
pub use ternmq_std as blocking;
#[cfg(feature = "store")]
pub use ternmq_store as store;
#[cfg(feature = "tokio")]
pub use ternmq_tokio as tokio;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
