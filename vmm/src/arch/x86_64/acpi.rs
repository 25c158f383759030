//! ACPI tables: how the guest learns its CPUs and interrupt controllers
//! (MADT) and how it powers off and resets (FADT + DSDT).
//!
//! The platform is "hardware-reduced" ACPI: no PM timer, no SCI, no GPEs,
//! just a sleep control register, a sleep status register and a reset
//! register, all on the [`AcpiPm`](crate::devices::legacy::AcpiPm) device's
//! I/O ports. The DSDT declares `\_S5` (soft-off), which is what a guest's
//! `poweroff` needs, and the two legacy devices with their ports and IRQs:
//! a hardware-reduced platform has no legacy PIC, so Linux maps ISA IRQs
//! only for devices the firmware describes. The tables live in the legacy BIOS area
//! (0xE0000..0x100000), which the memory map already reserves; the MP table
//! stays as well, for guests booted with `acpi=off`.

use crate::vstate::memory::GuestMemoryMmap;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, ACPI_START, APIC_ADDR, IOAPIC_ADDR};
use crate::devices::legacy::acpi_pm::{
    ACPI_PM_PORT, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use crate::devices::legacy::i8042::{I8042_KBD_IRQ, I8042_PORT};
use crate::devices::legacy::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN};

const OEM_ID: [u8; 6] = *b"STRATM";
const OEM_TABLE_ID: [u8; 8] = *b"STRATVMM";
const OEM_REVISION: u32 = 1;

/// FADT IA-PC boot architecture flags: an 8042 is present (so Linux probes
/// it; `SendCtrlAltDel` needs the keyboard driver), there is no VGA and no
/// CMOS RTC (so Linux does not read a clock that is not there).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ACPI tables for {0} vCPUs do not fit in the BIOS area")]
    TooLarge(u8),
    #[error("cannot write the ACPI tables into guest memory")]
    Write,
    #[error("the virtio-mmio window at {base:#x} ({size:#x} bytes) is not below 4 GiB")]
    MmioWindow { base: u64, size: u64 },
}

/// Serialises an ACPI object.
fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// A legacy ISA device: hardware ID, I/O port ranges, one edge-triggered
/// active-high interrupt.
fn isa_device(path: &str, hid: &str, ports: &[(u16, u8)], irq: u32) -> Vec<u8> {
    let io: Vec<aml::IO> = ports
        .iter()
        .map(|&(base, len)| aml::IO::new(base, base, 1, len))
        .collect();
    let interrupt = aml::Interrupt::new(true, true, false, false, irq);
    let mut resources: Vec<&dyn Aml> = io.iter().map(|r| r as &dyn Aml).collect();
    resources.push(&interrupt);
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::EISAName::new(hid);
    let uid: u8 = 0;
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    bytes_of(&aml::Device::new(path.into(), vec![&hid, &uid, &crs]))
}

/// Where a virtio-mmio device sits, for its DSDT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// A virtio-mmio device as Linux's virtio_mmio driver matches it in ACPI
/// (hardware ID "LNRO0005"): its register window and its interrupt.
fn virtio_mmio_device(index: u32, device: &MmioDevice) -> Result<Vec<u8>, Error> {
    let outside = || Error::MmioWindow {
        base: device.base,
        size: device.size,
    };
    let base = u32::try_from(device.base).map_err(|_| outside())?;
    let size = u32::try_from(device.size).map_err(|_| outside())?;
    let window = aml::Memory32Fixed::new(true, base, size);
    let interrupt = aml::Interrupt::new(true, true, false, false, device.irq);
    let crs = aml::ResourceTemplate::new(vec![&window, &interrupt]);
    let hid: aml::AmlStr = "LNRO0005";
    let uid = index;
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let path = format!("_SB_.V{index:03X}");
    Ok(bytes_of(&aml::Device::new(
        path.as_str().into(),
        vec![&hid, &uid, &crs],
    )))
}

fn dsdt(virtio: &[MmioDevice]) -> Result<Vec<u8>, Error> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // Name (_S5, Package () { 5 }): the sleep type written for soft-off.
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE]));
    table.append_slice(&bytes_of(&s5));
    let com1 = isa_device(
        "_SB_.COM1",
        "PNP0501",
        &[(COM1_PORT, COM1_PORT_LEN)],
        COM1_IRQ,
    );
    table.append_slice(&com1);
    let ps2 = isa_device(
        "_SB_.PS2_",
        "PNP0303",
        &[(I8042_PORT, 1), (I8042_PORT + 4, 1)],
        I8042_KBD_IRQ,
    );
    table.append_slice(&ps2);
    for (index, device) in (0u32..).zip(virtio) {
        table.append_slice(&virtio_mmio_device(index, device)?);
    }
    Ok(table.as_slice().to_vec())
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton);
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    fadt.reset_reg = io_register(ACPI_PM_PORT + RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(ACPI_PM_PORT + SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_register(ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"STRATUM\0").into();
    bytes_of(&fadt.finalize())
}

/// One processor entry per vCPU, APIC ID = vCPU index, and the IOAPIC with
/// the ID after them (as in the MP table) serving GSIs from 0.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(vcpus, IOAPIC_ADDR, 0));
    bytes_of(&madt)
}

