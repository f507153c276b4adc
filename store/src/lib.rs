//! The embedded durable store behind ternmq's broker persistence.
//!
//! This crate will apply the broker core's ordered log of persistence operations (sessions,
//! subscriptions, queued and inflight messages, retained messages, pending wills) to a redb
//! database in group-committed transactions, report each commit back to the core, and load the
//! snapshot the core restores from after a restart or a crash.
//!
//! It is empty until the persistence work lands: nothing here pretends to work yet.

pub use ternmq_core as core;
