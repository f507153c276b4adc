//! The cluster seam: what must leave this node for the other nodes of a cluster, and what
//! arrives from them. The broker holds no cluster of its own; with [`BrokerConfig::cluster`]
//! set it emits [`ClusterOut`] through [`Broker::poll_cluster`] and takes what a backplane
//! carries from the other nodes through the `handle_cluster_*` methods, with the same `now`
//! as every other input.
//!
//! - A message published here (by a client, the admin API or a will; never a `$` topic) is
//!   routed to this node's own plain subscribers at once and goes out as
//!   [`ClusterOut::Publish`] for every other node's. Its PUBACK or PUBREC waits until the
//!   backplane holds it ([`Broker::handle_cluster_acked`]), as it waits for the store in
//!   durable mode, so an acknowledged message survives this node. Shared groups are not
//!   served from here: the backplane picks one node among those with members of the group
//!   (this one included), which serves it to one of its members
//!   ([`ClusterTarget::Group`]).
//! - The subscriptions here, summed up as filters with plain subscribers and shared groups
//!   with members, go out as [`ClusterOut::Interest`] whenever one appears or goes, so that
//!   the backplane sends this node only what it has subscribers for.
//! - Retained messages are one namespace: every node stores what is retained on any node
//!   ([`Broker::handle_cluster_retained`]); the backplane keeps the last one per topic.
//! - A client that completes CONNECT here is announced ([`ClusterOut::Connected`]); a node
//!   told that the client connected elsewhere since ([`Broker::handle_cluster_takeover`]) closes
//!   its connection with 0x8E and drops its session, which lives on the newer node now.
//! - While the backplane is down ([`Broker::handle_cluster_link`]) the node serves its own
//!   clients alone: nothing is forwarded, shared groups are served locally, and no
//!   acknowledgement waits for the backplane.

use super::durable;
use super::persist::{LogEntry, PersistOp, SnapshotSession, StoredMessage};
use super::*;

/// A position in the sequence of messages this node forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterSeq(pub u64);

/// What must leave this node for the rest of the cluster, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterOut {
    /// A message published on this node, for the subscribers on every other node (plain and
    /// shared, this node's shared groups included). A retained one (`retain`) also replaces
    /// (or, with an empty payload, clears) the topic's retained message cluster-wide. Report
    /// with [`Broker::handle_cluster_acked`] once the backplane holds it (for QoS 0, once it
    /// is sent), in this order.
    Publish {
        /// Its position.
        seq: ClusterSeq,
        /// The message, with the expiry left.
        message: StoredMessage,
    },
    /// This node now has (`on`), or no longer has, plain subscribers to `filter` (`group`
    /// `None`) or members of the shared group `group` subscribed to `filter`. Report with
    /// [`Broker::handle_cluster_acked`] once the backplane sends this node what it matches (a
    /// SUBSCRIBE's SUBACK waits for it, so that what is published anywhere after the SUBACK
    /// arrives).
    Interest {
        /// Its position, in the order of forwarded messages.
        seq: ClusterSeq,
        /// The topic filter, without any `$share/` prefix.
        filter: Box<str>,
        /// The shared group's name.
        group: Option<Box<str>>,
        /// Whether it appeared.
        on: bool,
    },
    /// A client completed CONNECT here: a connection or session of the same client id on
    /// any other node is taken over.
    Connected {
        /// The client id.
        client_id: MqttStr,
        /// Which of this node's announcements it is (increasing): a takeover names the one it
        /// takes over ([`Broker::handle_cluster_takeover`]).
        announce: u64,
    },
    /// The will of a client connected here, as it is now: `Some` (with its delay, seconds)
    /// while it is pending, `None` once it was published or dropped. Keep it where the other
    /// nodes find it: if this node dies, one of them publishes it
    /// ([`Broker::handle_cluster_will`]), once.
    Will {
        /// The client id.
        client_id: MqttStr,
        /// The will message and its delay.
        will: Option<(StoredMessage, u32)>,
    },
    /// A client connects here with Clean Start 0: ask the node that holds its session, if
    /// another does, to give it up ([`Broker::handle_cluster_release`] there), and answer with
    /// [`Broker::handle_cluster_claimed`] (with `None` when no other node has it, or none
    /// answers in time). The connection's input waits meanwhile.
    Claim {
        /// What the answer names.
        ticket: ClaimTicket,
        /// The client id.
        client_id: MqttStr,
    },
    /// An entry of this node's log, mirrored where the other nodes can read it, so that one
    /// of them can take the sessions of this node if it dies ([`LogReplay`]). Mirroring starts
    /// with a snapshot, when the backplane asks for one ([`Broker::handle_cluster_snapshot`]),
    /// and stops while the backplane is down. Only with persistence on. Report with
    /// [`Broker::handle_cluster_acked`] once the backplane holds it: acknowledgements wait for
    /// it, as they wait for forwarded messages.
    ///
    /// [`LogReplay`]: super::persist::LogReplay
    Log {
        /// Its position, in the order of forwarded messages.
        seq: ClusterSeq,
        /// The entry.
        entry: LogEntry,
    },
}

