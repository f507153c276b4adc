//! The broker's figures as Prometheus metrics and as the JSON of `/api/v1/stats`.
//!
//! The broker counts in plain integers in its core (no atomics, no registry on the hot path);
//! a scrape asks for a copy through the control handle and writes it out here, each time into a
//! fresh registry, so the exposition is always one consistent moment.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::{Value, json};
use ternmq_core::broker::{Gauges, ListenerStats, Stats};
use ternmq_store::{COMMIT_BUCKETS_US, StoreFigures};
use ternmq_tokio::server::ListenerInfo;

type Labels = Vec<(&'static str, String)>;

const VERSIONS: [&str; 3] = ["3.1", "3.1.1", "5.0"];

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn set(g: &Gauge, v: u64) {
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    set(&g, v);
    g
}

fn counters<const N: usize>(
    label: &'static str,
    values: [(String, u64); N],
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (l, v) in values {
        family.get_or_create(&vec![(label, l)]).inc_by(v);
    }
    family
}

fn by_qos(values: [u64; 3]) -> [(String, u64); 3] {
    [0, 1, 2].map(|q| (q.to_string(), values[q]))
}

/// The store's commit latency, as a histogram in seconds.
#[derive(Debug)]
struct CommitLatency(StoreFigures);

impl EncodeMetric for CommitLatency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = COMMIT_BUCKETS_US
            .iter()
            .zip(&self.0.buckets)
            .map(|(&bound, &n)| (bound as f64 / 1e6, n))
            .collect();
        buckets.push((f64::INFINITY, self.0.buckets.last().copied().unwrap_or(0)));
        let sum = self.0.latency_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.commits, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The broker's figures at one moment, with what the server adds (its listeners, its store).
pub(super) struct Snapshot<'a> {
    pub(super) stats: Box<Stats>,
    pub(super) gauges: Gauges,
    pub(super) uptime: Duration,
    pub(super) store: Option<StoreFigures>,
    pub(super) listeners: &'a [ListenerInfo],
}

impl Snapshot<'_> {
    /// Each listener (its index, and how it is bound when known) with its counts.
    fn listener_rows(&self) -> impl Iterator<Item = (usize, Option<&ListenerInfo>, ListenerStats)> {
        (0..self.listeners.len().max(self.stats.listeners.len())).map(|i| {
            (i, self.listeners.get(i), self.stats.listeners.get(i).copied().unwrap_or_default())
        })
    }
}

