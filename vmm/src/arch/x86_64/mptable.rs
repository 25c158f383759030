//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI, Linux learns how many CPUs there are, where the IOAPIC is
//! and how ISA interrupts are wired from this table. It is serialised field
//! by field into a byte buffer (little-endian, packed as the spec lays it
//! out), so no unsafe casting of structs is needed.

use crate::vstate::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};

/// APIC IDs are 8 bits and the IOAPIC takes the ID after the last vCPU, so
/// 254 vCPUs is the most an MP table can describe.
pub const MAX_CPUS: u8 = 254;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// The in-kernel IOAPIC has 24 pins; KVM routes GSI n to pin n.
const IOAPIC_PINS: u8 = 24;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u16),
    #[error("the MP table does not fit in guest memory")]
    Write,
    #[error("the MP table at {0:#x} is not below 4 GiB")]
    Address(u64),
    #[error("the MP table is {0} bytes, more than its 16-bit length field")]
    TooLarge(usize),
}

/// Serialises the floating pointer and configuration table for `cpus` vCPUs,
/// placed at guest address `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::CpuCount(cpus.into()));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    // The legacy PIC's output reaches IOAPIC pin 0 as ExtINT, then every
    // ISA IRQ n is wired to pin n with the bus's default polarity.
    push_interrupt(
        &mut entries,
        ENTRY_IO_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ioapic_id,
        0,
    );
    for pin in 0..IOAPIC_PINS {
        push_interrupt(
            &mut entries,
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            pin,
            ioapic_id,
            pin,
        );
    }
    // LINT0 of the boot CPU gets ExtINT, LINT1 of every CPU gets NMI.
    push_interrupt(
        &mut entries,
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        0,
        0,
    );
    push_interrupt(
        &mut entries,
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0xff,
        1,
    );

    let entry_count = count_entries(cpus);
    let table_len = HEADER_SIZE + entries.len();
    // At most 44 + 254 * 20 + 30 * 8 bytes (MAX_CPUS): well inside 16 bits.
    let table_len_16 = u16::try_from(table_len).map_err(|_| Error::TooLarge(table_len))?;
    let table_addr = base + FLOATING_POINTER_SIZE as u64;
    let table_addr_32 = u32::try_from(table_addr).map_err(|_| Error::Address(table_addr))?;

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len_16.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec revision 1.4, checksum below
    table.extend_from_slice(b"STRATUM ");
    table.extend_from_slice(b"KVM-VMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_SIZE);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr_32.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 1 paragraph, rev 1.4
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Number of entries the table holds for `cpus` vCPUs.
fn count_entries(cpus: u8) -> u16 {
    // processors + bus + IOAPIC + ExtINT source + one per pin + two local.
    u16::from(cpus) + 1 + 1 + 1 + u16::from(IOAPIC_PINS) + 2
}

fn push_interrupt(
    entries: &mut Vec<u8>,
    kind: u8,
    int_type: u8,
    src_irq: u8,
    dst: u8,
    dst_pin: u8,
) {
    entries.extend_from_slice(&[kind, int_type, 0, 0, ISA_BUS_ID, src_irq, dst, dst_pin]);
}

/// The byte that makes the sum of all bytes zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), Error> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([bytes[at], bytes[at + 1]])
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    #[test]
    fn floating_pointer_points_at_a_valid_table() {
        let base = 0x9fc00;
        let bytes = build(2, base).unwrap();
        assert_eq!(&bytes[0..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        assert_eq!(u64::from(u32_at(&bytes, 4)), base + 16);
        let table = &bytes[16..];
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(usize::from(u16_at(table, 4)), table.len());
        assert_eq!(sum(table), 0);
        assert_eq!(u32_at(table, 36), APIC_ADDR);
    }

    #[test]
    fn table_lists_every_cpu_once_with_one_boot_processor() {
        for cpus in [1u8, 2, 7, MAX_CPUS] {
            let bytes = build(cpus, 0x9fc00).unwrap();
            let table = &bytes[16..];
            let count = u16_at(table, 34);
            let mut at = HEADER_SIZE;
            let mut apic_ids = Vec::new();
            let mut boot = 0;
            for _ in 0..count {
                match table[at] {
                    ENTRY_PROCESSOR => {
                        apic_ids.push(table[at + 1]);
                        assert_ne!(table[at + 3] & CPU_ENABLED, 0);
                        if table[at + 3] & CPU_BOOT_PROCESSOR != 0 {
                            boot += 1;
                        }
                        at += 20;
                    }
                    ENTRY_IOAPIC => {
                        assert_eq!(table[at + 1], cpus, "IOAPIC ID follows the vCPUs");
                        assert_eq!(u32_at(table, at + 4), IOAPIC_ADDR);
                        at += 8;
                    }
                    _ => at += 8,
                }
            }
            assert_eq!(at, table.len(), "entry count matches the table length");
            assert_eq!(apic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(boot, 1);
        }
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert!(matches!(build(0, 0), Err(Error::CpuCount(0))));
        assert!(matches!(build(255, 0), Err(Error::CpuCount(255))));
    }

    #[test]
    fn setup_writes_into_the_ebda() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup(&mem, 4).unwrap();
        let mut signature = [0u8; 4];
        mem.read_slice(&mut signature, GuestAddress(EBDA_START))
            .unwrap();
        assert_eq!(&signature, b"_MP_");
    }
}
