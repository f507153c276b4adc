//! Time as the core sees it: only what the caller passes in.
//!
//! The core never reads a clock. Every method that can arm a timer takes `now: Instant`, and
//! every deadline it hands back is an `Instant` on the same scale. A runtime maps its monotonic
//! clock onto this type (nanoseconds since the runtime started, say); a simulation advances a
//! virtual clock by hand. Same inputs, same outputs.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};

pub use core::time::Duration;

/// A point in time: nanoseconds since an epoch the caller chooses. Arithmetic saturates
/// instead of overflowing, so no input can make the core panic.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The epoch.
    pub const ZERO: Self = Self(0);
    /// The farthest representable instant: a deadline that never comes.
    pub const MAX: Self = Self(u64::MAX);

    /// The instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// The instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// The instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:?}", Duration::from_nanos(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(Instant::ZERO - Instant::from_secs(5), Duration::ZERO);
        assert_eq!(Instant::from_secs(u64::MAX), Instant::MAX);
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::MAX);
    }

    #[test]
    fn units_agree() {
        assert_eq!(Instant::from_secs(2), Instant::from_millis(2000));
        assert_eq!(Instant::from_millis(3), Instant::from_nanos(3_000_000));
        let t = Instant::from_secs(10) + Duration::from_millis(1500);
        assert_eq!(t - Instant::from_secs(10), Duration::from_millis(1500));
        assert_eq!(alloc::format!("{t:?}"), "t+11.5s");
    }
}

/// An instant or none, in 8 bytes where `Option<Instant>` takes 16: the deadlines the broker
/// keeps in every connection and session record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MaybeAt(u64);

impl MaybeAt {
    /// None.
    pub(crate) const NONE: Self = Self(0);

    pub(crate) fn get(self) -> Option<Instant> {
        self.0.checked_sub(1).map(Instant::from_nanos)
    }

    pub(crate) fn take(&mut self) -> Option<Instant> {
        core::mem::take(self).get()
    }

    pub(crate) fn is_some_and(self, f: impl FnOnce(Instant) -> bool) -> bool {
        self.get().is_some_and(f)
    }

    /// Holds `at` and returns the instant it holds, which is `at` except for `Instant::MAX`:
    /// what a caller files elsewhere under this deadline (a timer set, a heap) must be the
    /// returned instant, so that the two always match.
    pub(crate) fn set(&mut self, at: Instant) -> Instant {
        *self = Self::from(Some(at));
        self.get().unwrap_or(at)
    }
}

impl From<Option<Instant>> for MaybeAt {
    /// (`Instant::MAX` becomes the nanosecond before it: 584 years from the epoch.)
    fn from(at: Option<Instant>) -> Self {
        at.map_or(Self::NONE, |at| Self(at.as_nanos().saturating_add(1).max(1)))
    }
}

#[cfg(test)]
mod maybe_at_tests {
    use super::*;

    #[test]
    fn holds_every_instant_and_none() {
        for at in [Instant::ZERO, Instant::from_nanos(1), Instant::from_secs(3600)] {
            let mut m = MaybeAt::from(Some(at));
            assert_eq!(m.get(), Some(at));
            assert!(m.is_some_and(|t| t == at));
            assert_eq!(m.take(), Some(at));
            assert_eq!(m, MaybeAt::NONE);
        }
        assert_eq!(MaybeAt::from(None).get(), None);
        assert_eq!(MaybeAt::default().get(), None);
        // The one instant it cannot hold exactly is the last one, 584 years on.
        assert_eq!(
            MaybeAt::from(Some(Instant::MAX)).get(),
            Some(Instant::from_nanos(u64::MAX - 1))
        );
        // `set` returns what it holds, so that other records can file the same instant.
        let mut m = MaybeAt::NONE;
        assert_eq!(m.set(Instant::MAX), Instant::from_nanos(u64::MAX - 1));
        assert_eq!(m.get(), Some(Instant::from_nanos(u64::MAX - 1)));
        assert_eq!(m.set(Instant::from_secs(5)), Instant::from_secs(5));
    }
}
