//! Devices the guest talks to, and the bus that routes its accesses to them.

pub mod bus;
pub mod legacy;
pub mod pseudo;
pub mod virtio;

pub use bus::{Bus, BusDevice};

use std::sync::mpsc::Sender;

use vmm_sys_util::eventfd::EventFd;

/// The two address spaces a vCPU exit can land in.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// An interrupt line backed by an eventfd that KVM turns into an IRQ (an
/// irqfd): raising it is one write, with no lock and no exit to take.
pub struct IrqLine(pub EventFd);

impl IrqLine {
    pub fn raise(&self) {
        // The eventfd counter only fails to grow at u64::MAX - 1 pending
        // signals, which KVM drains long before.
        let _ = self.0.write(1);
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Why the VM stops, as reported by a device or a vCPU to the VMM's main
/// thread.
#[derive(Debug)]
pub enum VmEvent {
    /// The guest reset itself: for a VMM without reboot support that ends
    /// the VM. How it did is logged, so an unexpected reset can be told
    /// apart from a requested one.
    Reset(ResetBy),
    /// The guest powered itself off.
    PowerOff(PowerOffBy),
    /// The VMM was asked to end the VM (a hard stop).
    Stopped,
    /// A vCPU failed: the VM cannot go on.
    VcpuFailed { index: u8, error: String },
}

/// How the guest reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetBy {
    /// The i8042's reset line (`reboot=k`).
    KeyboardController,
    /// The FADT's reset register (`reboot=a`).
    AcpiResetRegister,
    /// KVM_SYSTEM_EVENT_RESET.
    KvmSystemEvent,
    /// A triple fault (`reboot=t`, or a guest that crashed before it could
    /// print why); carries the vCPU's state at the fault.
    TripleFault { vcpu: u8, state: String },
}

/// How the guest powered off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOffBy {
    /// ACPI S5 through the PM1 control register.
    AcpiSleep,
    /// KVM_SYSTEM_EVENT_SHUTDOWN.
    KvmSystemEvent,
    /// A HLT that reached the VMM: halted with nothing to wake it.
    Halt { vcpu: u8 },
}

impl std::fmt::Display for ResetBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetBy::KeyboardController => f.write_str("keyboard controller reset line"),
            ResetBy::AcpiResetRegister => f.write_str("ACPI reset register"),
            ResetBy::KvmSystemEvent => f.write_str("KVM reset system event"),
            ResetBy::TripleFault { vcpu, state } => {
                write!(f, "triple fault on vCPU {vcpu}: {state}")
            }
        }
    }
}

impl std::fmt::Display for PowerOffBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PowerOffBy::AcpiSleep => f.write_str("ACPI S5"),
            PowerOffBy::KvmSystemEvent => f.write_str("KVM shutdown system event"),
            PowerOffBy::Halt { vcpu } => write!(f, "vCPU {vcpu} halted with interrupts off"),
        }
    }
}

/// A device-side handle that asks the VMM to stop the VM.
#[derive(Clone, Debug)]
pub struct VmEventSender(pub Sender<VmEvent>);

impl VmEventSender {
    pub fn send(&self, event: VmEvent) {
        // The receiver only disappears while the VMM is already exiting.
        let _ = self.0.send(event);
    }
}
