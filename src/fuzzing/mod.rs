//! Property checks for the fuzz targets (`fuzz/fuzz_targets/*.rs`, run with
//! `cargo +nightly fuzz run TARGET`) and for the replay of their corpora on the stable
//! toolchain (`tests/fuzz_corpus.rs`). Each check takes arbitrary bytes and panics when a
//! property fails, so libFuzzer saves the input as a crash and the replay test fails on it.
//! The checks assert properties (split-invariance, round trips, bounds), not only "no
//! panic". Not used by the proxy itself.

mod chunked;
mod config;
mod heads;
mod metadata;
mod range;

pub use chunked::chunked;
pub use config::config;
pub use heads::{request_head, response_head};
pub use metadata::kv_metadata;
pub use range::range;

/// A property check: panics when `data` breaks a property.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the file `fuzz/fuzz_targets/NAME.rs` and the corpus
/// directory `fuzz/corpus/NAME/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("range", range),
    ("kv_metadata", kv_metadata),
    ("config", config),
];

/// A small deterministic generator (splitmix64) seeded from the input, so a check does
/// the same thing each time it sees the same bytes (libFuzzer needs reproducible runs).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn seeded(data: &[u8]) -> Rng {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
