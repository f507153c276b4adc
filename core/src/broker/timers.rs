//! Keep-alive and connect deadlines per connection, expiry and will delay per session: one
//! ordered timer set, so that `poll_timeout` is a peek.

use super::*;

impl Broker {
    pub(super) fn arm_conn_timer(&mut self, index: u32) {
        let timeout = self.config.connect_timeout;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let generation = slot.generation;
        let Some(c) = slot.conn.as_mut() else {
            return;
        };
        let Some(deadline) = c.deadline(timeout) else {
            return;
        };
        // A later deadline (keep-alive pushed back by traffic) leaves the armed one in place:
        // it is checked again when it fires. An earlier one replaces it.
        if let Some(old) = c.timer_at.get() {
            if old <= deadline {
                return;
            }
            self.timers.remove(&(old, Timer::Conn { index, generation }));
        }
        let deadline = c.timer_at.set(deadline);
        self.timers.insert((deadline, Timer::Conn { index, generation }));
    }

    /// Disarms a connection's timer (its phase changed).
    pub(super) fn clear_conn_timer(&mut self, index: u32) {
        let generation = self.slots[index as usize].generation;
        if let Some(at) = self.slot_conn(index).and_then(|c| c.timer_at.take()) {
            self.timers.remove(&(at, Timer::Conn { index, generation }));
        }
    }

    pub(super) fn arm_session_timer(&mut self, index: u32) {
        let max_ack_delay = self.config.max_ack_delay;
        let Some(s) = self.sessions.get_mut(index as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(deadline) = s.deadline(max_ack_delay) else {
            return;
        };
        let serial = s.serial;
        if let Some(old) = s.timer_at.get() {
            if old <= deadline {
                return;
            }
            self.timers.remove(&(old, Timer::Session { index, serial }));
        }
        let deadline = s.timer_at.set(deadline);
        self.timers.insert((deadline, Timer::Session { index, serial }));
    }

    /// Disarms a session's timer (it reconnected or ended).
    pub(super) fn clear_session_timer(&mut self, index: u32) {
        if let Some(s) = self.session_mut(index)
            && let Some(at) = s.timer_at.take()
        {
            let serial = s.serial;
            self.timers.remove(&(at, Timer::Session { index, serial }));
        }
    }

    pub(super) fn conn_timer(&mut self, now: Instant, index: u32, generation: u32, at: Instant) {
        let timeout = self.config.connect_timeout;
        if self.slots.get(index as usize).is_none_or(|s| s.generation != generation) {
            return;
        }
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if c.timer_at.get() != Some(at) {
            return; // superseded by an earlier deadline
        }
        c.timer_at = MaybeAt::NONE;
        if c.paused > 0 {
            // Its input waits because of the broker, not the client: it is not idle.
            c.last_recv = now;
        }
        let Some(deadline) = c.deadline(timeout) else {
            return;
        };
        if deadline > now {
            self.arm_conn_timer(index);
            return;
        }
        match c.phase {
            Phase::AwaitConnect | Phase::Authenticating => {
                self.stats.connect_timeouts += 1;
                let code = ReasonCode::MaximumConnectTime;
                self.close(now, index, CloseReason::Server(code), None, false);
            }
            _ => {
                // [MQTT-3.1.2-22] (3.1.1: [MQTT-3.1.2-24]).
                let code = ReasonCode::KeepAliveTimeout;
                self.close(now, index, CloseReason::Server(code), Some(code), true);
            }
        }
    }

    pub(super) fn session_timer(&mut self, now: Instant, index: u32, serial: u64, at: Instant) {
        let delay = self.config.max_ack_delay;
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.serial != serial || s.timer_at.get() != Some(at) {
            return;
        }
        s.timer_at = MaybeAt::NONE;
        let flow = s.flow.as_deref();
        let held_acks = flow.and_then(|f| f.parked.front()).is_some_and(|p| p.since + delay <= now);
        let held_publishers =
            flow.and_then(|f| f.throttled_since).is_some_and(|t| t + delay <= now);
        if held_acks || held_publishers {
            // Held publishers back too long: a slow consumer.
            s.slow = true;
            self.stats.slow_consumers += 1;
            self.release_parked(index);
            self.release_throttle(index);
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.will_at.is_some_and(|t| t <= now) {
            s.will_at = MaybeAt::NONE;
            if let Some(will) = s.will.take() {
                self.log_session(index, |client_id| PersistOp::WillCleared { client_id });
                self.publish_will(now, index, will);
            }
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.conn.is_none() && s.expires_at.is_some_and(|t| t <= now) {
            let client_id = s.client_id.clone();
            self.stats.sessions_expired += 1;
            self.end_session(now, index);
            self.events.push_back(Event::SessionExpired { client_id });
        } else {
            self.arm_session_timer(index);
        }
    }
}