/// The OpenMetrics text of one moment's figures.
pub(super) fn exposition(snap: &Snapshot<'_>) -> Result<String, String> {
    let (stats, gauges, uptime) = (&snap.stats, &snap.gauges, snap.uptime);
    let mut r = Registry::with_prefix("ternmq");
    let open = Family::<Labels, Gauge>::default();
    let accepted = Family::<Labels, Counter>::default();
    for (i, l, s) in snap.listener_rows() {
        let labels: Labels = match l {
            Some(l) => vec![("listener", l.addr.to_string()), ("kind", l.kind.to_string())],
            None => vec![("listener", i.to_string()), ("kind", String::new())],
        };
        set(&open.get_or_create(&labels), s.open);
        accepted.get_or_create(&labels).inc_by(s.accepted);
    }
    r.register("connections", "Network connections open now, by listener", open);
    r.register("connections_accepted", "Network connections accepted, by listener", accepted);
    r.register(
        "connections_refused",
        "Connections refused for max_connections",
        counter(stats.connections_refused),
    );
    r.register(
        "transport_refused",
        "Connections refused before MQTT (TLS handshake, WebSocket upgrade, PROXY header)",
        counter(stats.transport_refused),
    );
    r.register(
        "connect_timeouts",
        "Connections closed for not sending CONNECT in time",
        counter(stats.connect_timeouts),
    );
    let clients = Family::<Labels, Gauge>::default();
    let connects = Family::<Labels, Counter>::default();
    for (i, v) in VERSIONS.iter().enumerate() {
        let labels = vec![("protocol", (*v).to_string())];
        set(&clients.get_or_create(&labels), stats.versions[i].connected);
        connects.get_or_create(&labels).inc_by(stats.versions[i].connects);
    }
    r.register("clients_connected", "MQTT clients connected now, by protocol version", clients);
    r.register("client_connects", "CONNECTs accepted, by protocol version", connects);
    r.register(
        "auth_failures",
        "CONNECTs and re-authentications refused for their credentials",
        counter(stats.auth_failures),
    );
    r.register(
        "messages_received",
        "PUBLISH packets received from clients, by QoS",
        counters("qos", by_qos(stats.received_by_qos)),
    );
    r.register(
        "messages_sent",
        "PUBLISH packets sent to clients, by QoS",
        counters("qos", by_qos(stats.sent_by_qos)),
    );
    r.register_with_unit(
        "payload_received",
        "Payload bytes of the PUBLISH packets received, by QoS",
        Unit::Bytes,
        counters("qos", by_qos(stats.payload_bytes_received_by_qos)),
    );
    r.register_with_unit(
        "payload_sent",
        "Payload bytes of the PUBLISH packets sent, by QoS",
        Unit::Bytes,
        counters("qos", by_qos(stats.payload_bytes_sent_by_qos)),
    );
    r.register_with_unit(
        "network_received",
        "Bytes read from clients",
        Unit::Bytes,
        counter(stats.bytes_received),
    );
    r.register_with_unit(
        "network_sent",
        "Bytes written to clients",
        Unit::Bytes,
        counter(stats.bytes_sent),
    );
    r.register(
        "messages_dropped",
        "Messages not delivered, by reason",
        counters(
            "reason",
            [
                ("queue_full".into(), stats.dropped_queue_full),
                ("slow_consumer".into(), stats.dropped_slow_consumer),
                ("expired".into(), stats.dropped_expired),
                ("too_large".into(), stats.dropped_too_large),
                ("denied".into(), stats.publish_denied),
                ("not_authorized".into(), stats.dropped_not_authorized),
                ("no_member".into(), stats.dropped_no_member),
            ],
        ),
    );
    if let Some(up) = stats.cluster_connected {
        r.register(
            "cluster_connected",
            "Whether this cluster node reaches its NATS backplane (1) or serves alone (0)",
            gauge(u64::from(up)),
        );
        r.register(
            "cluster_messages",
            "Messages forwarded to the other nodes of the cluster, and received from them",
            counters(
                "direction",
                [
                    ("forwarded".into(), stats.cluster_forwarded),
                    ("received".into(), stats.cluster_received),
                ],
            ),
        );
        let alive = stats.cluster_nodes.iter().filter(|n| n.alive);
        r.register(
            "cluster_nodes",
            "Nodes of the cluster that said lately that they live, this one included",
            gauge(alive.clone().count() as u64),
        );
        r.register(
            "cluster_clients_connected",
            "Clients connected to the cluster's live nodes, as each last said",
            gauge(alive.map(|n| n.figures.clients_connected).sum()),
        );
        r.register(
            "cluster_takeovers",
            "Sessions dropped here because their client connected on another node since",
            counter(stats.cluster_takeovers),
        );
    }
    r.register("sessions", "Sessions held now, connected or not", gauge(gauges.sessions as u64));
    r.register(
        "sessions_expired",
        "Sessions discarded when their expiry interval passed",
        counter(stats.sessions_expired),
    );
    r.register("subscriptions", "Subscriptions now", gauge(gauges.subscriptions as u64));
    r.register("retained_messages", "Retained messages now", gauge(gauges.retained as u64));
    r.register(
        "inflight_messages",
        "Messages sent at QoS 1 or 2 and not yet acknowledged",
        gauge(gauges.inflight as u64),
    );
    r.register("queued_messages", "Messages queued for sessions", gauge(gauges.queued as u64));
    r.register(
        "slow_consumers",
        "Subscribers treated as slow consumers",
        counter(stats.slow_consumers),
    );
    r.register_with_unit(
        "uptime",
        "Time since the broker started",
        Unit::Seconds,
        gauge(uptime.as_secs()),
    );
    if let Some(s) = &snap.store {
        r.register("store_commits", "Store transactions committed", counter(s.commits));
        r.register("store_fsyncs", "Store commits forced to disk", counter(s.fsyncs));
        r.register_with_unit(
            "store_commit_duration",
            "Time a store commit took",
            Unit::Seconds,
            CommitLatency(s.clone()),
        );
    }
    if !stats.bridges.is_empty() {
        let up = Family::<Labels, Gauge>::default();
        let queued = Family::<Labels, Gauge>::default();
        let inflight = Family::<Labels, Gauge>::default();
        let sent = Family::<Labels, Counter>::default();
        let received = Family::<Labels, Counter>::default();
        let dropped = Family::<Labels, Counter>::default();
        for (name, b) in &stats.bridges {
            let labels: Labels = vec![("bridge", name.clone())];
            set(&up.get_or_create(&labels), u64::from(b.connected));
            set(&queued.get_or_create(&labels), b.queued as u64);
            set(&inflight.get_or_create(&labels), b.inflight as u64);
            sent.get_or_create(&labels).inc_by(b.sent);
            received.get_or_create(&labels).inc_by(b.received);
            dropped.get_or_create(&labels).inc_by(b.dropped);
        }
        r.register("bridge_connected", "Whether each bridge is connected (1) or not (0)", up);
        r.register("bridge_queued_messages", "Messages waiting in each bridge", queued);
        r.register(
            "bridge_inflight_messages",
            "Messages each bridge sent and the remote broker has not acknowledged",
            inflight,
        );
        r.register("bridge_sent_messages", "Messages each bridge sent", sent);
        r.register("bridge_received_messages", "Messages each bridge received", received);
        r.register("bridge_dropped_messages", "Messages each bridge dropped", dropped);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).map_err(|e| e.to_string())?;
    Ok(text)
}

