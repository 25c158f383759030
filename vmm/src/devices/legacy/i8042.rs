//! The i8042 keyboard controller.
//!
//! The VM has no keyboard; the controller exists for two reasons. Its CPU
//! reset line (command 0xFE, or clearing bit 0 of the output port) is how a
//! guest booted with `reboot=k` restarts, which ends the VM. And Linux's
//! i8042 driver probes the controller at boot: a controller that never
//! answers costs the guest a second of timeouts, so the few commands the
//! driver sends (read/write the command byte, self tests, port enables)
//! get the answers a real controller gives. Keyboard commands are ACKed.
//! Like the real part, the controller raises IRQ 1 whenever it has a byte
//! for the guest and the command byte enables keyboard interrupts: the
//! keyboard driver waits for that interrupt after each command it sends
//! (at probe and at shutdown), and without it runs into its timeouts.

use std::collections::VecDeque;

use crate::devices::{BusDevice, IrqLine, ResetBy, VmEvent, VmEventSender};

/// Base of the i8042's data port; the command/status port is base + 4.
/// 16 bits, as the ACPI I/O descriptor carries it.
pub const I8042_PORT: u16 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_KEYBOARD_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_TRANSLATE: u8 = 0x40;
const CTR_AUX_DISABLED: u8 = 0x20;
/// Keyboard interrupt on, system flag set, translation on: the power-on value.
const CTR_DEFAULT: u8 = 0x45;
const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
/// Output port bit 0 is the CPU reset line (active low); bit 1 the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;

/// Room for the longest key sequence we type; a guest that never reads
/// cannot make the queue grow past this.
const OUTPUT_QUEUE_MAX: usize = 16;

/// Which command, if any, takes the next byte written to the data port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Pending {
    None,
    WriteCtr,
    WriteOutputPort,
    WriteAux,
}

pub struct I8042 {
    ctr: u8,
    output: VecDeque<u8>,
    pending: Pending,
    last_was_command: bool,
    reset: VmEventSender,
    irq: IrqLine,
}

/// The controller's registers, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    ctr: u8,
    output: Vec<u8>,
    pending: Pending,
    last_was_command: bool,
}

