//! Detect stage: reads per-cluster statistics after each assignment and decides, in event time,
//! whether a cluster looks like coordinated abuse. Produces alert state changes, never text.

pub mod coordinated;
pub mod lifecycle;
pub mod robust;

pub use coordinated::CoordinatedDetector;
