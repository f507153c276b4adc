//! smol adapter for ternmq: [`Client`], an async MQTT client, and the MQTT broker [`Server`], on
//! smol (async-io, async-channel, futures-lite).
//!
//! Both bind the sans-IO state machines of [`ternmq_core`] to smol's reactor and timers through
//! the core's drivers ([`client::driver`](ternmq_core::client::driver) and
//! [`broker::driver`](ternmq_core::broker::driver)); protocol logic lives in the core.
//!
//! The client has the Tokio client's API. A driver task owns the TCP connection; the
//! [`Client`] handle is cheap to clone and usable from many tasks; each call queues its
//! packet, wakes the driver and awaits the answer. The driver task and
//! [`on_message_async`](Client::on_message_async) handlers run on smol's global executor (see
//! the [`client`] module).
//!
//! ```no_run
//! use ternmq_smol::{Client, ConnectOptions};
//! use ternmq_core::QoS;
//!
//! smol::block_on(async {
//!     let client = Client::connect(ConnectOptions::new("127.0.0.1", 1883)).await?;
//!     client.subscribe("sensor/#", QoS::AtLeastOnce).await?;
//!     client.on_message(|msg| println!("Topic: {}, Payload: {:?}", msg.topic, msg.payload));
//!     client.publish("sensor/temp", "22.5", QoS::ExactlyOnce).await?;
//!     client.disconnect().await
//! })?;
//! # Ok::<(), ternmq_smol::Error>(())
//! ```
//!
//! The server:
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

pub mod client;
#[cfg(feature = "server")]
pub mod server;

pub use client::{Client, DialFuture, Dialer, Smol, Transport, tcp_dialer};
#[cfg(feature = "server")]
pub use server::{
    AsyncAuthenticator, AsyncAuthorizer, BridgeAddress, BridgeSpec, Control, Listener, Server,
    ServerConfig, ShutdownHandle, TlsAcceptor, TlsSettings, TlsVersion,
};
pub use ternmq_async::transport::{ClientTransport, Transform};
pub use ternmq_core as core;
pub use ternmq_core::client::ReconnectOptions;
pub use ternmq_core::client::driver::ConnectOptions;
pub use ternmq_core::client::driver::Error;
pub use ternmq_core::client::driver::{ServerUrl, TlsOptions};
#[cfg(feature = "server")]
pub use ternmq_store::{Durability, StoreConfig};
