//! The `clusterwatch` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// jemalloc, not glibc's malloc: under a steady load glibc's fragmentation grew RSS without
/// bound while the live heap stayed level (see `clusterwatch::heap`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    clusterwatch::cli::main().await
}
