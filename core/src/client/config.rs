//! Client configuration: timers, the reconnect policy and queue limits.

use crate::time::{Duration, Instant};

/// How the client reconnects after losing its connection.
///
/// The delay before attempt `n` (counting from 0) is
/// `min(max_delay, initial_delay * backoff_multiplier^n)`; with `jitter`, a value drawn
/// uniformly from the upper half of that, using the generator seeded by
/// [`ClientConfig::seed`]. The attempt count starts again after a connection that stayed up
/// for [`stable_after`](Self::stable_after).
#[derive(Clone, Debug, PartialEq)]
pub struct ReconnectOptions {
    /// Whether to reconnect at all.
    pub enable: bool,
    /// The first delay.
    pub initial_delay: Duration,
    /// The largest delay.
    pub max_delay: Duration,
    /// How much each failed attempt multiplies the delay by; values below 1 count as 1.
    pub backoff_multiplier: f64,
    /// Whether to randomise the delay (from the seed: deterministic).
    pub jitter: bool,
    /// How long a connection must stay up for the backoff to start again from the first delay.
    pub stable_after: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            enable: true,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            jitter: true,
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Configuration of a [`Client`](super::Client).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// How long to wait for CONNACK after sending CONNECT.
    pub connack_timeout: Duration,
    /// How long to wait for PINGRESP after sending PINGREQ before declaring the connection lost.
    pub pingresp_timeout: Duration,
    /// Reconnect policy.
    pub reconnect: ReconnectOptions,
    /// Seed for the reconnect jitter: the core draws no ambient randomness.
    pub seed: u64,
    /// Most publishes waiting to be sent (offline, or behind a full inflight window).
    pub max_queued_messages: usize,
    /// Most payload and topic bytes waiting to be sent.
    pub max_queued_bytes: usize,
    /// Whether to subscribe again to everything the application subscribed to when the server
    /// has no session for the client (Session Present 0).
    pub restore_subscriptions: bool,
    /// MQTT 5: let the client choose topic aliases itself, within the server's Topic Alias
    /// Maximum, reusing the least recently used one when all are taken. Aliases the application
    /// sets are then only used to find a publish's topic.
    pub auto_topic_alias: bool,
    /// Relay mode, for a bridge: received QoS 1 and 2 messages are acknowledged only when the
    /// application says so ([`Client::acknowledge`](super::Client::acknowledge), and
    /// [`Client::complete`](super::Client::complete) after the server's PUBREL), and a QoS 2
    /// publish waits after its PUBREC for [`Client::release`](super::Client::release) before
    /// its PUBREL goes out. What the other side of a bridge has not taken is then never
    /// acknowledged on this one.
    pub manual_acks: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connack_timeout: Duration::from_secs(30),
            pingresp_timeout: Duration::from_secs(10),
            reconnect: ReconnectOptions::default(),
            seed: 0x5eed,
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            restore_subscriptions: true,
            auto_topic_alias: false,
            manual_acks: false,
        }
    }
}

/// The reconnect schedule: pure arithmetic over the options and a seeded generator.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    attempts: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(seed: u64) -> Self {
        // xorshift must not start at 0.
        Self { attempts: 0, rng: seed | 1 }
    }

    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The next attempt's time, counted from `now`.
    pub(crate) fn next(&mut self, opts: &ReconnectOptions, now: Instant) -> Instant {
        let mult = if opts.backoff_multiplier.is_finite() && opts.backoff_multiplier > 1.0 {
            opts.backoff_multiplier
        } else {
            1.0
        };
        let max = opts.max_delay.as_secs_f64();
        let mut secs = opts.initial_delay.as_secs_f64().min(max);
        for _ in 0..self.attempts {
            secs *= mult;
            if secs >= max {
                secs = max;
                break;
            }
        }
        self.attempts = self.attempts.saturating_add(1);
        let delay = Duration::try_from_secs_f64(secs).unwrap_or(opts.max_delay);
        let delay = if opts.jitter {
            let half = delay / 2;
            let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
            let r = self.random();
            half + Duration::from_nanos(if span == 0 { 0 } else { r % (span + 1) })
        } else {
            delay
        };
        now + delay
    }

    /// xorshift64*: small, fast and good enough for jitter.
    fn random(&mut self) -> u64 {
        crate::rng::xorshift64_star(&mut self.rng)
    }
}
