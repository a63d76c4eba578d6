//! The heap as the allocator sees it, read at scrape time: live bytes against what the
//! allocator keeps beyond them.
//!
//! RSS alone cannot tell an SRE whether memory is held by live data (state, queues) or kept by
//! the allocator after it was freed. `clusterwatch_allocator_bytes` splits the figure: `in_use`
//! (live allocations) and `free` (kept by the allocator: resident pages beyond live data under
//! jemalloc, free chunks under glibc). With RSS beside it, a soak shows which of the two grows.
//! See `crate::heap` for the allocators; where neither can say, nothing is exported.

use crate::heap::HeapFigures;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

/// Exports [`HeapFigures`] as `clusterwatch_allocator_bytes{state}`, refreshed on each scrape.
pub struct AllocatorCollector {
    bytes: IntGaugeVec,
}

impl AllocatorCollector {
    pub fn new() -> Self {
        let bytes = IntGaugeVec::new(
            Opts::new(
                "clusterwatch_allocator_bytes",
                "Heap bytes by state, as the allocator counts them at scrape time: in_use (live \
                 allocations) and free (kept by the allocator beyond them: resident unused pages \
                 under jemalloc, free chunks under glibc).",
            ),
            &["state"],
        )
        .expect("metric definition is valid");
        AllocatorCollector { bytes }
    }
}

impl Default for AllocatorCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for AllocatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.bytes.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match HeapFigures::read() {
            Some(heap) => {
                let set = |state: &str, value: u64| {
                    self.bytes
                        .with_label_values(&[state])
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                };
                set("in_use", heap.in_use);
                set("free", heap.free);
                self.bytes.collect()
            }
            None => Vec::new(),
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

    #[test]
    fn both_states_are_exported_at_scrape_time() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(AllocatorCollector::new()))
            .unwrap();
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "clusterwatch_allocator_bytes")
            .unwrap();
        assert_eq!(family.get_metric().len(), 2);
        assert!(family
            .get_metric()
            .iter()
            .all(|m| m.get_gauge().get_value() > 0.0));
    }
}
