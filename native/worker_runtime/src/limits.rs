//! What an invocation may use: its [`Limits`], the store's [`Limiter`],
//! the pool's per-component counts, and a function's log-line rate
//! ([`LineBudget`]). The runtime's other caps are beside what they bound
//! (a host's, an HTTP front end's); these are the ones the embedder sets
//! or that more than one kind of function shares.

use crate::policy::Policy;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Per-invocation limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time for the whole invocation, host calls included.
    pub timeout: Duration,
    /// Linear memory, in bytes.
    pub max_memory: usize,
    /// Input JSON text.
    pub max_input_bytes: usize,
    /// Text passed to `__insert_response` or `__insert_error`.
    pub max_response_bytes: usize,
    /// Outbound HTTP requests.
    pub max_http_requests: u32,
    /// Each of a request's URL, headers and body.
    pub max_http_request_bytes: usize,
    /// A response body.
    pub max_http_body_bytes: usize,
    /// Hosts allowed even though their addresses are not public; `None`
    /// for none (no shared reference count to touch on every invocation).
    pub http_allow: Option<Arc<Policy>>,
    pub log: LogLimits,
    /// The function's guest log line rate, shared by all its invocations;
    /// `None` for no rate limit (see [`LineBudget`]).
    pub log_budget: Option<Arc<LineBudget>>,
}

/// The input cap of every invocation: 4 MiB of JSON text.
pub const MAX_INPUT_BYTES: usize = 4 << 20;

impl Limits {
    /// Limits with `timeout` and `max_memory` (which the embedder chooses:
    /// the worker's are `FL_INVOKE_TIMEOUT_MS` and `FL_MAX_MEMORY_MB`),
    /// and the runtime's own caps for everything else, no allow-list and no
    /// log rate.
    pub fn new(timeout: Duration, max_memory: usize) -> Self {
        Limits {
            timeout,
            max_memory,
            max_input_bytes: MAX_INPUT_BYTES,
            max_response_bytes: 4 << 20,
            max_http_requests: 20,
            max_http_request_bytes: 4 << 20,
            max_http_body_bytes: 8 << 20,
            http_allow: None,
            log: LogLimits::default(),
            log_budget: None,
        }
    }
}

/// The most bytes one WASI `random_get` may ask for; more traps.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Core instances, memories and tables one component may have (the pool's
/// per-component limits, and its store's). The memory limit of an
/// invocation bounds all its memories together.
pub const COMPONENT_CORE_INSTANCES: u32 = 16;
pub const COMPONENT_MEMORIES: u32 = 2;
pub const COMPONENT_TABLES: u32 = 4;

#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Lines kept per invocation.
    pub max_lines: usize,
    /// Bytes kept per invocation, over all lines, counted after escaping.
    pub max_bytes: usize,
    /// Longest single line, in bytes before escaping; longer ones are cut.
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_lines: 1_000,
            max_bytes: 1 << 20,
            max_line_bytes: 16 << 10,
        }
    }
}

/// The store's limits: how many instances, memories and tables, and
/// `max_memory` bytes of linear memory across all its memories (the linear
/// memory granted so far is counted).
pub struct Limiter {
    limits: StoreLimits,
    max_memory: usize,
    granted: usize,
}

impl Limiter {
    /// A core module's: one instance, memory and table.
    pub fn module(max_memory: usize) -> Limiter {
        Limiter::new(max_memory, 1, 1, 1)
    }

    /// A component's: the pool's per-component limits.
    pub fn component(max_memory: usize) -> Limiter {
        Limiter::new(
            max_memory,
            COMPONENT_CORE_INSTANCES,
            COMPONENT_MEMORIES,
            COMPONENT_TABLES,
        )
    }

    /// Bytes of linear memory granted so far, over all memories.
    pub fn granted(&self) -> usize {
        self.granted
    }

