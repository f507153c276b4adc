//! ternmq-core: the sans-IO heart of ternmq.
//!
//! This crate holds everything protocol-shaped in ternmq and nothing that touches the operating
//! system: no sockets, no threads, no clocks, no randomness, no files. Runtimes (Tokio, smol,
//! std threads) feed it bytes and the current time and write out the bytes it hands back.
//!
//! What is here today:
//!
//! - [`codec`]: every MQTT control packet and property of protocol levels 3 (MQTT 3.1, decode
//!   only for CONNECT), 4 (3.1.1) and 5 (5.0) in one model; a strict streaming [`Decoder`] that
//!   splits frames off the caller's `BytesMut` without copying topics or payloads, and an
//!   [`Encoder`] that knows each packet's exact size before writing it.
//! - [`topic`]: validated topic names and topic filters, wildcard matching and `$share` parsing.
//! - [`time`]: the caller-supplied [`time::Instant`] every timer of the core is measured in.
//! - [`client`]: the client state machine, and [`client::driver`], the bookkeeping every
//!   client runtime needs around it (answers by packet id, write offsets, outcomes).
//! - [`broker`]: the broker state machine (sessions, QoS flows, retained messages, wills,
//!   shared subscriptions, flow control, authentication hooks, the persistence log and
//!   restore), and [`broker::driver`], the bookkeeping every server runtime needs around it.
//!
//! The repository's `ARCHITECTURE.md` describes how they fit together.
//!
//! # Decoding a stream
//!
//! ```
//! use bytes::BytesMut;
//! use ternmq_core::codec::{Decoder, Packet, ProtocolVersion};
//!
//! // A client talking MQTT 5 reads what the server sends.
//! let mut decoder = Decoder::new(Some(ProtocolVersion::V5), 1024 * 1024);
//! let mut input = BytesMut::from(&[0xd0u8, 0x00, 0x20][..]); // PINGRESP and half a CONNACK
//! assert_eq!(decoder.decode(&mut input).unwrap(), Some(Packet::PingResp));
//! assert_eq!(decoder.decode(&mut input).unwrap(), None); // wait for more bytes
//! input.extend_from_slice(&[0x03, 0x00, 0x00, 0x00]);
//! assert!(matches!(decoder.decode(&mut input).unwrap(), Some(Packet::ConnAck(_))));
//! ```
//!
//! # Errors versus bugs
//!
//! A caller mistake (encoding a QoS 1 PUBLISH without a packet identifier, a topic with a
//! wildcard in it) is a `Result::Err`. Bytes from the network never cause a panic: a malformed
//! or forbidden packet is a [`codec::DecodeError`] that names the MQTT 5 reason code to send and,
//! for 3.1.1, whether a CONNACK return code is owed before the connection is closed.

#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod bridge;
pub mod broker;
pub mod client;
pub mod codec;
mod rng;
pub mod time;
pub mod topic;

pub use codec::{Decoder, Encoder, Packet, ProtocolVersion, QoS};
