//! The process heap: which allocator runs, what it holds, and giving freed memory back.
//!
//! With glibc's malloc a 10-minute `bench soak` at 2,000 events/s showed RSS growing by
//! 52 MiB a minute while the live heap stayed level at ~210 MiB: the freed-but-kept part grew
//! from 11 to 280 MiB. Every hierarchy rebuild copies the live clusters' vectors and summaries
//! (every 10,000 events), the snapshot is encoded every minute, and the consumer prefetches in
//! bursts; those short-lived buffers are interleaved with the slowly growing cluster state, and
//! glibc can hand back only whole free pages at a heap's top. An operator reads that as a leak,
//! and an OOM kill follows. So the binary runs on jemalloc (cargo feature `jemalloc`, on by
//! default; `main.rs` installs it, unprefixed, so librdkafka's C allocations use it too), whose
//! size-class slabs fragment far less and which decays unused pages back to the kernel: the same
//! soak under jemalloc held RSS at 255-265 MiB over its second half.
//!
//! [`HeapFigures`] reads the live heap and what the allocator keeps beyond it (jemalloc's
//! `stats.allocated` and `stats.resident`, or glibc's `mallinfo2` in a build without the
//! feature) for `/metrics`. [`HeapTrimmer`] is a housekeeping thread: every
//! `memory.trim_interval_secs` it reads RSS, and once RSS has grown by
//! `memory.trim_after_growth_mib` since the last trim it hands every unused page back (jemalloc:
//! purge all arenas; glibc: `malloc_trim(0)`, which took that soak's growth from 52 to
//! 20 MiB/min). Wall-clock, not event time: it changes no result, only what stays resident.
//!
//! Without the feature and without glibc, the figures say nothing and no trimmer starts.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When freed heap memory is handed back to the kernel (`[memory]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Seconds between looks at RSS; 0 turns trimming off. 10.
    pub trim_interval_secs: u64,
    /// Trim once RSS has grown by this many MiB since the last trim (or start). 32.
    pub trim_after_growth_mib: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            trim_interval_secs: 10,
            trim_after_growth_mib: 32,
        }
    }
}

/// Heap figures summed over every arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes in live allocations.
    pub in_use: u64,
    /// Bytes the allocator keeps beyond them: with jemalloc, resident pages not backing live
    /// allocations (dirty pages awaiting decay, metadata); with glibc, its free chunks, whether
    /// or not their pages are still resident.
    pub free: u64,
}

#[cfg(feature = "jemalloc")]
mod sys {
    use super::HeapFigures;
    use tikv_jemalloc_ctl::{epoch, stats};

    pub fn heap() -> Option<HeapFigures> {
        // jemalloc caches its statistics; advancing the epoch refreshes them.
        epoch::advance().ok()?;
        let allocated = stats::allocated::read().ok()? as u64;
        let resident = stats::resident::read().ok()? as u64;
        Some(HeapFigures {
            in_use: allocated,
            free: resident.saturating_sub(allocated),
        })
    }

    pub fn trim() -> bool {
        // `arena.<MALLCTL_ARENAS_ALL>.purge`: every arena's unused dirty pages, now.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: a void mallctl (no old or new value), named by a NUL-terminated constant.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            ) == 0
        }
    }
}

#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
mod sys {
    use super::HeapFigures;

    pub fn heap() -> Option<HeapFigures> {
        // SAFETY: `mallinfo2` takes no arguments and only reads glibc's own bookkeeping, under
        // each arena's lock; any thread may call it at any time.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapFigures {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }

    pub fn trim() -> bool {
        // SAFETY: `malloc_trim` takes a plain integer (bytes to leave at a heap's top) and
        // works under the arenas' own locks; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
}

#[cfg(all(
    not(feature = "jemalloc"),
    not(all(target_os = "linux", target_env = "gnu"))
))]
mod sys {
    use super::HeapFigures;

    pub fn heap() -> Option<HeapFigures> {
        None
    }

    pub fn trim() -> bool {
        false
    }
}

/// Resident set size from `/proc/self/statm` (pages).
#[cfg(target_os = "linux")]
fn resident_from_proc() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: `sysconf` only reads a constant of the running system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(not(target_os = "linux"))]
fn resident_from_proc() -> Option<u64> {
    None
}

impl HeapFigures {
    /// The allocator's current figures; `None` where it cannot say.
    pub fn read() -> Option<Self> {
        sys::heap()
    }
}

/// Hands every whole free page back to the kernel. True when the allocator reports that it did:
/// jemalloc's purge succeeded, or glibc released some memory.
pub fn trim() -> bool {
    sys::trim()
}

/// The process's resident set size in bytes, where the platform says.
pub fn resident_bytes() -> Option<u64> {
    resident_from_proc()
}

/// The housekeeping thread that trims the heap as RSS grows; stops and joins when dropped.
pub struct HeapTrimmer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Counts what the trimmer did, for `/metrics`.
#[derive(Clone)]
pub struct TrimCounters {
    pub trims: prometheus::IntCounter,
    pub seconds: prometheus::Counter,
}

