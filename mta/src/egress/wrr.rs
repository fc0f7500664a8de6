//! Weighted round robin over a pool's sources (spec §4.3): interleaved, so
//! weights 2 and 1 give B, A, A, B, A, A, ... rather than bursts.

/// The position in a weighted round robin: one per scheduled queue, over its
/// pool's source weights.
#[derive(Default, Debug)]
pub struct Wrr {
    idx: usize,
    cw: i64,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Wrr {
    /// The next entry, or `None` when every weight is zero.
    pub fn next(&mut self, weights: &[u32]) -> Option<usize> {
        let max = *weights.iter().max()? as i64;
        if max == 0 {
            return None;
        }
        if weights.len() == 1 {
            return Some(0);
        }
        let g = weights.iter().copied().fold(0, gcd) as i64;
        loop {
            self.idx = (self.idx + 1) % weights.len();
            if self.idx == 0 {
                self.cw -= g;
                if self.cw <= 0 {
                    self.cw = max;
                }
            }
            // a zero weight is never picked, not even in the first round,
            // before the current weight has been set
            let w = weights[self.idx];
            if w > 0 && i64::from(w) >= self.cw {
                return Some(self.idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let mut w = Wrr::default();
        (0..n).map(|_| w.next(weights).unwrap()).collect()
    }

    #[test]
    fn weights_interleave_as_the_spec_says() {
        // A=2, B=1 yields B, A, A, B, A, A, ...
        assert_eq!(picks(&[2, 1], 9), vec![1, 0, 0, 1, 0, 0, 1, 0, 0]);
        assert_eq!(picks(&[1, 1, 1], 6), vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn shares_follow_the_weights_exactly() {
        for (weights, n) in [
            (&[2u32, 1][..], 300),
            (&[5, 3, 2][..], 1000),
            (&[4, 6][..], 500),
        ] {
            let mut counts = vec![0u32; weights.len()];
            for i in picks(weights, n) {
                counts[i] += 1;
            }
            let total: u32 = weights.iter().sum();
            let expected: Vec<u32> = weights.iter().map(|w| w * n as u32 / total).collect();
            assert_eq!(counts, expected, "{weights:?}");
        }
    }

    #[test]
    fn zero_weights_are_never_picked() {
        assert_eq!(Wrr::default().next(&[0, 0]), None);
        assert_eq!(Wrr::default().next(&[]), None);
        assert_eq!(Wrr::default().next(&[5]), Some(0));
        assert!(picks(&[0, 3, 0], 10).iter().all(|&i| i == 1));
    }
}