/// Where each table goes, 16-byte aligned one after the other.
struct Placer(u64);

impl Placer {
    fn place(&mut self, len: usize) -> u64 {
        let addr = self.0;
        self.0 = (addr + len as u64 + 15) & !15;
        addr
    }
}

/// Builds all tables for `vcpus` vCPUs; returns (address, bytes) pairs, the
/// RSDP first.
pub fn build(vcpus: u8, virtio: &[MmioDevice]) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut placer = Placer(ACPI_START);
    let rsdp_addr = placer.place(Rsdp::len());
    let dsdt = dsdt(virtio)?;
    let dsdt_addr = placer.place(dsdt.len());
    let fadt = fadt(dsdt_addr);
    let fadt_addr = placer.place(fadt.len());
    let madt = madt(vcpus);
    let madt_addr = placer.place(madt.len());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = placer.place(xsdt.len());
    if placer.0 > ACPI_END {
        return Err(Error::TooLarge(vcpus));
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (rsdp_addr, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn setup(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    virtio: &[MmioDevice],
) -> Result<GuestAddress, Error> {
    let tables = build(vcpus, virtio)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| Error::Write)?;
    }
    Ok(GuestAddress(tables[0].0))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn table(tables: &[(u64, Vec<u8>)], addr: u64) -> &[u8] {
        &tables.iter().find(|(a, _)| *a == addr).unwrap().1
    }

    #[test]
    fn rsdp_leads_through_xsdt_to_valid_fadt_madt_and_dsdt() {
        let virtio = [MmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        let tables = build(4, &virtio).unwrap();
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[0..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt = table(&tables, u64_at(rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|at| u64_at(xsdt, at))
            .collect();
        assert_eq!(entries.len(), 2);
        for (addr, bytes) in &tables[1..] {
            assert_eq!(sum(bytes), 0, "checksum of table at {addr:#x}");
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "length field");
            assert!(*addr + bytes.len() as u64 <= ACPI_END);
        }
        let fadt = table(&tables, entries[0]);
        assert_eq!(&fadt[0..4], b"FACP");
        let madt = table(&tables, entries[1]);
        assert_eq!(&madt[0..4], b"APIC");
        let dsdt = table(&tables, u64_at(fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(4).any(|w| w == b"PS2_"));
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
        assert!(dsdt.windows(4).any(|w| w == b"V000"));
    }

    #[test]
    fn fadt_points_at_the_pm_device_and_is_hardware_reduced() {
        let fadt = fadt(0x1234);
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // reset_reg (GAS at 116): system I/O space, 8 bits, our port.
        assert_eq!(fadt[116], 1);
        assert_eq!(fadt[117], 8);
        assert_eq!(u64_at(&fadt, 120), ACPI_PM_PORT + RESET_OFFSET);
        assert_eq!(fadt[128], RESET_VALUE);
        // sleep_control_reg at 244, sleep_status_reg at 256.
        assert_eq!(u64_at(&fadt, 248), ACPI_PM_PORT + SLEEP_CONTROL_OFFSET);
        assert_eq!(u64_at(&fadt, 260), ACPI_PM_PORT + SLEEP_STATUS_OFFSET);
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_ne!(boot_arch & IAPC_BOOT_ARCH_8042, 0);
    }

    #[test]
    fn madt_lists_each_vcpu_and_the_ioapic() {
        for vcpus in [1u8, 3, 254] {
            let madt = madt(vcpus);
            let mut at = 44;
            let mut apic_ids = Vec::new();
            let mut ioapics = 0;
            while at < madt.len() {
                match madt[at] {
                    0 => apic_ids.push(madt[at + 3]),
                    1 => {
                        ioapics += 1;
                        assert_eq!(madt[at + 2], vcpus);
                        assert_eq!(u32_at(&madt, at + 4), IOAPIC_ADDR);
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                at += usize::from(madt[at + 1]);
            }
            assert_eq!(at, madt.len());
            assert_eq!(apic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
        let many: Vec<MmioDevice> = (0..19)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5 + i as u32,
            })
            .collect();
        assert!(
            build(254, &many).is_ok(),
            "the most vCPUs and devices fit the BIOS area"
        );
    }
}
