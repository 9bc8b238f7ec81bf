//! The bytes the tests move: reproducible pseudo-random images.

/// `len` bytes of xorshift64 output from `state`: incompressible, and the same on every run.
#[must_use]
pub fn pseudo_random(len: usize, state: u64) -> Vec<u8> {
    let mut state = state;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Bits 32..40: the low bits of xorshift64 are its weakest.
            state.to_le_bytes()[4]
        })
        .collect()
}

/// [`pseudo_random`] bytes for `seed` (any seed, zero included, gives a stream of its own).
#[must_use]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    pseudo_random(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}