impl I8042 {
    pub fn new(reset: VmEventSender, irq: IrqLine) -> Self {
        Self {
            ctr: CTR_DEFAULT,
            output: VecDeque::new(),
            pending: Pending::None,
            last_was_command: false,
            reset,
            irq,
        }
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output: self.output.iter().copied().collect(),
            pending: self.pending,
            last_was_command: self.last_was_command,
        }
    }

    /// The controller as a snapshot left it; an output queue longer than
    /// ours can hold is cut to what a real controller could have held.
    pub fn from_state(state: &I8042State, reset: VmEventSender, irq: IrqLine) -> Self {
        Self {
            ctr: state.ctr,
            output: state
                .output
                .iter()
                .copied()
                .take(OUTPUT_QUEUE_MAX)
                .collect(),
            pending: state.pending,
            last_was_command: state.last_was_command,
            reset,
            irq,
        }
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back(byte);
        }
        if self.ctr & CTR_KBD_INTERRUPT != 0 {
            self.irq.raise();
        }
    }

    /// Hands the guest the next byte. A real controller holds one byte and
    /// interrupts again once it is read; the guest's handler reads one
    /// byte per interrupt, so each further byte needs its own interrupt.
    fn pop(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if !self.output.is_empty() && self.ctr & CTR_KBD_INTERRUPT != 0 {
            self.irq.raise();
        }
        byte
    }

    /// Types Ctrl+Alt+Del, which Linux turns into a signal to init: the
    /// graceful-shutdown request a VMM can make without ACPI events. With
    /// translation on (the command byte's XLAT bit, Linux's default) the
    /// guest expects scan code set 1, else set 2.
    pub fn send_ctrl_alt_del(&mut self) {
        let keys: &[u8] = if self.ctr & CTR_TRANSLATE != 0 {
            &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]
        } else {
            &[
                0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
            ]
        };
        for &key in keys {
            self.push(key);
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_KEYBOARD_UNLOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.pending = Pending::None;
        match command {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR => self.pending = Pending::WriteCtr,
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_SELF_TEST => {
                self.output.clear();
                self.push(SELF_TEST_PASSED);
            }
            CMD_TEST_KBD | CMD_TEST_AUX => self.push(PORT_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.push(OUTPUT_PORT_DEFAULT),
            CMD_WRITE_OUTPUT_PORT => self.pending = Pending::WriteOutputPort,
            CMD_WRITE_AUX => self.pending = Pending::WriteAux,
            CMD_PULSE_RESET => self.reset.send(VmEvent::Reset(ResetBy::KeyboardController)),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteCtr => self.ctr = byte,
            // Clearing the reset bit of the output port resets the CPU.
            Pending::WriteOutputPort if byte & 1 == 0 => {
                self.reset.send(VmEvent::Reset(ResetBy::KeyboardController))
            }
            Pending::WriteOutputPort => {}
            // No mouse is attached: bytes for it vanish, as with a real
            // controller whose aux port is empty.
            Pending::WriteAux => {}
            Pending::None => {
                self.push(KBD_ACK);
                if byte == KBD_RESET {
                    self.push(KBD_SELF_TEST_PASSED);
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.pop(),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            DATA_OFFSET => {
                self.last_was_command = false;
                self.data(*byte);
            }
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.command(*byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver};
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042, Receiver<VmEvent>) {
        device_with_irq().0
    }

    fn device_with_irq() -> ((I8042, Receiver<VmEvent>), EventFd) {
        let (tx, rx) = channel();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let line = IrqLine(irq.try_clone().unwrap());
        ((I8042::new(VmEventSender(tx), line), rx), irq)
    }

    #[test]
    fn answers_raise_irq1_only_when_the_command_byte_enables_it() {
        let ((mut dev, _rx), irq) = device_with_irq();
        dev.write(DATA_OFFSET, &[0xf4]); // keyboard enable: ACK with IRQ
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_DEFAULT & !CTR_KBD_INTERRUPT]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert!(irq.read().is_err(), "no interrupt while disabled");
        assert_eq!(
            read(&mut dev, DATA_OFFSET),
            CTR_DEFAULT & !CTR_KBD_INTERRUPT
        );
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0u8];
        dev.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn pulse_reset_stops_the_vm_and_nothing_else_does() {
        let (mut dev, rx) = device();
        dev.write(DATA_OFFSET, &[CMD_PULSE_RESET]); // data port: a keyboard byte
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET, 0]); // wrong width
        assert!(rx.try_recv().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Reset(ResetBy::KeyboardController))
        ));
    }

    #[test]
    fn output_port_reset_bit_resets() {
        let (mut dev, rx) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x03]);
        assert!(rx.try_recv().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert!(matches!(
            rx.try_recv(),
            Ok(VmEvent::Reset(ResetBy::KeyboardController))
        ));
    }

    #[test]
    fn answers_the_linux_driver_probe() {
        let (mut dev, _rx) = device();
        // Nothing to flush at first, and the reset path's "input buffer
        // full" bit is never set.
        assert_eq!(
            read(&mut dev, COMMAND_OFFSET) & (STATUS_OUTPUT_FULL | 0x02),
            0
        );
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), CTR_DEFAULT);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x61]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x61);
        dev.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(
            read(&mut dev, DATA_OFFSET) & CTR_KBD_DISABLED,
            CTR_KBD_DISABLED
        );
        dev.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut dev, DATA_OFFSET), PORT_TEST_PASSED);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_an_interrupt_per_byte() {
        let ((mut dev, _rx), irq) = device_with_irq();
        dev.send_ctrl_alt_del();
        assert!(irq.read().unwrap() >= 1);
        let mut typed = Vec::new();
        while read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0 {
            typed.push(read(&mut dev, DATA_OFFSET));
            if read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0 {
                assert_eq!(irq.read().unwrap(), 1, "an interrupt for the next byte");
            }
        }
        // Set 1 (translation is on by default): Ctrl, Alt, Del down, then up.
        assert_eq!(typed, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);

        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_DEFAULT & !CTR_TRANSLATE]);
        dev.send_ctrl_alt_del();
        assert_eq!(
            read(&mut dev, DATA_OFFSET),
            0x14,
            "set 2 without translation"
        );
    }

    #[test]
    fn keyboard_bytes_are_acked_and_the_queue_is_bounded() {
        let (mut dev, _rx) = device();
        dev.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_SELF_TEST_PASSED);
        for _ in 0..1000 {
            dev.write(DATA_OFFSET, &[0xf4]);
        }
        assert_eq!(dev.output.len(), OUTPUT_QUEUE_MAX);
    }
}
