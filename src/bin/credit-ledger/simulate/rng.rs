//! A small deterministic pseudo-random generator (SplitMix64), so `--seed` reproduces a run.

/// SplitMix64: tiny, fast, and good enough to pick features and outcomes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for item `index` of a run with `seed`: each generation draws from its own
    /// stream, so the outcome of a generation does not depend on threads or batch sizes.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in [0, n); n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_roughly_uniform() {
        let a: Vec<u64> = (0..5).map(|i| Rng::for_item(42, i).next_u64()).collect();
        let b: Vec<u64> = (0..5).map(|i| Rng::for_item(42, i).next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(
            Rng::for_item(42, 0).next_u64(),
            Rng::for_item(43, 0).next_u64()
        );
        let mut r = Rng::for_item(7, 7);
        let mut buckets = [0u32; 5];
        for _ in 0..50_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            buckets[r.below(5) as usize] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "{buckets:?}");
        }
    }
}
