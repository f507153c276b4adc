//! Tokio adapter for ternmq: [`Client`], an async MQTT client.
//!
//! A driver task owns the TCP connection and runs the sans-IO [`ternmq_core::client::Client`]:
//! it reads, writes, sleeps until the core's next deadline and acts on its events. The
//! [`Client`] handle is cheap to clone and usable from many tasks; each call locks the core
//! briefly, queues its packet, wakes the driver and awaits the answer.
//!
//! ```no_run
//! use ternmq_tokio::{Client, ConnectOptions};
//! use ternmq_core::QoS;
//!
//! # async fn run() -> Result<(), ternmq_tokio::Error> {
//! let client = Client::connect(ConnectOptions::new("127.0.0.1", 1883)).await?;
//! client.subscribe("sensor/#", QoS::AtLeastOnce).await?;
//! client.on_message(|msg| println!("Topic: {}, Payload: {:?}", msg.topic, msg.payload));
//! client.publish("sensor/temp", "22.5", QoS::ExactlyOnce).await?;
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Server`] runs the MQTT broker on Tokio; see the [`server`] module.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "server")]
pub use server::{
    AsyncAuthenticator, AsyncAuthorizer, BridgeAddress, BridgeSpec, Control, Listener, Server,
    ServerConfig, ShutdownHandle, TlsAcceptor, TlsSettings, TlsVersion,
};
pub use ternmq_async::cluster::{ClusterIn, ClusterInbox, ClusterLink};
pub use ternmq_async::transport::{ClientTransport, Transform};
pub use ternmq_core as core;
pub use ternmq_core::client::ReconnectOptions;
pub use ternmq_core::client::driver::{AuthHandler, ConnectOptions, Error};
pub use ternmq_core::client::driver::{ServerUrl, TlsOptions};
#[cfg(feature = "server")]
pub use ternmq_store::{Durability, StoreConfig};

/// A byte stream the client runs MQTT over: TCP by default, or TLS or a WebSocket over it,
/// supplied by a [`Dialer`]. Protocol code never sees which.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// What a [`Dialer`] returns: a connected transport, or why it could not connect.
pub type DialFuture = ternmq_async::DialFuture<Box<dyn Transport>>;

/// Opens a transport to the server, for the first connection and for every reconnection:
/// the seam where TLS or WebSocket transports plug in ([`Client::connect_via`]).
pub type Dialer = ternmq_async::Dialer<Box<dyn Transport>>;

/// An async MQTT client handle on Tokio; clone it freely. Its driver task is spawned on the
/// current Tokio runtime. The client is written once for every runtime
/// ([`ternmq_async::Client`]); this crate supplies [`Tokio`].
pub type Client = ternmq_async::Client<Tokio>;

/// The default [`Dialer`]: TCP to `host:port`, with Nagle's algorithm off.
pub fn tcp_dialer(host: impl Into<String>, port: u16) -> Dialer {
    ternmq_async::tcp_dialer::<Tokio>(host, port)
}

const READ_CHUNK: usize = 16 * 1024;

/// Tokio's side of the runtime seam ([`ternmq_async::Runtime`]): its tasks, timers and byte
/// streams.
#[derive(Debug)]
pub struct Tokio;

impl ternmq_async::Runtime for Tokio {
    type Transport = Box<dyn Transport>;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(task);
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn read<'a>(
        transport: &'a mut Self::Transport,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        buf.reserve(READ_CHUNK);
        transport.read_buf(buf)
    }

    fn write_all<'a>(
        transport: &'a mut Self::Transport,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        transport.write_all(data)
    }

    async fn close(transport: &mut Self::Transport) {
        let _ = transport.shutdown().await;
    }

    async fn tcp_connect(host: &str, port: u16) -> io::Result<Self::Transport> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}
