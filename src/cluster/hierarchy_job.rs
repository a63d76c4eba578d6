//! A hierarchy rebuild that runs beside the cluster stage instead of stopping it.
//!
//! Regrouping thousands of micro-clusters into topics and domains takes seconds, and the cluster
//! stage is a single thread: run inline, every event queued behind a rebuild waited that long, and
//! the rebuild set the p99 event→cluster latency (`bench soak` measured a 7 s stall). So the inputs
//! are copied out at the rebuild point (event count N) and built on a thread of their own, and the
//! result is applied at the fixed later count N + `apply_after_events`, waiting there only if it
//! is not finished yet.
//!
//! Both points are event counts, and the build is a function of the inputs at N alone, so a
//! replay applies the same hierarchy at the same event whatever the machine's speed. A snapshot
//! cut between the two points carries the finished build and its application point
//! ([`PendingHierarchy::to_snapshot`]), so a restart applies it at the same event too.

use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::hierarchy::{HierarchyBuild, HierarchyInputs};

/// A rebuild started at one event count, to be applied at `apply_at`.
pub struct PendingHierarchy {
    apply_at: u64,
    /// Behind a lock so that a snapshot (which sees the state read-only) can collect a finished
    /// build; the cluster stage is its only user, so the lock is never contended.
    build: Mutex<Build>,
}

enum Build {
    /// The thread's result is `Err` only if the inputs never arrived, which `start` rules out.
    Running(JoinHandle<Result<HierarchyBuild, std::sync::mpsc::RecvError>>),
    Ready(HierarchyBuild),
    /// Only while a `Running` build is being joined.
    Taken,
}

/// A pending rebuild as a snapshot stores it: the finished build and when to apply it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingHierarchySnapshot {
    pub apply_at: u64,
    pub build: HierarchyBuild,
}

impl PendingHierarchy {
    /// Starts building `inputs` on a new thread, to be applied at event count `apply_at`.
    pub fn start(inputs: HierarchyInputs, apply_at: u64) -> Self {
        // The inputs go over a channel rather than into the closure, so that they are still
        // here if no thread can be had.
        let (send, receive) = std::sync::mpsc::sync_channel::<HierarchyInputs>(1);
        let spawned = std::thread::Builder::new()
            .name("hierarchy".into())
            .spawn(move || receive.recv().map(HierarchyInputs::build));
        let build = match spawned {
            Ok(handle) => match send.send(inputs) {
                Ok(()) => Build::Running(handle),
                Err(std::sync::mpsc::SendError(inputs)) => Build::Ready(inputs.build()),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot start a hierarchy thread; rebuilding inline");
                Build::Ready(inputs.build())
            }
        };
        PendingHierarchy {
            apply_at,
            build: Mutex::new(build),
        }
    }

    /// A build restored from a snapshot.
    pub fn restored(snapshot: PendingHierarchySnapshot) -> Self {
        PendingHierarchy {
            apply_at: snapshot.apply_at,
            build: Mutex::new(Build::Ready(snapshot.build)),
        }
    }

    /// The event count at which the build is applied.
    pub fn apply_at(&self) -> u64 {
        self.apply_at
    }

    /// Whether the build is still running (a snapshot would have to wait for it).
    pub fn in_flight(&self) -> bool {
        matches!(&*self.lock(), Build::Running(handle) if !handle.is_finished())
    }

    /// The finished build, waiting for it if needed.
    pub fn finish(self) -> HierarchyBuild {
        self.settle();
        match self
            .build
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Build::Ready(build) => build,
            Build::Running(_) | Build::Taken => unreachable!("settled above"),
        }
    }

    /// The build and its application point for a snapshot, waiting for the build if needed.
    pub fn to_snapshot(&self) -> PendingHierarchySnapshot {
        self.settle();
        match &*self.lock() {
            Build::Ready(build) => PendingHierarchySnapshot {
                apply_at: self.apply_at,
                build: build.clone(),
            },
            Build::Running(_) | Build::Taken => unreachable!("settled above"),
        }
    }

    /// Joins a running build. A panic in the build is re-raised here, as it would have been
    /// had the rebuild run inline.
    fn settle(&self) {
        let mut build = self.lock();
        if let Build::Running(_) = &*build {
            let Build::Running(handle) = std::mem::replace(&mut *build, Build::Taken) else {
                unreachable!("matched above")
            };
            let finished = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                .expect("start sends the inputs before keeping the thread");
            *build = Build::Ready(finished);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Build> {
        self.build.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