/// A CONNECT that waits for the cluster to say whether another node holds its session
/// ([`ClusterOut::Claim`], [`Broker::handle_cluster_claimed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimTicket(pub u64);

/// Which subscribers of this node a message from another node is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterTarget {
    /// Every plain (not shared) subscription that matches.
    Subscribers,
    /// One member of this node's shared group `group` subscribed to `filter`: the backplane
    /// chose this node for it.
    Group {
        /// The shared group's name.
        group: Box<str>,
        /// The topic filter, without the `$share/` prefix.
        filter: Box<str>,
    },
    /// Every plain subscription that matches, but those of these sessions: a message a node
    /// that died published, whose sessions came here with what they had of it (in that node's
    /// mirrored log).
    SubscribersBut {
        /// The sessions' client ids.
        except: Vec<Box<str>>,
    },
    /// The plain subscriptions of one session that match, and no other: a message it missed
    /// while its node died, before it came here.
    Session {
        /// The session's client id.
        client_id: Box<str>,
    },
}

/// What a node says of itself to the others, with its heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// Clients connected now.
    pub clients_connected: u64,
    /// Sessions held now.
    pub sessions: u64,
    /// Subscriptions now.
    pub subscriptions: u64,
    /// PUBLISH packets received from clients since start.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients since start.
    pub messages_sent: u64,
}

impl NodeFigures {
    /// The figures as text: the five numbers, space-separated.
    pub fn encode(&self) -> alloc::string::String {
        alloc::format!(
            "{} {} {} {} {}",
            self.clients_connected,
            self.sessions,
            self.subscriptions,
            self.messages_received,
            self.messages_sent
        )
    }

    /// Figures written by [`encode`](Self::encode).
    pub fn decode(s: &str) -> Option<Self> {
        let mut n = s.split(' ').map(|w| w.parse::<u64>().ok());
        let f = NodeFigures {
            clients_connected: n.next()??,
            sessions: n.next()??,
            subscriptions: n.next()??,
            messages_received: n.next()??,
            messages_sent: n.next()??,
        };
        n.next().is_none().then_some(f)
    }
}

/// One node of the cluster as this one knows it ([`Stats::cluster_nodes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its name.
    pub name: alloc::string::String,
    /// Whether it said it lives lately.
    pub alive: bool,
    /// What it last said of itself.
    pub figures: NodeFigures,
}

