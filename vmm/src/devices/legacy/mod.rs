//! Legacy PC devices on port I/O: the 16550 UART console (and its bounded
//! log file), the i8042 keyboard controller and the ACPI power management
//! registers.

pub mod acpi_pm;
pub mod console_log;
pub mod i8042;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use console_log::ConsoleLog;
pub use i8042::I8042;
pub use serial::SerialConsole;
