//! The process allocator: mimalloc, tuned. Every binary that runs the proxy declares it
//! (`#[global_allocator] static GLOBAL: Allocator = ALLOCATOR;`) and calls [`tune`] first.
//!
//! mimalloc: per-request allocations (headers, frames, futures) were a tenth of the
//! instructions under the system allocator (callgrind, `bench/`). Transparent huge pages
//! are off for its arenas (`no_thp`): with them the resident set doubled.

/// The allocator type.
pub type Allocator = mimalloc::MiMalloc;
/// The allocator value, for `#[global_allocator]`.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (not among the crate's constants).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds freed memory stays committed before it goes back to the OS. mimalloc's
/// default (1 s) let 64 MiB streamed each way leave up to 51 MiB resident; 0 cost a fifth
/// more CPU per request at saturation; 100 ms keeps both near the default-free baseline.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc's options; call before any thread is started.
pub fn tune() {
    // SAFETY: sets a process-wide allocator option; mimalloc reads it at each purge
    // decision. Called at start-up, before other threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// An allocator (`A`, mimalloc by default) with a count of allocations (`alloc`,
/// `alloc_zeroed` and `realloc` calls), for the tools that measure allocations per request
/// (`waypoint-bench`, which runs this proxy in its own process); the shipped binary does
/// not use it. The count shows on `/stats/prometheus` as `waypoint_allocations_total` once
/// [`Counting::enable`] ran. Over the system allocator, tools that see only `malloc`
/// (valgrind's dhat) can say where the allocations come from.
pub struct Counting<A = Allocator>(pub A);

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Counting {
    /// Marks the count as kept (the process's allocator is a `Counting`).
    pub fn enable() {
        COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Allocations so far, when the process counts them.
pub fn allocations() -> Option<u64> {
    use std::sync::atomic::Ordering;
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| ALLOCATIONS.load(Ordering::Relaxed))
}

// SAFETY: every call is passed to mimalloc unchanged; the count is a relaxed atomic.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}