    fn new(max_memory: usize, instances: u32, memories: u32, tables: u32) -> Limiter {
        Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .instances(instances as usize)
                .memories(memories as usize)
                .tables(tables as usize)
                .build(),
            max_memory,
            granted: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        // all memories together, not each on its own
        if self.granted.saturating_add(more) > self.max_memory {
            return Ok(false);
        }
        let grows = self.limits.memory_growing(current, desired, maximum)?;
        if grows {
            self.granted += more;
        }
        Ok(grows)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A per-function rate limit on guest log lines, shared by all of the
/// function's invocations: a token bucket refilled continuously at
/// `lines_per_second`, holding at most one second's worth.
///
/// Lock-free (GCRA, "virtual scheduling"): one atomic holds the clock
/// reading, in nanoseconds since `origin`, at which the bucket would be
/// full again. A line is allowed when taking it leaves that time at most one
/// second ahead of now. An allowed line costs a clock read, a load and a
/// compare-exchange; a refused one a clock read and a load, and writes
/// nothing shared.
#[derive(Debug)]
pub struct LineBudget {
    origin: Instant,
    /// Nanoseconds of refill per line; 0 for unlimited.
    interval: u64,
    /// `interval` times the burst, `lines_per_second` lines.
    burst: u64,
    /// When the bucket is full again, in nanoseconds since `origin`.
    full_at: AtomicU64,
}

impl LineBudget {
    /// A full bucket of `lines_per_second` lines. `0` is unlimited, and so,
    /// in effect, is any rate over 10^9 lines a second (rates that don't
    /// divide a second evenly refill a little faster than asked, never
    /// slower).
    pub fn new(lines_per_second: u32) -> Arc<LineBudget> {
        let interval = 1_000_000_000u64
            .checked_div(u64::from(lines_per_second))
            .unwrap_or(0);
        Arc::new(LineBudget {
            origin: Instant::now(),
            interval,
            burst: interval * u64::from(lines_per_second),
            full_at: AtomicU64::new(0),
        })
    }

    /// Takes one line from the bucket; `false` if it is empty.
    pub fn take(&self) -> bool {
        if self.interval == 0 {
            return true;
        }
        let now = self.now();
        let limit = now.saturating_add(self.burst);
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(self.interval);
            if next > limit {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => full_at = actual,
            }
        }
    }

    /// Returns a line taken but not kept after all.
    pub(crate) fn give_back(&self) {
        if self.interval == 0 {
            return;
        }
        let _ = self
            .full_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |full_at| {
                Some(full_at.saturating_sub(self.interval))
            });
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_limited_over_all_memories_together() {
        let mut limiter = Limiter::component(10 << 20);
        // two memories of 6 MiB each: the second does not fit
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert_eq!(limiter.granted(), 10 << 20);
        // growing counts only what is added
        let mut limiter = Limiter::module(10 << 20);
        assert!(limiter.memory_growing(0, 8 << 20, None).unwrap());
        assert!(limiter.memory_growing(8 << 20, 10 << 20, None).unwrap());
        assert!(
            !limiter
                .memory_growing(10 << 20, (10 << 20) + 65536, None)
                .unwrap()
        );
    }

    #[test]
    fn a_module_gets_one_of_each_and_a_component_the_pool_counts() {
        let module = Limiter::module(1 << 20);
        assert_eq!(
            (module.instances(), module.memories(), module.tables()),
            (1, 1, 1)
        );
        let component = Limiter::component(1 << 20);
        assert_eq!(
            (
                component.instances(),
                component.memories(),
                component.tables()
            ),
            (
                COMPONENT_CORE_INSTANCES as usize,
                COMPONENT_MEMORIES as usize,
                COMPONENT_TABLES as usize
            )
        );
    }

    #[test]
    fn a_zero_budget_never_refuses() {
        let budget = LineBudget::new(0);
        assert!((0..1_000_000).all(|_| budget.take()));
    }

    #[test]
    fn a_budget_refills_at_its_rate_up_to_one_second() {
        let budget = LineBudget::new(1_000);
        assert_eq!((0..5_000).filter(|_| budget.take()).count(), 1_000);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let refilled = (0..5_000).filter(|_| budget.take()).count();
        assert!((40..=200).contains(&refilled), "{refilled}");
        // Idle time past one second fills the bucket, no more.
        let small = LineBudget::new(3);
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        assert_eq!((0..100).filter(|_| small.take()).count(), 3);
    }
}
