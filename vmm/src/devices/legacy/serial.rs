//! The 16550 UART on COM1: the guest's console.
//!
//! Output goes to a file or the VMM's stdout, byte by byte and unbuffered so
//! prompts without a newline show up. Input comes from the VMM's stdin
//! ([`forward_input`]). Interrupts reach the in-kernel IOAPIC through an
//! irqfd on IRQ 4.
//!
//! Input is flow-controlled the way a terminal with RTS/CTS handshaking
//! feeds a real UART: a byte goes into the 64-byte receive FIFO only while
//! the FIFO has room and the guest asserts RTS (bit 1 of the modem control
//! register) outside loopback mode; until then it waits in the VMM (and
//! stdin fills up behind it). Linux raises RTS once a tty on the port is open and
//! its driver has set the UART up, so nothing typed or pasted early is
//! eaten by the driver's setup, which reads the receive buffer register to
//! empty it (three bytes on Linux 6.1: once while probing, twice at
//! startup). A guest that sets `crtscts` on the tty drops RTS while its
//! input buffers are full and raises it when it has read them, so a paste
//! larger than those buffers is not lost either.

use std::io::{ErrorKind, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::devices::{BusDevice, IrqLine};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

/// COM1's ports, typed as the ACPI I/O descriptor carries them.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u8 = 8;
pub const COM1_IRQ: u32 = 4;

const MCR_OFFSET: u8 = 4;
const MCR_RTS: u8 = 1 << 1;
const MCR_LOOP: u8 = 1 << 4;
/// How long [`forward_input`] waits before it offers bytes the guest did
/// not take again.
const INPUT_RETRY: Duration = Duration::from_millis(5);

pub type ConsoleOutput = Box<dyn Write + Send>;

pub struct SerialConsole {
    uart: Serial<IrqLine, NoEvents, ConsoleOutput>,
}

/// The UART's registers and receive FIFO, for a snapshot (vm-superio's
/// `SerialState`, which has no serde form of its own).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialConsoleState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("the snapshot's serial console state is invalid: its receive FIFO holds {0} bytes")]
pub struct BadSerialState(usize);

impl SerialConsole {
    pub fn new(irq: IrqLine, out: ConsoleOutput) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    pub fn state(&self) -> SerialConsoleState {
        let s = self.uart.state();
        SerialConsoleState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// The UART as a snapshot left it, writing to `out`.
    pub fn from_state(
        state: &SerialConsoleState,
        irq: IrqLine,
        out: ConsoleOutput,
    ) -> Result<Self, BadSerialState> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(&s, irq, NoEvents, out)
            .map_err(|_| BadSerialState(state.in_buffer.len()))?;
        Ok(Self { uart })
    }

    /// Queues host input for the guest. Returns how many bytes it took: 0
    /// while the guest is not ready for input ([`Self::ready_for_input`]) or
    /// the receive FIFO is full; the caller offers the rest again later.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        if !self.ready_for_input() {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Whether the guest asserts RTS with the UART outside loopback mode.
    pub fn ready_for_input(&mut self) -> bool {
        // Reading the modem control register has no side effects.
        self.uart.read(MCR_OFFSET) & (MCR_RTS | MCR_LOOP) == MCR_RTS
    }
}

/// Feeds `input` to the guest's console until it ends (or fails), offering
/// what the guest did not take again every few milliseconds: nothing read
/// from `input` is dropped.
pub fn forward_input(mut input: impl Read, serial: &Mutex<SerialConsole>) {
    let mut buf = [0u8; 64];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .queue_input(pending);
            pending = &pending[taken..];
            if taken == 0 {
                std::thread::sleep(INPUT_RETRY);
            }
        }
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
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
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
        console.write(4, &[0x0b]); // MCR: DTR, RTS, OUT2
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

    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;
    const MCR: u64 = 4;
    const MCR_DTR: u8 = 0x01;
    const MCR_OUT2: u8 = 0x08;
    const MCR_DTR_RTS_OUT2: u8 = 0x0b;

    fn console() -> SerialConsole {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        SerialConsole::new(IrqLine(irq), Box::new(Captured::default()))
    }

    fn read_reg(console: &Mutex<SerialConsole>, offset: u64) -> u8 {
        let mut byte = [0u8];
        console.lock().unwrap().read(offset, &mut byte);
        byte[0]
    }

    fn set_mcr(console: &Mutex<SerialConsole>, value: u8) {
        console.lock().unwrap().write(MCR, &[value]);
    }

    /// Reads received bytes as a polling driver does, until `len` came or
    /// nothing came for a while.
    fn read_input(console: &Mutex<SerialConsole>, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < len && std::time::Instant::now() < deadline {
            if read_reg(console, LSR) & LSR_DATA_READY != 0 {
                got.push(read_reg(console, 0));
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    /// What Linux's 8250 driver does to the UART when a tty opens the port,
    /// as far as input goes: it empties the receive buffer register (twice,
    /// RTS still down), then raises DTR and RTS.
    fn guest_opens_the_port(console: &Mutex<SerialConsole>) {
        for _ in 0..2 {
            for reg in [LSR, 0, 2, 6] {
                read_reg(console, reg);
            }
        }
        set_mcr(console, MCR_DTR_RTS_OUT2);
    }

    #[test]
    fn input_waits_while_rts_is_down_or_the_uart_loops_back() {
        let mut console = console();
        // Reset state: no RTS.
        assert!(!console.ready_for_input());
        assert_eq!(console.queue_input(b"early"), 0);
        console.write(MCR, &[MCR_DTR_RTS_OUT2]);
        assert!(console.ready_for_input());
        assert_eq!(console.queue_input(&[b'x'; 100]), 64, "a 64-byte FIFO");
        assert_eq!(console.queue_input(b"y"), 0, "the FIFO is full");
        // Loopback (the driver's probe) and RTS dropped (a throttling
        // guest with crtscts) both hold input back.
        console.write(MCR, &[MCR_DTR_RTS_OUT2 | MCR_LOOP]);
        assert!(!console.ready_for_input());
        console.write(MCR, &[MCR_DTR | MCR_OUT2]);
        assert!(!console.ready_for_input());
        let mut byte = [0u8];
        console.read(0, &mut byte);
        assert_eq!(console.queue_input(b"y"), 0, "room, but RTS is down");
        console.write(MCR, &[MCR_DTR_RTS_OUT2]);
        assert_eq!(console.queue_input(b"y"), 1);
    }

    #[test]
    fn a_paste_made_before_the_guest_opens_the_port_arrives_whole() {
        let console = Arc::new(Mutex::new(console()));
        let paste: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let feeder = {
            let (console, paste) = (Arc::clone(&console), paste.clone());
            std::thread::spawn(move || forward_input(paste.as_slice(), &console))
        };
        // The paste is on its way before the guest's driver is up.
        std::thread::sleep(Duration::from_millis(50));
        guest_opens_the_port(&console);
        let got = read_input(&console, paste.len());
        feeder.join().unwrap();
        assert_eq!(got.len(), paste.len(), "bytes lost");
        assert!(got == paste, "the paste arrived changed");
    }

    #[test]
    fn input_pauses_while_the_guest_drops_rts_and_resumes_after() {
        let console = Arc::new(Mutex::new(console()));
        guest_opens_the_port(&console);
        let paste: Vec<u8> = (0..200u8).collect();
        let feeder = {
            let (console, paste) = (Arc::clone(&console), paste.clone());
            std::thread::spawn(move || forward_input(paste.as_slice(), &console))
        };
        // The guest takes 10 bytes, then throttles (crtscts): it gets what
        // the FIFO held, and then nothing until it raises RTS again.
        let mut got = read_input(&console, 10);
        set_mcr(&console, MCR_DTR | MCR_OUT2);
        while read_reg(&console, LSR) & LSR_DATA_READY != 0 {
            got.push(read_reg(&console, 0));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            read_reg(&console, LSR) & LSR_DATA_READY,
            0,
            "input held while RTS is down"
        );
        assert!(got.len() < paste.len());
        set_mcr(&console, MCR_DTR_RTS_OUT2);
        got.extend(read_input(&console, paste.len() - got.len()));
        feeder.join().unwrap();
        assert_eq!(got, paste);
    }
}
