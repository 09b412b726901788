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
