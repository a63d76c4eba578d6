//! Graceful shutdown as a small explicit type.
//!
//! Only the source listens for shutdown: it stops reading and drops its channel sender, and every
//! later stage finishes when its input channel closes. That order is what lets a SIGTERM drain
//! in-flight events into cluster state and commit their offsets before the process exits 0.

use tokio::sync::watch;

/// Held by whoever may ask the process to stop (signal handler, demo driver, tests).
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    sender: std::sync::Arc<watch::Sender<bool>>,
}

/// Held by a task that must stop when asked.
#[derive(Clone, Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// A connected trigger and listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (
        ShutdownTrigger {
            sender: std::sync::Arc::new(sender),
        },
        Shutdown { receiver },
    )
}

impl ShutdownTrigger {
    /// Asks every listener to stop. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// A new listener for this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// True once shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves when shutdown is requested (immediately if it already was).
    pub async fn recv(&mut self) {
        // An error means every trigger is gone, which can only mean the process is ending.
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}

/// Triggers shutdown on the first SIGTERM or SIGINT, then returns.
pub async fn on_signal(trigger: ShutdownTrigger) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received, draining"),
                    _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    trigger.trigger();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_see_a_trigger_even_if_subscribed_late() {
        let (trigger, mut early) = channel();
        trigger.trigger();
        early.recv().await;
        let mut late = trigger.subscribe();
        late.recv().await;
        assert!(late.is_shutdown());
    }
}
