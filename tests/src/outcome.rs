//! Result of one nested-host run, parsed from the serial console.

use crate::error::{Error, Result};

pub(crate) const HOST_UP: &str = "STRATUM-HOST-UP kvm=";
pub(crate) const SCENARIO_EXIT: &str = "STRATUM-SCENARIO-EXIT=";
/// Printed by the nested kvm module under TCG; harmless noise.
const IGNORED: &[&str] = &["Unhandled WRMSR(0xc0010007)"];

/// What the nested host's init prints every ten seconds.
pub(crate) const HEARTBEAT_LINE: &str = "STRATUM-HOST-ALIVE";

/// What the nested host reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The serial console, `\r` removed and known-noise lines dropped.
    pub console: String,
    /// Exit status of `/scenario.sh`; `None` if the host died before
    /// reporting it (panic, crash, poweroff from within the scenario).
    pub exit_code: Option<i32>,
    /// Whether `/dev/kvm` existed after loading the KVM modules.
    pub host_kvm: bool,
}

impl Outcome {
    /// Parses a raw console capture. `None` if the host never came up.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        let console = clean_console(raw);
        let host_kvm = console
            .lines()
            .find_map(|l| marker_value(l, HOST_UP))
            .map(|v| v.starts_with("yes"))?;
        let exit_code = console
            .lines()
            .filter_map(|l| marker_value(l, SCENARIO_EXIT))
            .filter_map(|v| v.trim().parse().ok())
            .next_back();
        Some(Self {
            console,
            exit_code,
            host_kvm,
        })
    }

    /// Console lines starting with `prefix` (leading whitespace ignored).
    pub fn lines_with<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.console
            .lines()
            .map(str::trim_start)
            .filter(move |l| l.starts_with(prefix))
    }

    /// What follows `key` on the first console line that starts with it
    /// (`KEY=value` lines), trimmed; empty when no line does.
    pub fn value(&self, key: &str) -> &str {
        self.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map_or("", str::trim)
    }

    /// What follows `key` on every console line that starts with it, in
    /// the order printed.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.console
            .lines()
            .filter_map(move |l| l.trim().strip_prefix(key))
            .map(str::trim)
    }

    /// The last `n` console lines, for error messages.
    pub fn console_tail(&self, n: usize) -> String {
        tail(&self.console, n)
    }

    /// `Ok` if the scenario exited with `expected`.
    pub fn check_exit(&self, expected: i32) -> Result<()> {
        if self.exit_code == Some(expected) {
            return Ok(());
        }
        Err(Error::ExitMismatch {
            expected,
            actual: self.exit_code,
            console_tail: self.console_tail(40),
        })
    }

    /// Test helper: panics with the console tail unless the scenario exited
    /// with `expected`.
    #[track_caller]
    pub fn assert_exit(&self, expected: i32) {
        if let Err(e) = self.check_exit(expected) {
            panic!("{e}");
        }
    }
}

/// Text after `marker` if the line contains it. Substring search because
/// kernel messages may share the line with the marker.
fn marker_value<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

pub(crate) fn clean_console(raw: &str) -> String {
    // The heartbeat is one write of its own, but it may land inside a line
    // another process writes piece by piece (a guest's serial output through
    // vmm): cut out of the stream, it leaves that line whole.
    let raw = raw
        .replace(&format!("{HEARTBEAT_LINE}\r\n"), "")
        .replace(&format!("{HEARTBEAT_LINE}\n"), "");
    let mut out = String::with_capacity(raw.len());
    for line in raw.lines() {
        if IGNORED.iter().any(|noise| line.contains(noise)) {
            continue;
        }
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out
}

pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_drops_noise() {
        let raw = "boot\r\n[ 1.0] kvm: Unhandled WRMSR(0xc0010007) = 0x0\r\n\
                   STRATUM-HOST-UP kvm=yes\r\nhello\r\nSTRATUM-HOST-ALIVE\r\nSTRATUM-SCENARIO-EXIT=3\r\n";
        let o = Outcome::parse(raw).expect("host up");
        assert!(o.host_kvm);
        assert_eq!(o.exit_code, Some(3));
        assert!(!o.console.contains("WRMSR"));
        assert!(!o.console.contains("ALIVE"));
        assert_eq!(o.lines_with("hel").collect::<Vec<_>>(), ["hello"]);
        o.assert_exit(3);
        assert!(o.check_exit(0).is_err());
    }

    #[test]
    fn a_heartbeat_inside_another_line_leaves_it_whole() {
        let raw = "STRATUM-HOST-UP kvm=yes\r\nSTRATUM-GUEST-UP cpus=2 kerSTRATUM-HOST-ALIVE\r\n\
                   nel=6.1\r\nSTRATUM-HOST-ALIVE\n";
        let o = Outcome::parse(raw).expect("host up");
        assert_eq!(
            o.lines_with("STRATUM-GUEST-UP").collect::<Vec<_>>(),
            ["STRATUM-GUEST-UP cpus=2 kernel=6.1"]
        );
        assert!(!o.console.contains("ALIVE"));
    }

    #[test]
    fn missing_markers() {
        assert!(Outcome::parse("kernel panic").is_none());
        let o = Outcome::parse("STRATUM-HOST-UP kvm=no\n").expect("host up");
        assert!(!o.host_kvm);
        assert_eq!(o.exit_code, None);
    }
}
