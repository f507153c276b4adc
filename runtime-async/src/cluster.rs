//! The runtime side of the core's cluster seam ([`ternmq_core::broker::cluster`]): a
//! [`ClusterLink`] is a backplane (NATS JetStream in `ternmq-cluster`) that a server hands
//! what must leave the node, and that gives the server, through a [`ClusterInbox`], what
//! arrives from the other nodes. Written once for every async runtime; the link runs its own
//! tasks.

use core::future::Future;
use core::pin::Pin;
use std::fmt;
use std::sync::Arc;

pub use ternmq_core::broker::persist::{SnapshotSession, StoredMessage};
pub use ternmq_core::broker::{
    ClaimTicket, ClusterNode, ClusterOut, ClusterSeq, ClusterTarget, NodeFigures,
};

/// What a backplane reports to its node.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterIn {
    /// The backplane is reachable, or not.
    Link(bool),
    /// It holds everything forwarded up to this position.
    Acked(ClusterSeq),
    /// A message from another node, for these subscribers here; and its position in the
    /// backplane's stream, if it came from there.
    Publish(StoredMessage, ClusterTarget, Option<u64>),
    /// A message retained (or cleared) on another node.
    Retained(StoredMessage),
    /// This client connected on another node since its connection here announced as this
    /// ([`ClusterOut::Connected`]'s `announce`).
    Takeover(String, u64),
    /// A will of a connection whose node died: publish it here.
    Will(StoredMessage),
    /// The answer to [`ClusterOut::Claim`]: the session another node gave up, if any; the
    /// reply gets the last position this node had given out when it took the session in.
    Claimed(ClaimTicket, Option<SnapshotSession>, Option<Reply<ClusterSeq>>),
    /// Mirror the log from now on, starting with a snapshot ([`ClusterOut::Log`]).
    Snapshot,
    /// The backplane's stream has nothing more for this node up to this position.
    CaughtUp(u64),
    /// Another node asks for this client's session: give it up and answer through the reply.
    Release(String, Reply<Option<SnapshotSession>>),
    /// The backplane wants this node's figures, for its heartbeat.
    Figures(Reply<NodeFigures>),
    /// Every node of the cluster as the backplane sees them now.
    Nodes(Vec<ClusterNode>),
}

/// Where a node's answer to a question from its backplane goes.
pub struct Reply<T>(Box<dyn FnOnce(T) + Send>);

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

impl<T> Reply<T> {
    /// A reply that hands the answer to `send`.
    pub fn new(send: impl FnOnce(T) + Send + 'static) -> Self {
        Self(Box::new(send))
    }

    /// Answers.
    pub fn send(self, answer: T) {
        (self.0)(answer);
    }
}

/// A future a [`ClusterInbox`] returns.
pub type InboxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a [`ClusterLink`] puts what arrives: the server's input queue, waited on when full.
#[derive(Clone)]
pub struct ClusterInbox(Arc<dyn Fn(ClusterIn) -> InboxFuture + Send + Sync>);

impl fmt::Debug for ClusterInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterInbox")
    }
}

impl ClusterInbox {
    /// An inbox that hands each input to `put`.
    pub fn new(put: impl Fn(ClusterIn) -> InboxFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(put))
    }

    /// Hands `input` to the node, waiting while its queue is full.
    pub async fn put(&self, input: ClusterIn) {
        (self.0)(input).await;
    }
}

/// A cluster backplane, as a server sees it.
pub trait ClusterLink: Send + Sync {
    /// Called once, when the server starts: what arrives from the other nodes goes to `inbox`.
    fn start(&self, inbox: ClusterInbox);
    /// What must leave this node, in order. Must not block.
    fn send(&self, out: ClusterOut);
}
