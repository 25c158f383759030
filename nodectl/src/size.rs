//! Human sizes and CPU amounts on the command line and in tables.
//!
//! Sizes follow Kubernetes quantities, so the numbers an operator already
//! writes in manifests work here: binary suffixes `Ki Mi Gi Ti` (powers of
//! 1024), decimal `k M G T` (powers of 1000), or plain bytes. CPU is in
//! millicores, the API's unit: `1500` or `1500m`.

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

const BINARY: [(&str, u64); 4] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
];
const DECIMAL: [(&str, u64); 4] = [
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// Parses `512Mi`, `2Gi`, `1G`, `4096` (bytes) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, multiplier) = split_suffix(text)?;
    let number: u64 = digits.parse().map_err(|_| {
        format!("invalid size {text:?}: expected e.g. 512Mi, 2Gi, 1G or plain bytes")
    })?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The numeric part and the multiplier its suffix stands for.
fn split_suffix(text: &str) -> Result<(&str, u64), String> {
    for (suffix, multiplier) in BINARY.iter().chain(DECIMAL.iter()) {
        if let Some(digits) = text.strip_suffix(suffix) {
            return Ok((digits, *multiplier));
        }
    }
    match text.find(|c: char| !c.is_ascii_digit()) {
        Some(_) => Err(format!(
            "invalid size {text:?}: units are Ki, Mi, Gi, Ti (binary) or k, M, G, T (decimal)"
        )),
        None => Ok((text, 1)),
    }
}

/// Guest memory in MiB: a plain number is MiB, a size with a unit must be a
/// whole number of MiB (guest RAM is mapped in MiB).
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("memory {text:?} is too large"));
    }
    let bytes = parse_size(text)?;
    if !bytes.is_multiple_of(MIB) {
        return Err(format!("memory {text:?} is not a whole number of MiB"));
    }
    Ok(bytes / MIB)
}

/// Parses millicores: `1500` or `1500m`.
pub fn parse_millicores(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.strip_suffix('m').unwrap_or(text);
    digits
        .parse()
        .map_err(|_| format!("invalid CPU amount {text:?}: expected millicores, e.g. 500 or 500m"))
}

/// Bytes in the largest binary unit that keeps it readable: exact when it
/// divides (`512Mi`), else one decimal (`1.5Gi`); below 1 KiB plain bytes.
pub fn format_size(bytes: u64) -> String {
    let Some((suffix, unit)) = BINARY.iter().rev().find(|(_, unit)| bytes >= *unit) else {
        return format!("{bytes}B");
    };
    if bytes.is_multiple_of(*unit) {
        return format!("{}{suffix}", bytes / unit);
    }
    // f64 is exact enough for one displayed decimal.
    format!("{:.1}{suffix}", bytes as f64 / *unit as f64)
}

/// Millicores as `500m`.
pub fn format_millicores(millicores: u64) -> String {
    format!("{millicores}m")
}

/// CPU time (nanoseconds, as cgroups count it) as an operator reads a
/// duration: `0.25s`, `12.3s`, `4m05s`, `3h07m`.
pub fn format_cpu_time(ns: u64) -> String {
    const NS: u64 = 1_000_000_000;
    let secs = ns / NS;
    match secs {
        // f64 is exact enough for the decimals shown.
        0..10 => format!("{:.2}s", ns as f64 / NS as f64),
        10..60 => format!("{:.1}s", ns as f64 / NS as f64),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_decimal_and_plain_bytes() {
        assert_eq!(parse_size("512Mi"), Ok(512 * MIB));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert_eq!(parse_size("1Ki"), Ok(1024));
        assert_eq!(parse_size("3Ti"), Ok(3 << 40));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("5k"), Ok(5_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 0 "), Ok(0));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for bad in ["", "Mi", "1.5Gi", "-1", "12XB", "2 Gi", "1mi", "abc"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999999Ti")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("18446744073709551616").is_err());
    }

    #[test]
    fn memory_is_mib_or_a_whole_mib_size() {
        assert_eq!(parse_memory_mib("512"), Ok(512));
        assert_eq!(parse_memory_mib("2Gi"), Ok(2048));
        assert_eq!(parse_memory_mib("1024Ki"), Ok(1));
        assert!(parse_memory_mib("1000Ki")
            .unwrap_err()
            .contains("whole number of MiB"));
        assert!(parse_memory_mib("x").is_err());
    }

    #[test]
    fn millicores_parse_with_or_without_m() {
        assert_eq!(parse_millicores("500"), Ok(500));
        assert_eq!(parse_millicores("1500m"), Ok(1500));
        for bad in ["", "m", "1.5", "2c", "-5"] {
            assert!(parse_millicores(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_format_in_the_largest_readable_unit() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1023), "1023B");
        assert_eq!(format_size(1024), "1Ki");
        assert_eq!(format_size(512 * MIB), "512Mi");
        assert_eq!(format_size(3 << 29), "1.5Gi");
        assert_eq!(format_size(u64::MAX), "16777216.0Ti");
        for bytes in [1024, 512 * MIB, 2 << 30, 7 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn cpu_time_formats_as_a_duration() {
        assert_eq!(format_cpu_time(0), "0.00s");
        assert_eq!(format_cpu_time(250_000_000), "0.25s");
        assert_eq!(format_cpu_time(12_340_000_000), "12.3s");
        assert_eq!(format_cpu_time(245 * 1_000_000_000), "4m05s");
        assert_eq!(
            format_cpu_time((3 * 3600 + 7 * 60 + 5) * 1_000_000_000),
            "3h07m"
        );
    }
}