/// A cluster node's side of the seam.
#[derive(Debug, Default)]
pub(super) struct ClusterState {
    out: VecDeque<ClusterOut>,
    /// The last position given and the last one the backplane holds.
    seq: u64,
    acked: u64,
    /// Whether the backplane is reachable.
    up: bool,
    /// Acknowledgements waiting for the backplane.
    awaiting: VecDeque<ParkedAck>,
    /// The position of the last change of interest.
    interest_seq: u64,
    /// Connections announced so far, and the last announcement of each session (by index).
    announcements: u64,
    announced: BTreeMap<u32, u64>,
    /// SUBACKs waiting for the backplane to have their interest, by position.
    replies: VecDeque<(u64, ConnId, Packet)>,
    /// CONNECTs waiting for their sessions, by ticket: the connection and the authenticator's
    /// data for its CONNACK.
    claims: BTreeMap<u64, (ConnId, Option<Bytes>)>,
    /// Whether the log is mirrored ([`ClusterOut::Log`]).
    mirror: bool,
    /// The highest stream position handled ([`Broker::handle_cluster_consumed`]).
    consumed: u64,
}

impl ClusterState {
    /// Puts `entry` of the mirrored log out, at the next position.
    fn push_log(&mut self, entry: LogEntry) {
        self.seq += 1;
        self.out.push_back(ClusterOut::Log { seq: ClusterSeq(self.seq), entry });
    }

    /// The entry the operations of the input being handled go into, if it is still here.
    fn open_ops(&mut self) -> Option<&mut LogEntry> {
        match self.out.back_mut() {
            Some(ClusterOut::Log { entry: e @ LogEntry::Ops { .. }, .. }) => Some(e),
            _ => None,
        }
    }
}

impl Broker {
    /// What must leave this node next, in order; call after every input, with the other
    /// `poll_*`. Always `None` unless [`BrokerConfig::cluster`] is set.
    #[must_use]
    pub fn poll_cluster(&mut self) -> Option<ClusterOut> {
        self.queue_interest();
        self.cluster.as_deref_mut()?.out.pop_front()
    }

