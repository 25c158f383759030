//! `boot-source`: the kernel, initrd and command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::layout::CMDLINE_MAX_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel file {path} cannot be opened: {source}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initrd file {path} cannot be opened: {source}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("boot_args is {0} bytes; Linux accepts at most {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("boot_args contains a NUL byte")]
    CmdlineNul,
}

/// The body of `PUT /boot-source`. Without `boot_args` the VM boots with
/// [`crate::config::DEFAULT_CMDLINE`]; like Firecracker, the configuration
/// reports what was given (`null`), not the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: PathBuf,
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

impl BootSourceConfig {
    /// Checks the files can be opened now, as Firecracker does, so a typo
    /// fails at the PUT that made it rather than at InstanceStart. The
    /// builder opens them again at start (they may have changed since).
    pub fn validate(&self) -> Result<(), Error> {
        open_file(&self.kernel_image_path).map_err(|source| Error::Kernel {
            path: self.kernel_image_path.clone(),
            source,
        })?;
        if let Some(initrd) = &self.initrd_path {
            open_file(initrd).map_err(|source| Error::Initrd {
                path: initrd.clone(),
                source,
            })?;
        }
        if let Some(args) = &self.boot_args {
            if args.len() >= CMDLINE_MAX_SIZE {
                return Err(Error::CmdlineTooLong(args.len()));
            }
            if args.contains('\0') {
                return Err(Error::CmdlineNul);
            }
        }
        Ok(())
    }
}

fn open_file(path: &Path) -> std::io::Result<()> {
    crate::image_file::open(path, false).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecracker_body_and_checks_files() {
        let config: BootSourceConfig = serde_json::from_str(
            r#"{"kernel_image_path": "/nonexistent/vmlinux", "boot_args": "console=ttyS0"}"#,
        )
        .unwrap();
        assert_eq!(config.initrd_path, None);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/vmlinux"), "{error}");
        assert!(serde_json::from_str::<BootSourceConfig>(r#"{"boot_args": "x"}"#).is_err());
        assert!(serde_json::from_str::<BootSourceConfig>(
            r#"{"kernel_image_path": "/k", "kernel_args": "x"}"#
        )
        .is_err());
    }
}
