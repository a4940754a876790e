//! The memory allocator's settings, so an operator holding 10,000 accounts gives back what a
//! burst (a List Accounts of every account, a watch relist) took.
//!
//! glibc's malloc defaults suit short-lived programs, not a long-running one on many threads:
//! it opens up to 8 arenas per core, each keeping its own freed memory, and after the first
//! large block is freed it raises the size above which blocks are mapped on their own (and
//! unmapped when freed) from 128 KiB up to 32 MiB, so the response bodies of large lists
//! land in the arenas and fragment them. Measured with `N=10000 LIMITS=1000 make bench` (see
//! `docs/performance.md`). The static musl build of the image has its own allocator, which
//! returns freed pages without tuning.

/// Two arenas (one per core of a typical operator pod) and a fixed 128 KiB mmap threshold.
/// `MALLOC_ARENA_MAX` and `GLIBC_TUNABLES` in the environment still win: they are read
/// before `main`, and only values not set there are changed here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    let set_by_env = |name: &str| std::env::var_os(name).is_some();
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    // SAFETY: `mallopt` only changes malloc's parameters; called once, before other threads.
    unsafe {
        if !set_by_env("MALLOC_ARENA_MAX") && !tunables.contains("arena_max") {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if !set_by_env("MALLOC_MMAP_THRESHOLD_") && !tunables.contains("mmap_threshold") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

/// Nothing to tune outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// Every 10 s, hands the free pages inside malloc's arenas back to the kernel
/// (`malloc_trim`): glibc on its own returns only the free memory at the top of a heap, so
/// the holes left by replaced watch objects and dropped account lists would stay resident.
/// Runs off the async workers; its duration is logged at debug level.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let started = std::time::Instant::now();
        // SAFETY: `malloc_trim` is thread-safe; it only releases free memory.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        // SAFETY: `mallinfo2` only reads malloc's counters.
        let heap = unsafe { libc::mallinfo2() };
        tracing::debug!(
            took = ?started.elapsed(),
            in_use = heap.uordblks,
            free = heap.fordblks,
            mapped = heap.hblkhd,
            "returned free heap pages to the kernel (bytes allocated, free in the arenas, in blocks mapped on their own)"
        );
    }
}

/// Nothing to trim outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub async fn trim_periodically() {}
