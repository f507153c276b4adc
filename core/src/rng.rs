//! The core's one source of randomness: a generator whose state the caller seeds (the broker's
//! and the client's configuration carry the seed), so the same inputs give the same outputs.

/// The next number of the xorshift64* generator with state `x` (which must not be 0): small,
/// fast and good enough for jitter, assigned client ids and picking shared members.
pub(crate) fn xorshift64_star(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (mut a, mut b) = (42, 42);
        let first: [u64; 3] = core::array::from_fn(|_| xorshift64_star(&mut a));
        let again: [u64; 3] = core::array::from_fn(|_| xorshift64_star(&mut b));
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
    }
}