    /// Moves the changes of interest the subscription tree recorded into the output, each
    /// with its position.
    fn queue_interest(&mut self) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        while let Some((filter, group, on)) = self.tree.take_interest() {
            c.seq += 1;
            c.interest_seq = c.seq;
            c.out.push_back(ClusterOut::Interest { seq: ClusterSeq(c.seq), filter, group, on });
        }
    }

    /// After a SUBSCRIBE: the position of the last interest it changed (or, with the log
    /// mirrored, of the entry that has the subscription), to hold its SUBACK until the
    /// backplane has it; `None` when there is none (or the backplane is down).
    pub(super) fn interest_position(&mut self) -> Option<u64> {
        self.queue_interest();
        // And until the mirrored log has the subscription.
        let mirrored = self.mirror_position();
        let c = self.cluster.as_deref().filter(|c| c.up)?;
        // Also a SUBSCRIBE to a filter another client's SUBSCRIBE gave the node a moment ago:
        // its interest may be on the way still.
        let seq = if c.interest_seq > c.acked { c.interest_seq } else { 0 }.max(mirrored);
        (seq > 0).then_some(seq)
    }

    /// Sends `packet` (a SUBACK) on `conn` once the backplane has position `seq`.
    pub(super) fn send_when_interest_held(&mut self, conn: ConnId, seq: u64, packet: Packet) {
        match self.cluster.as_deref_mut() {
            Some(c) if seq > c.acked => c.replies.push_back((seq, conn, packet)),
            _ => self.send(conn.index, &packet),
        }
    }

    /// The backplane is reachable (`up`) or not. While it is not, this node serves its own
    /// clients alone: nothing is forwarded, its shared groups are served here, and the
    /// acknowledgements that waited for the backplane are sent.
    pub fn handle_cluster_link(&mut self, now: Instant, up: bool) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.up = up;
        self.stats.cluster_connected = Some(up);
        if !up {
            // What changes meanwhile is not mirrored: mirroring starts again with a snapshot.
            c.mirror = false;
            let seq = ClusterSeq(c.seq);
            self.handle_cluster_acked(now, seq);
        }
    }

    /// The backplane holds every message forwarded up to and including `seq`: their
    /// acknowledgements go.
    pub fn handle_cluster_acked(&mut self, now: Instant, seq: ClusterSeq) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.acked = c.acked.max(seq.0);
        let acked = c.acked;
        let (ready, still): (VecDeque<ParkedAck>, VecDeque<ParkedAck>) =
            core::mem::take(&mut c.awaiting).into_iter().partition(|p| p.cluster <= acked);
        c.awaiting = still;
        let (replies, held): (VecDeque<_>, VecDeque<_>) =
            core::mem::take(&mut c.replies).into_iter().partition(|r| r.0 <= acked);
        c.replies = held;
        // Released from the backplane; each may still wait for the store.
        for p in ready {
            self.release_ack(p);
        }
        self.open_gates(now);
        for (_, conn, packet) in replies {
            if self.conn_mut(conn).is_some_and(|c| c.phase == Phase::Connected) {
                self.send(conn.index, &packet);
            }
        }
    }

    /// A message published on another node, for `target` here. Nothing here forwards it
    /// again.
    pub fn handle_cluster_publish(
        &mut self,
        now: Instant,
        message: StoredMessage,
        target: ClusterTarget,
    ) {
        let Some(msg) = self.arrival(now, message) else {
            return;
        };
        self.stats.cluster_received += 1;
        let mut how = Routing { skip_groups: true, ..Routing::default() };
        match target {
            ClusterTarget::Subscribers => {
                self.route(now, &msg, &mut how);
            }
            ClusterTarget::SubscribersBut { except } => {
                how.except =
                    except.iter().filter_map(|id| self.session_for(id.as_bytes())).collect();
                self.route(now, &msg, &mut how);
            }
            ClusterTarget::Session { client_id } => {
                let Some(si) = self.session_for(client_id.as_bytes()) else {
                    return;
                };
                how.only = Some(si);
                self.route(now, &msg, &mut how);
            }
            ClusterTarget::Group { group, filter } => {
                let shared = alloc::format!("$share/{group}/{filter}");
                let found =
                    TopicFilter::new(shared.as_str()).ok().and_then(|f| self.tree.group_of(&f));
                let served = match found {
                    Some(g) => self.deliver_shared(now, g, &msg, &mut how),
                    None => false,
                };
                if !served {
                    self.stats.dropped_no_member += 1;
                }
            }
        }
    }

    /// A message retained (or, with an empty payload, cleared) on another node.
    pub fn handle_cluster_retained(&mut self, now: Instant, message: StoredMessage) {
        if !message.retain {
            return;
        }
        if let Some(msg) = self.arrival(now, message) {
            self.store_retained(now, &msg);
        }
    }

    /// `client_id` connected on another node after its connection announced here as
    /// `announce` ([`ClusterOut::Connected`]): its connection here is closed (MQTT 5:
    /// DISCONNECT 0x8E) and its session dropped, without a will that was still delayed (the
    /// session goes on there). If the client connected here again since that announcement,
    /// this connection is the newer one and stays.
    pub fn handle_cluster_takeover(&mut self, now: Instant, client_id: &str, announce: u64) {
        let Some(c) = self.cluster.as_deref() else {
            return;
        };
        let Some(si) = self.session_for(client_id.as_bytes()) else {
            return;
        };
        if c.announced.get(&si).is_some_and(|&a| a > announce) {
            return;
        }
        if let Some(old) = self.session(si).and_then(|s| s.conn) {
            self.close_for_takeover(now, old.index, si, ReasonCode::SessionTakenOver);
        }
        self.drop_session(now, si);
        self.stats.cluster_takeovers += 1;
    }

    /// The answer to [`ClusterOut::Claim`] `ticket`: the client's session as another node gave
    /// it up, or `None`. The CONNECT then completes (with Session Present 1 if there is a
    /// session, here or given), and the input that waited is handled.
    ///
    /// Returns the last position given out so far (what this node published before the
    /// session came in is at or before it).
    pub fn handle_cluster_claimed(
        &mut self,
        now: Instant,
        ticket: ClaimTicket,
        session: Option<SnapshotSession>,
    ) -> ClusterSeq {
        let Some(c) = self.cluster.as_deref_mut() else {
            return ClusterSeq(0);
        };
        let position = ClusterSeq(c.seq);
        let Some((conn, auth_data)) = c.claims.remove(&ticket.0) else {
            return position;
        };
        // The other node gave the session up: it lives here now, even if the connection that
        // asked for it is gone meanwhile (it waits offline, as after any disconnect).
        if let Some(s) = session {
            // What this node still has of the client is older than what the other node gave.
            if let Some(si) = self.session_for(s.client_id.as_bytes()) {
                if let Some(old) = self.session(si).and_then(|s| s.conn)
                    && old != conn
                {
                    self.close_for_takeover(now, old.index, si, ReasonCode::SessionTakenOver);
                }
                self.drop_session(now, si);
            }
            let si = self.import_session(now, s);
            let connected = self.conn_mut(conn).is_some_and(|c| c.ticket() == Some(ticket.0));
            self.log_imported(now, si, connected);
            self.stats.cluster_sessions_moved_in += 1;
        }
        let Some(cn) = self.conn_mut(conn) else {
            return position;
        };
        if cn.ticket() != Some(ticket.0) {
            return position;
        }
        cn.extra().ticket = None;
        match cn.pending.as_deref_mut() {
            Some(p) => p.claimed = true,
            None => return position,
        }
        self.complete_connect(now, conn.index, auth_data);
        self.resume_held(now, conn);
        position
    }

    /// The message just given to [`handle_cluster_publish`](Self::handle_cluster_publish)
    /// (in the same input) was at `position` in the backplane's stream: the mirrored log
    /// records it with what the message caused, so that a node taking this node's sessions
    /// knows where to go on from. A message that caused nothing to log (no session here
    /// keeps it) costs the mirror nothing: the next entry carries the position.
    pub fn handle_cluster_consumed(&mut self, position: u64) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.consumed = c.consumed.max(position);
        if !(c.mirror && c.up) {
            return;
        }
        let position = c.consumed;
        if let Some(LogEntry::Ops { consumed, .. }) = c.open_ops() {
            *consumed = Some(position);
        }
    }

    /// The backplane's stream holds nothing for this node up to `position` that it has not
    /// been given (its consumer read that far, or acknowledged that far before a restart):
    /// the mirrored log records it at once, so that a node taking a session from it does not
    /// replay what is older.
    pub fn handle_cluster_caught_up(&mut self, position: u64) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if position <= c.consumed {
            return;
        }
        c.consumed = position;
        if c.mirror && c.up {
            c.push_log(LogEntry::Ops { ops: Vec::new(), consumed: Some(position) });
        }
    }

    /// The backplane wants this node's log mirrored from now on ([`ClusterOut::Log`]): the
    /// whole durable state goes out as a snapshot, then every change. Asked once the backplane
    /// is reachable, and again from time to time so that what it keeps stays short.
    pub fn handle_cluster_snapshot(&mut self, now: Instant) {
        if !self.logging() || !self.cluster.as_deref().is_some_and(|c| c.up) {
            return;
        }
        let mut entries = Vec::new();
        let mut batch = Vec::new();
        let persistent: Vec<u32> = (0..self.sessions.len() as u32)
            .filter(|&si| self.session(si).is_some_and(|s| s.persistent))
            .collect();
        for si in persistent {
            let connected = self.session(si).is_some_and(|s| s.conn.is_some());
            batch.extend(self.session_ops(now, si, connected));
            if batch.len() >= 256 {
                entries.push(LogEntry::Ops { ops: core::mem::take(&mut batch), consumed: None });
            }
        }
        if !batch.is_empty() {
            entries.push(LogEntry::Ops { ops: batch, consumed: None });
        }
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.mirror = true;
        let start = LogEntry::SnapshotStart { consumed: c.consumed };
        for entry in core::iter::once(start).chain(entries).chain([LogEntry::SnapshotEnd]) {
            c.push_log(entry);
        }
    }

    /// Mirrors `op`, just logged, if the log is mirrored: with the other operations of the
    /// same input, in one entry.
    pub(super) fn mirror(&mut self, op: &PersistOp) {
        let Some(c) = self.cluster.as_deref_mut().filter(|c| c.mirror && c.up) else {
            return;
        };
        // Retained messages have a place of their own on the backplane.
        if matches!(op, PersistOp::Retained { .. } | PersistOp::RetainedCleared { .. }) {
            return;
        }
        if let Some(LogEntry::Ops { ops, .. }) = c.open_ops() {
            ops.push(op.clone());
            return;
        }
        let consumed = (c.consumed > 0).then_some(c.consumed);
        c.push_log(LogEntry::Ops { ops: alloc::vec![op.clone()], consumed });
    }

    /// The position an acknowledgement must wait for so that what its message caused here is
    /// mirrored: the last one given out, while the log is mirrored and it is not held yet.
    pub(super) fn mirror_position(&self) -> u64 {
        self.cluster.as_deref().filter(|c| c.mirror && c.up && c.seq > c.acked).map_or(0, |c| c.seq)
    }

    /// Another node's client connects there with Clean Start 0 and asks for its session: its
    /// connection here is closed (MQTT 5: DISCONNECT 0x8E) and the session, if it outlives
    /// its connection, is given up (without its will: the new connection brings its own).
    pub fn handle_cluster_release(
        &mut self,
        now: Instant,
        client_id: &str,
    ) -> Option<SnapshotSession> {
        self.cluster.as_ref()?;
        let si = self.session_for(client_id.as_bytes())?;
        if let Some(old) = self.session(si).and_then(|s| s.conn) {
            self.close_for_takeover(now, old.index, si, ReasonCode::SessionTakenOver);
        }
        // A session that ended with its connection (expiry 0) is gone already.
        let si = self.session_for(client_id.as_bytes())?;
        let snapshot = self.export_session(now, si);
        self.drop_session(now, si);
        self.stats.cluster_takeovers += 1;
        snapshot
    }

    /// Ends session `si`, which lives on (or moved to) another node now: no will, and its
    /// messages are not given to other members of their shared groups.
    fn drop_session(&mut self, now: Instant, si: u32) {
        if self.session(si).is_some_and(|s| s.will.is_some()) {
            if let Some(s) = self.session_mut(si) {
                s.will = None;
            }
            self.will_changed(now, si);
        }
        if let Some(s) = self.session_mut(si) {
            s.will = None;
            s.will_at = MaybeAt::NONE;
            s.queue = LazyDeque::default();
            s.inflight = LazyDeque::default();
            s.queued_bytes = 0;
        }
        if self.session(si).is_some() {
            self.end_session(now, si);
        }
    }

    /// Before a CONNECT with Clean Start 0 completes in a cluster: asks the other nodes for
    /// the session ([`ClusterOut::Claim`]) and returns `None` (the CONNECT waits); else, or
    /// once asked, gives `auth_data` back.
    pub(super) fn claim_first(
        &mut self,
        index: u32,
        auth_data: Option<Bytes>,
    ) -> Option<Option<Bytes>> {
        if !self.cluster.as_deref().is_some_and(|c| c.up) {
            return Some(auth_data);
        }
        let conn = self.conn_id(index);
        let ticket = self.next_ticket;
        let Some(c) = self.slot_conn(index) else {
            return Some(auth_data);
        };
        let Some(p) = c.pending.as_deref() else {
            return Some(auth_data);
        };
        if p.claimed || p.connect.clean_start {
            return Some(auth_data);
        }
        let client_id = p.client_id.detach();
        c.extra().ticket = Some(ticket);
        self.next_ticket += 1;
        if let Some(cl) = self.cluster.as_deref_mut() {
            cl.claims.insert(ticket, (conn, auth_data));
            cl.out.push_back(ClusterOut::Claim { ticket: ClaimTicket(ticket), client_id });
        }
        None
    }

    /// Forwards `msg`, published here, to the other nodes if the backplane is up; returns its
    /// position (0 if not forwarded).
    pub(super) fn forward(&mut self, now: Instant, msg: &Message) -> u64 {
        let Some(c) = self.cluster.as_deref_mut().filter(|c| c.up) else {
            return 0;
        };
        if msg.topic.is_system() {
            return 0;
        }
        c.seq += 1;
        let seq = c.seq;
        c.out.push_back(ClusterOut::Publish {
            seq: ClusterSeq(seq),
            message: durable::stored(msg, now),
        });
        self.stats.cluster_forwarded += 1;
        seq
    }

    /// Tells the cluster session `si`'s will as it is now: pending (to be published by
    /// another node if this one dies), or gone.
    pub(super) fn will_changed(&mut self, now: Instant, si: u32) {
        if self.cluster.is_none() {
            return;
        }
        let Some(s) = self.session(si) else {
            return;
        };
        let client_id = s.client_id.clone();
        // The delay as the session applies it: never past the session's end.
        let delay_cap = if s.protocol.is_v5() { s.expiry } else { 0 };
        let will = s.will.as_ref().map(|w| (durable::stored(&w.msg, now), w.delay.min(delay_cap)));
        if let Some(c) = self.cluster.as_deref_mut() {
            c.out.push_back(ClusterOut::Will { client_id, will });
        }
    }

    /// A will another node held for a connection of a node that died, published here (and
    /// forwarded like any message published here).
    pub fn handle_cluster_will(&mut self, now: Instant, message: StoredMessage) {
        let Some(msg) = self.arrival(now, message) else {
            return;
        };
        self.stats.count_received(msg.qos, msg.payload.len());
        self.stats.cluster_wills += 1;
        self.spread(now, &msg, &mut Routing::default());
    }

    /// This node's figures, for its heartbeat.
    pub fn node_figures(&self) -> NodeFigures {
        let g = self.gauges();
        NodeFigures {
            clients_connected: g.clients_connected as u64,
            sessions: g.sessions as u64,
            subscriptions: g.subscriptions as u64,
            messages_received: self.stats.messages_received,
            messages_sent: self.stats.messages_sent,
        }
    }

    /// Every node of the cluster as the backplane last saw them (this one included), for
    /// `$SYS`, the metrics and the admin API ([`Stats::cluster_nodes`]).
    pub fn handle_cluster_nodes(&mut self, nodes: Vec<ClusterNode>) {
        if self.cluster.is_some() {
            self.stats.cluster_nodes = nodes;
        }
    }

    /// A message from another node as this node keeps messages; `None` on a broker on its
    /// own, or once it expired.
    fn arrival(&self, now: Instant, message: StoredMessage) -> Option<Arc<Message>> {
        self.cluster.as_ref()?;
        let msg = Arc::new(durable::message(message, now));
        (!msg.expired(now)).then_some(msg)
    }

    /// Announces that `client_id` connected here.
    pub(super) fn announce(&mut self, si: u32, client_id: &MqttStr) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.announcements += 1;
            let announce = c.announcements;
            c.announced.insert(si, announce);
            c.out.push_back(ClusterOut::Connected { client_id: client_id.clone(), announce });
        }
    }

    /// The last position forwarded if the backplane does not hold it yet, else 0.
    pub(super) fn cluster_position(&self) -> u64 {
        self.cluster.as_deref().map_or(0, |c| if c.seq > c.acked { c.seq } else { 0 })
    }

    /// The last position the backplane holds (all of them without a cluster).
    pub(super) fn cluster_acked(&self) -> u64 {
        self.cluster.as_deref().map_or(u64::MAX, |c| c.acked)
    }

    /// Whether an acknowledgement waiting for forwarded position `seq` must wait still.
    pub(super) fn cluster_behind(&self, seq: u64) -> bool {
        self.cluster.as_deref().is_some_and(|c| seq > c.acked)
    }

    /// Parks an acknowledgement until the backplane holds what it waits for.
    pub(super) fn await_cluster(&mut self, p: ParkedAck) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.awaiting.push_back(p);
        }
    }
}
