//! The `$SYS` statistics topics.

use super::*;

impl Broker {
    pub(super) fn publish_sys(&mut self, now: Instant) {
        let g = self.gauges();
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let st = self.stats.clone();
        let entries = [
            ("$SYS/broker/version", self.config.version.clone()),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            ("$SYS/broker/clients/connected", g.clients_connected.to_string()),
            ("$SYS/broker/clients/total", g.sessions.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                (g.sessions - g.clients_connected.min(g.sessions)).to_string(),
            ),
            ("$SYS/broker/messages/received", st.messages_received.to_string()),
            ("$SYS/broker/messages/sent", st.messages_sent.to_string()),
            ("$SYS/broker/messages/stored", g.queued.to_string()),
            ("$SYS/broker/subscriptions/count", g.subscriptions.to_string()),
            ("$SYS/broker/retained messages/count", g.retained.to_string()),
            ("$SYS/broker/bytes/received", st.bytes_received.to_string()),
            ("$SYS/broker/bytes/sent", st.bytes_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                (st.dropped_queue_full + st.dropped_slow_consumer).to_string(),
            ),
        ];
        let mut entries: Vec<(alloc::string::String, alloc::string::String)> =
            entries.into_iter().map(|(t, v)| (t.to_string(), v)).collect();
        if let Some(up) = st.cluster_connected {
            let base = "$SYS/broker/cluster";
            entries.push((format!("{base}/connected"), u8::from(up).to_string()));
            entries.push((format!("{base}/messages/forwarded"), st.cluster_forwarded.to_string()));
            entries.push((format!("{base}/messages/received"), st.cluster_received.to_string()));
            entries.push((format!("{base}/takeovers"), st.cluster_takeovers.to_string()));
            // Cluster-wide: the nodes alive, and their sums.
            let alive: Vec<&ClusterNode> = st.cluster_nodes.iter().filter(|n| n.alive).collect();
            let sum =
                |f: fn(&NodeFigures) -> u64| -> u64 { alive.iter().map(|n| f(&n.figures)).sum() };
            entries.push((format!("{base}/nodes"), alive.len().to_string()));
            let total = [
                ("clients/connected", sum(|f| f.clients_connected)),
                ("clients/total", sum(|f| f.sessions)),
                ("subscriptions/count", sum(|f| f.subscriptions)),
                ("messages/received", sum(|f| f.messages_received)),
                ("messages/sent", sum(|f| f.messages_sent)),
            ];
            for (what, n) in total {
                entries.push((format!("{base}/total/{what}"), n.to_string()));
            }
        }
        for (name, b) in &st.bridges {
            // Mosquitto's topic for a bridge's state, then ours for its figures.
            let state = if b.connected { "1" } else { "0" };
            entries.push((format!("$SYS/broker/connection/{name}/state"), state.into()));
            let base = format!("$SYS/broker/bridges/{name}");
            entries.push((format!("{base}/connected"), state.into()));
            entries.push((format!("{base}/queued"), b.queued.to_string()));
            entries.push((format!("{base}/inflight"), b.inflight.to_string()));
            entries.push((format!("{base}/sent"), b.sent.to_string()));
            entries.push((format!("{base}/received"), b.received.to_string()));
            entries.push((format!("{base}/dropped"), b.dropped.to_string()));
        }
        for (topic, value) in entries {
            let Ok(topic) = TopicName::new(&topic) else {
                continue;
            };
            let msg = Arc::new(Message {
                topic,
                payload: Bytes::from(value.into_bytes()),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: 0,
            });
            self.store_retained(now, &msg);
            self.route(now, &msg, &mut Routing::default());
        }
    }
}
