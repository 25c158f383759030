//! Helpers shared by the benchmarks (`bench-boot`, `bench-io`,
//! `bench-vsock`) that run our vmm beside `qemu-system-x86_64 -M microvm`
//! inside the nested host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{ensure, Context, Result};

use crate::{Outcome, Scenario};

/// microvm's default firmware (qboot), the PVH option ROM QEMU loads for
/// ELF kernels with a PVH note (it warns if the latter is missing), and
/// the one it loads for a bzImage (the node image's stock kernel).
pub const QEMU_ROMS: &[&str] = &["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"];
/// Where QEMU looks for them when `-L help` does not say.
pub const QEMU_DATA_DIR: &str = "/usr/share/qemu";

/// Adds this machine's QEMU binary to `scenario` at the same path, with
/// every library `ldd` lists (same paths, so the loader finds them without
/// configuration) and the microvm firmware, from whichever of QEMU's data
/// directories holds it (Debian's QEMU 10 takes bios-microvm.bin from
/// /usr/share/seabios, 7.2 from /usr/share/qemu).
pub fn with_qemu(mut scenario: Scenario, qemu: &Path) -> Result<Scenario> {
    let dest = qemu.to_str().context("QEMU path is not UTF-8")?;
    // Checked first: dynamic_binary panics where this returns the error.
    shared_libs(qemu)?;
    scenario = scenario.dynamic_binary(dest, qemu);
    let dirs = qemu_data_dirs(qemu);
    for rom in QEMU_ROMS {
        let path = dirs
            .iter()
            .map(|dir| dir.join(rom))
            .find(|path| path.is_file())
            .with_context(|| format!("{rom} is in none of QEMU's data directories {dirs:?}"))?;
        scenario = scenario.file(path.to_string_lossy(), &path);
    }
    Ok(scenario)
}

/// The directories `qemu -L help` lists, else [`QEMU_DATA_DIR`].
fn qemu_data_dirs(qemu: &Path) -> Vec<PathBuf> {
    let listed = Command::new(qemu)
        .args(["-L", "help"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with('/'))
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if listed.is_empty() {
        vec![PathBuf::from(QEMU_DATA_DIR)]
    } else {
        listed
    }
}

/// Every absolute path in `ldd`'s output: libraries and the loader.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    ensure!(
        !libs.is_empty(),
        "ldd listed no libraries for {}",
        binary.display()
    );
    Ok(libs)
}

/// The `key=value` words of a line.
pub fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// Median, min and max of some samples (NaN for none).
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median (min..max)` with `decimals` digits.
    pub fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}..{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_fields() {
        let s = Stats::of([3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Stats::of([5.0]).cell(1), "5.0 (5.0..5.0)");
        assert!(Stats::of([]).median.is_nan());
        let f = fields("BLKBENCH randread iops=812 ios=4060");
        assert_eq!(f.get("iops"), Some(&"812"));
        assert_eq!(f.len(), 2);
    }
}

/// A VM run could not be measured (as opposed to a setup error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub String);

/// Each VMM's samples, in run order.
pub type Samples<S> = BTreeMap<&'static str, Vec<S>>;

/// The [`Stats`] of `metric` over `vmm`'s samples (NaN when it has none).
pub fn stats_of<S>(samples: &Samples<S>, vmm: &str, metric: impl Fn(&S) -> f64) -> Stats {
    Stats::of(
        samples
            .get(vmm)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(metric),
    )
}

/// Parses every measured run — `runs` gives each one's VMM and label —
/// with `parse`, printing each sample as `show` writes it. Fails with
/// [`RunFailed`], naming every run that could not be measured, unless all
/// were.
pub fn collect_runs<S>(
    outcome: &Outcome,
    runs: impl IntoIterator<Item = (&'static str, String)>,
    parse: impl Fn(&Outcome, &str) -> Result<S>,
    show: impl Fn(&S) -> String,
) -> Result<Samples<S>> {
    let mut samples = Samples::new();
    let mut failures = Vec::new();
    for (vmm, label) in runs {
        match parse(outcome, &label) {
            Ok(sample) => {
                println!("{label}: {}", show(&sample));
                samples.entry(vmm).or_default().push(sample);
            }
            Err(e) => failures.push(format!("{label}: {e:#}")),
        }
    }
    if failures.is_empty() {
        return Ok(samples);
    }
    Err(RunFailed(format!(
        "could not measure: {}\nnested host console tail:\n{}",
        failures.join("; "),
        outcome.console_tail(60)
    ))
    .into())
}

/// A benchmark's exit status: 0 when everything was measured (whether or
/// not a target was met), 1 when a run failed, 2 on setup errors.
pub fn exit_code(name: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(if e.is::<RunFailed>() { 1 } else { 2 })
        }
    }
}

/// The options every benchmark against QEMU shares.
#[derive(clap::Args, Debug)]
pub struct PeerArgs {
    /// The QEMU binary copied into the nested host.
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Value of QEMU's -M option.
    #[arg(long, default_value = "microvm")]
    pub machine: String,
    /// Stream the nested host's console.
    #[arg(long)]
    pub echo: bool,
}
