//! The process's allocator settings (glibc's malloc), made by the `pipeline` binary at start.

/// Keeps freed memory in the process instead of returning large blocks to the OS after every
/// training step: with glibc's defaults each step's tensors are fresh mmaps, and the page faults
/// of re-touching them cost about a fifth of a small CNN's step (measured on this project's
/// 2-core machines with candle 0.11). Call it first thing in `main`, before any thread starts,
/// so that every allocation sees the thresholds. Does nothing outside Linux with glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any thread starts.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
