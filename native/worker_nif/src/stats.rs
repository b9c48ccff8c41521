//! `Worker.Runtime.stats/0`: invocations in flight, and how long guests hold
//! the thread that polls them: a cumulative histogram
//! of slice lengths, for `Worker.Runtime.stats/0` and the metrics page
//! (`worker_runtime_slice_seconds`). Reading it changes nothing, so any
//! number of readers see the same figures.
//!
//! Every slice is counted, so the counters are sharded: each thread writes
//! the shard it drew, and the shards sit on cache lines of their own, so
//! schedulers do not fight over one line. A read sums the shards.

use rustler::NifMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds of the buckets, in microseconds; a last bucket, `+Inf`,
/// holds the rest. 100 µs is the default tick; 2 ms a heavy slice.
pub const BOUNDS_US: [u64; 13] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

const BUCKETS: usize = BOUNDS_US.len() + 1;
const SHARDS: usize = 16;

#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }
}

static SHARD_LIST: [Shard; SHARDS] = [const { Shard::new() }; SHARDS];

fn shard() -> &'static Shard {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    &SHARD_LIST[INDEX.with(|i| *i)]
}

/// Counts one slice of `us` microseconds.
pub fn record_slice(us: u64) {
    let shard = shard();
    let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
    shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    shard.sum_us.fetch_add(us, Ordering::Relaxed);
}

/// What `Worker.Native.runtime_stats/0` returns: a map with atom keys.
#[derive(NifMap)]
pub struct RuntimeStats {
    /// Invocations alive right now, in any process.
    in_flight: usize,
    /// The buckets' upper bounds, in microseconds.
    slice_bounds_us: Vec<u64>,
    /// Slices at most each bound long, cumulative: one per bound.
    slice_buckets: Vec<u64>,
    /// All slices (the `+Inf` bucket).
    slice_count: u64,
    /// Their total length, in microseconds.
    slice_sum_us: u64,
}

/// Live figures of the native runtime; see `Worker.Runtime.stats/0`.
#[rustler::nif]
fn runtime_stats() -> RuntimeStats {
    let mut counts = [0u64; BUCKETS];
    let mut sum_us = 0u64;
    for shard in &SHARD_LIST {
        for (count, bucket) in counts.iter_mut().zip(&shard.buckets) {
            *count += bucket.load(Ordering::Relaxed);
        }
        sum_us += shard.sum_us.load(Ordering::Relaxed);
    }
    let mut total = 0;
    let cumulative: Vec<u64> = counts
        .iter()
        .map(|count| {
            total += count;
            total
        })
        .collect();
    RuntimeStats {
        in_flight: worker_runtime::engine::runtime().map_or(0, |rt| rt.in_flight()),
        slice_bounds_us: BOUNDS_US.to_vec(),
        slice_buckets: cumulative[..BOUNDS_US.len()].to_vec(),
        slice_count: total,
        slice_sum_us: sum_us,
    }
}
