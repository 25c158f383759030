//! The hardware-reduced ACPI power management registers the FADT points
//! at: writing soft-off (S5) to the sleep control register powers the VM
//! off, writing the reset value to the reset register resets it. Both end
//! the VM, as a guest's `poweroff` and `reboot` (with `reboot=a`, Linux's
//! default when ACPI is present) should.

use crate::devices::{BusDevice, PowerOffBy, ResetBy, VmEvent, VmEventSender};

pub const ACPI_PM_PORT: u64 = 0x600;
pub const ACPI_PM_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
pub const RESET_VALUE: u8 = 0x1;
/// The SLP_TYP value the DSDT's `\_S5` package announces.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Sleep control register: SLP_TYP in bits 2..4, SLP_EN in bit 5.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;
const SLEEP_ENABLE: u8 = 1 << 5;

pub struct AcpiPm {
    stop: VmEventSender,
}

impl AcpiPm {
    pub fn new(stop: VmEventSender) -> Self {
        Self { stop }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake events ever: the sleep status register reads 0, and so
        // do the write-only control and reset registers.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            SLEEP_CONTROL_OFFSET
                if value & SLEEP_ENABLE != 0
                    && (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK == S5_SLEEP_TYPE =>
            {
                self.stop.send(VmEvent::PowerOff(PowerOffBy::AcpiSleep))
            }
            RESET_OFFSET if *value == RESET_VALUE => {
                self.stop.send(VmEvent::Reset(ResetBy::AcpiResetRegister))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn soft_off_and_reset_stop_the_vm() {
        let (tx, rx) = channel();
        let mut pm = AcpiPm::new(VmEventSender(tx));
        // What Linux writes for S5: SLP_TYP 5 with SLP_EN.
        pm.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | (1 << 5)]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::PowerOff(PowerOffBy::AcpiSleep))
        ));
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Reset(ResetBy::AcpiResetRegister))
        ));
    }

    #[test]
    fn other_writes_do_nothing() {
        let (tx, rx) = channel();
        let mut pm = AcpiPm::new(VmEventSender(tx));
        pm.write(SLEEP_CONTROL_OFFSET, &[5 << 2]); // no SLP_EN
        pm.write(SLEEP_CONTROL_OFFSET, &[(1 << 2) | (1 << 5)]); // S1
        pm.write(SLEEP_STATUS_OFFSET, &[0xff]);
        pm.write(RESET_OFFSET, &[0x2]);
        pm.write(RESET_OFFSET, &[RESET_VALUE, 0]); // wrong width
        assert!(rx.try_recv().is_err());
        let mut status = [0xffu8; 2];
        pm.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status, [0, 0]);
    }
}
