//! A per-worker random source for the balancers that draw (power of two choices, random, tie-breaks): xorshift64*
//! in a `Cell`, so a draw is a few instructions and touches nothing shared. Not for anything secret.

use std::cell::Cell;

#[derive(Debug)]
pub struct FastRng(Cell<u64>);

impl FastRng {
    /// A generator seeded from `seed` (any value, zero included: it is mixed first).
    pub fn new(seed: u64) -> FastRng {
        FastRng(Cell::new(splitmix64(seed) | 1))
    }

    pub fn next_u64(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0), by multiply-shift: the bias is below 2^-32 for any `n` a balancer sees.
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A number in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64's finaliser: spreads nearby seeds (worker 0, 1, 2…) far apart.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_and_seeds_differ() {
        let rng = FastRng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10)] += 1;
        }
        assert!(
            counts.iter().all(|&count| (9_500..10_500).contains(&count)),
            "{counts:?}"
        );
        let unit = rng.unit();
        assert!((0.0..1.0).contains(&unit));
        assert_ne!(FastRng::new(0).next_u64(), FastRng::new(1).next_u64());
        assert_eq!(
            FastRng::new(3).next_u64(),
            FastRng::new(3).next_u64(),
            "a fixed seed repeats"
        );
    }
}