impl HeapTrimmer {
    /// Starts the thread per `settings`; `None` when trimming is off or the platform cannot.
    pub fn start(settings: &MemorySettings, counters: TrimCounters) -> Option<Self> {
        if settings.trim_interval_secs == 0 {
            return None;
        }
        Self::start_with(
            Duration::from_secs(settings.trim_interval_secs),
            settings.trim_after_growth_mib << 20,
            counters,
        )
    }

    /// [`HeapTrimmer::start`] with the interval and growth given directly.
    pub fn start_with(
        interval: Duration,
        growth_bytes: u64,
        counters: TrimCounters,
    ) -> Option<Self> {
        // Only where the allocator can be asked to trim (jemalloc, or glibc without it).
        HeapFigures::read()?;
        let mut baseline = resident_bytes()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("heap-trim".into())
                .spawn(move || {
                    while !wait_for_stop(&stop, interval) {
                        let Some(rss) = resident_bytes() else { break };
                        if rss < baseline {
                            baseline = rss;
                        } else if rss - baseline >= growth_bytes {
                            let started = Instant::now();
                            trim();
                            counters.trims.inc();
                            counters.seconds.inc_by(started.elapsed().as_secs_f64());
                            baseline = resident_bytes().unwrap_or(rss);
                            tracing::debug!(
                                before_mib = rss >> 20,
                                after_mib = baseline >> 20,
                                "trimmed the heap"
                            );
                        }
                    }
                })
        };
        match thread {
            Ok(handle) => Some(HeapTrimmer {
                stop,
                thread: Some(handle),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the heap trimmer; freed memory may stay resident");
                None
            }
        }
    }
}

/// Waits up to `interval`; true once a stop was asked for.
fn wait_for_stop(stop: &(Mutex<bool>, Condvar), interval: Duration) -> bool {
    let (flag, signal) = stop;
    let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = signal
        .wait_timeout_while(guard, interval, |stopped| !*stopped)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

impl Drop for HeapTrimmer {
    fn drop(&mut self) {
        let (flag, signal) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        signal.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    any(feature = "jemalloc", target_env = "gnu")
))]
mod tests {
    use super::*;

    /// The tests that measure RSS or trim must not overlap: one's trim would empty the other's
    /// fragmented heap before it is measured.
    static RSS_TESTS: Mutex<()> = Mutex::new(());

    fn counters() -> TrimCounters {
        TrimCounters {
            trims: prometheus::IntCounter::new("t", "t").unwrap(),
            seconds: prometheus::Counter::new("s", "s").unwrap(),
        }
    }

    /// Many mid-sized blocks, touched and then freed except every 64th: the survivors pin the
    /// heap's top, so only a trim can give the freed pages back.
    fn fragmented_heap(total: usize) -> Vec<Vec<u8>> {
        let blocks: Vec<Vec<u8>> = (0..total / 16384).map(|i| vec![i as u8; 16384]).collect();
        blocks.into_iter().step_by(64).collect()
    }

    #[test]
    fn live_allocations_show_up_as_in_use() {
        let before = HeapFigures::read().unwrap();
        let block = vec![7u8; 64 << 20];
        let during = HeapFigures::read().unwrap();
        assert!(
            during.in_use >= before.in_use + (32 << 20),
            "{before:?} -> {during:?}"
        );
        assert_eq!(
            block.iter().map(|&b| u64::from(b)).sum::<u64>(),
            7 * (64 << 20)
        );
    }

    #[test]
    fn the_trimmer_gives_freed_pages_back_once_rss_grew() {
        let _serial = RSS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let c = counters();
        let trimmer = HeapTrimmer::start_with(Duration::from_millis(20), 16 << 20, c.clone())
            .expect("glibc on Linux");
        let survivors = fragmented_heap(128 << 20);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.trims.get() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(trimmer);
        assert!(c.trims.get() >= 1, "no trim within 20 s");
        assert!(c.seconds.get() > 0.0);
        assert_eq!(survivors.len(), (128 << 20) / 16384 / 64);
    }

    #[test]
    fn a_trim_releases_resident_memory() {
        let _serial = RSS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let survivors = fragmented_heap(256 << 20);
        let before = resident_bytes().unwrap();
        trim();
        let after = resident_bytes().unwrap();
        // 255/256 of 256 MiB was freed; other tests' threads may allocate meanwhile, so ask
        // only for half of it.
        assert!(
            after + (100 << 20) <= before,
            "RSS {} MiB -> {} MiB",
            before >> 20,
            after >> 20
        );
        drop(survivors);
    }

    #[test]
    fn dropping_the_trimmer_stops_its_thread_promptly() {
        let trimmer =
            HeapTrimmer::start_with(Duration::from_secs(3600), 1 << 40, counters()).unwrap();
        let started = Instant::now();
        drop(trimmer);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