/// The JSON of `/api/v1/stats`.
pub(super) fn stats_json(snap: &Snapshot<'_>) -> Value {
    let (stats, gauges) = (&snap.stats, &snap.gauges);
    let listener_list: Vec<Value> = snap
        .listener_rows()
        .map(|(_, l, s)| {
            json!({
                "address": l.map(|l| l.addr.to_string()),
                "kind": l.map(|l| l.kind),
                "connections": s.open,
                "accepted": s.accepted,
            })
        })
        .collect();
    let versions: serde_json::Map<String, Value> = VERSIONS
        .iter()
        .zip(&stats.versions)
        .map(|(v, s)| {
            ((*v).to_string(), json!({ "connected": s.connected, "connects": s.connects }))
        })
        .collect();
    let mut body = json!({
        "uptime_seconds": snap.uptime.as_secs(),
        "gauges": {
            "connections": gauges.connections,
            "clients_connected": gauges.clients_connected,
            "sessions": gauges.sessions,
            "subscriptions": gauges.subscriptions,
            "retained": gauges.retained,
            "queued": gauges.queued,
            "inflight": gauges.inflight,
        },
        "counters": {
            "connections_accepted": stats.connections_accepted,
            "connections_refused": stats.connections_refused,
            "clients_connected_total": stats.clients_connected_total,
            "auth_failures": stats.auth_failures,
            "transport_refused": stats.transport_refused,
            "connect_timeouts": stats.connect_timeouts,
            "messages_received": stats.messages_received,
            "messages_sent": stats.messages_sent,
            "bytes_received": stats.bytes_received,
            "bytes_sent": stats.bytes_sent,
            "messages_received_by_qos": stats.received_by_qos,
            "messages_sent_by_qos": stats.sent_by_qos,
            "payload_bytes_received_by_qos": stats.payload_bytes_received_by_qos,
            "payload_bytes_sent_by_qos": stats.payload_bytes_sent_by_qos,
            "dropped_queue_full": stats.dropped_queue_full,
            "dropped_slow_consumer": stats.dropped_slow_consumer,
            "dropped_expired": stats.dropped_expired,
            "dropped_too_large": stats.dropped_too_large,
            "dropped_not_authorized": stats.dropped_not_authorized,
            "dropped_no_member": stats.dropped_no_member,
            "publish_denied": stats.publish_denied,
            "sessions_expired": stats.sessions_expired,
            "slow_consumers": stats.slow_consumers,
            "acks_delayed": stats.acks_delayed,
            "inputs_paused": stats.inputs_paused,
            "shared_redelivered": stats.shared_redelivered,
            "cluster_forwarded": stats.cluster_forwarded,
            "cluster_received": stats.cluster_received,
            "cluster_takeovers": stats.cluster_takeovers,
        },
        "listeners": listener_list,
        "protocols": versions,
        "bridges": stats.bridges.iter().map(|(name, b)| json!({
            "name": name,
            "connected": b.connected,
            "queued": b.queued,
            "inflight": b.inflight,
            "sent": b.sent,
            "received": b.received,
            "dropped": b.dropped,
        })).collect::<Vec<Value>>(),
        "store": snap.store.as_ref().map(|s| json!({
            "commits": s.commits,
            "fsyncs": s.fsyncs,
            "commit_seconds_total": s.latency_us as f64 / 1e6,
        })),
    });
    // A cluster node's link to its backplane, 1 or 0; nothing for a broker on its own.
    if let (Some(up), Some(g)) = (stats.cluster_connected, body["gauges"].as_object_mut()) {
        g.insert("cluster_connected".into(), json!(u8::from(up)));
    }
    if let (Some(up), Some(o)) = (stats.cluster_connected, body.as_object_mut()) {
        let nodes: Vec<Value> = stats
            .cluster_nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "alive": n.alive,
                    "clients_connected": n.figures.clients_connected,
                    "sessions": n.figures.sessions,
                    "subscriptions": n.figures.subscriptions,
                    "messages_received": n.figures.messages_received,
                    "messages_sent": n.figures.messages_sent,
                })
            })
            .collect();
        o.insert("cluster".into(), json!({ "connected": up, "nodes": nodes }));
    }
    body
}
