//! Firecracker's `mmds` metrics group: what the guest-facing service saw
//! and did, counted by the interfaces' worker threads and taken (reset)
//! by each metrics flush.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// One counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count since the last take, which starts a new count.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Firecracker's `MmdsMetrics`, field for field.
#[derive(Debug)]
pub struct MmdsMetrics {
    /// Frames taken off a transmit path for MMDS.
    pub rx_accepted: Counter,
    /// Frames for MMDS that could not be handled.
    pub rx_accepted_err: Counter,
    /// Frames for MMDS that are not TCP (dropped).
    pub rx_accepted_unusual: Counter,
    /// Frames too short for an Ethernet header.
    pub rx_bad_eth: Counter,
    pub rx_invalid_token: Counter,
    pub rx_no_token: Counter,
    /// Frames the stack took in.
    pub rx_count: Counter,
    pub tx_bytes: Counter,
    pub tx_count: Counter,
    /// Reply frames dropped because the pending queue was full.
    pub tx_errors: Counter,
    pub tx_frames: Counter,
    pub connections_created: Counter,
    pub connections_destroyed: Counter,
}

/// The process's MMDS counters.
pub static METRICS: MmdsMetrics = MmdsMetrics {
    rx_accepted: Counter::new(),
    rx_accepted_err: Counter::new(),
    rx_accepted_unusual: Counter::new(),
    rx_bad_eth: Counter::new(),
    rx_invalid_token: Counter::new(),
    rx_no_token: Counter::new(),
    rx_count: Counter::new(),
    tx_bytes: Counter::new(),
    tx_count: Counter::new(),
    tx_errors: Counter::new(),
    tx_frames: Counter::new(),
    connections_created: Counter::new(),
    connections_destroyed: Counter::new(),
};

/// Serialises the counts since the last flush, and starts new ones.
pub struct Flushed;

impl Serialize for Flushed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = &METRICS;
        let fields: [(&'static str, &Counter); 13] = [
            ("rx_accepted", &m.rx_accepted),
            ("rx_accepted_err", &m.rx_accepted_err),
            ("rx_accepted_unusual", &m.rx_accepted_unusual),
            ("rx_bad_eth", &m.rx_bad_eth),
            ("rx_invalid_token", &m.rx_invalid_token),
            ("rx_no_token", &m.rx_no_token),
            ("rx_count", &m.rx_count),
            ("tx_bytes", &m.tx_bytes),
            ("tx_count", &m.tx_count),
            ("tx_errors", &m.tx_errors),
            ("tx_frames", &m.tx_frames),
            ("connections_created", &m.connections_created),
            ("connections_destroyed", &m.connections_destroyed),
        ];
        let mut s = serializer.serialize_struct("MmdsMetrics", fields.len())?;
        for (name, counter) in fields {
            s.serialize_field(name, &counter.take())?;
        }
        s.end()
    }
}
