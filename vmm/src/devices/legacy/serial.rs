//! The 16550 UART on COM1: the guest's console.
//!
//! Output goes to a file or the VMM's stdout, byte by byte and unbuffered so
//! prompts without a newline show up. Input comes from the VMM's stdin.
//! Interrupts reach the in-kernel IOAPIC through an irqfd on IRQ 4.

use std::io::Write;

use crate::devices::{BusDevice, IrqLine};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

pub type ConsoleOutput = Box<dyn Write + Send>;

pub struct SerialConsole {
    uart: Serial<IrqLine, NoEvents, ConsoleOutput>,
}

impl SerialConsole {
    pub fn new(irq: IrqLine, out: ConsoleOutput) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues host input for the guest. Returns how many bytes fitted into
    /// the receive FIFO (0 when it is full: the caller retries later).
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([value], Ok(offset)) = (data, u8::try_from(offset)) {
            // A console that went away (closed pipe, full disk) must not stop
            // the guest: its output is dropped instead.
            let _ = self.uart.write(offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_output_and_input_raises_the_irq() {
        let out = Captured::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console =
            SerialConsole::new(IrqLine(irq.try_clone().unwrap()), Box::new(out.clone()));
        for b in b"hi\n" {
            console.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");

        console.write(1, &[0x01]); // IER: interrupt on received data
        assert_eq!(console.queue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        console.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0u8];
        console.read(0, &mut byte);
        assert_eq!(byte, [b'o']);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let out = Captured::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(IrqLine(irq), Box::new(out.clone()));
        console.write(0, b"ab");
        console.write(300, b"c");
        let mut wide = [0xffu8; 4];
        console.read(5, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
