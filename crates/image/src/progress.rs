//! Pull progress: events a gRPC stream or a terminal progress bar can
//! render, delivered through a callback so the pull itself does not know
//! which. Download events are throttled (about one per percent, at most
//! one per 256 KiB) so a fast local pull does not flood a channel.

use std::fmt;
use std::sync::Arc;

use super::digest::Digest;

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest is known: what will be fetched.
    Resolved {
        /// The reference pulled.
        reference: String,
        /// The image manifest's digest.
        manifest_digest: Digest,
        /// Number of layers.
        layers: usize,
        /// Sum of the layer blobs' sizes.
        total_bytes: u64,
    },
    /// A layer's state changed or its download advanced.
    Layer(LayerProgress),
}

/// Where one layer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    /// The layer blob's digest.
    pub digest: Digest,
    /// Its size.
    pub total_bytes: u64,
    /// Bytes downloaded so far (= total once downloaded or already present).
    pub done_bytes: u64,
    /// What is happening to it.
    pub phase: LayerPhase,
}

/// A layer's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPhase {
    /// Being downloaded.
    Downloading,
    /// Downloaded and verified; being unpacked.
    Unpacking,
    /// Stored and unpacked.
    Done,
    /// Was already stored and unpacked; nothing fetched.
    AlreadyPresent,
}

impl LayerProgress {
    /// Whether the layer is finished.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, LayerPhase::Done | LayerPhase::AlreadyPresent)
    }
}

type Callback = dyn Fn(PullEvent) + Send + Sync;

/// Where progress events go.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<Callback>>);

impl ProgressSink {
    /// Discards events.
    pub fn none() -> Self {
        ProgressSink(None)
    }

    /// Calls `f` with every event (from the pulling task; keep it short).
    pub fn new(f: impl Fn(PullEvent) + Send + Sync + 'static) -> Self {
        ProgressSink(Some(Arc::new(f)))
    }

    /// Sends every event into a channel (a closed channel drops them).
    pub fn channel(tx: tokio::sync::mpsc::UnboundedSender<PullEvent>) -> Self {
        Self::new(move |e| {
            let _ = tx.send(e);
        })
    }

    pub(crate) fn emit(&self, event: PullEvent) {
        if let Some(f) = &self.0 {
            f(event);
        }
    }

    pub(crate) fn layer(&self, digest: &Digest, total: u64, done: u64, phase: LayerPhase) {
        self.emit(PullEvent::Layer(LayerProgress {
            digest: digest.clone(),
            total_bytes: total,
            done_bytes: done,
            phase,
        }));
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProgressSink(callback)"
        } else {
            "ProgressSink(none)"
        })
    }
}

/// Throttles download events for one layer.
pub(crate) struct Meter<'a> {
    sink: &'a ProgressSink,
    digest: &'a Digest,
    total: u64,
    step: u64,
    last: u64,
}

impl<'a> Meter<'a> {
    pub(crate) fn new(sink: &'a ProgressSink, digest: &'a Digest, total: u64) -> Self {
        sink.layer(digest, total, 0, LayerPhase::Downloading);
        let step = (total / 100).max(256 * 1024);
        Meter {
            sink,
            digest,
            total,
            step,
            last: 0,
        }
    }

    /// Reports `done` bytes if far enough from the last report, or final.
    pub(crate) fn advance(&mut self, done: u64) {
        if done - self.last >= self.step || done == self.total {
            self.last = done;
            self.sink
                .layer(self.digest, self.total, done, LayerPhase::Downloading);
        }
    }
}
