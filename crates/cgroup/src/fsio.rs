//! Reading and writing cgroup interface files directly, with errors that
//! name the file. Used where cgroups-rs either has no call or hides failures:
//! its readers return 0 on a read error and its v1 `memory.oom_control`
//! parser unwraps, neither acceptable for usage the agent acts on.

use std::fs;
use std::path::Path;

use super::error::{CgroupError, Result};

/// The whole file as text.
pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(CgroupError::io(path, "read"))
}

/// Writes `value` in one `write(2)`, as cgroup files require.
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(CgroupError::io(path, "write"))
}

/// A file holding one unsigned number (e.g. `memory.current`).
pub(crate) fn read_u64(path: &Path, what: &'static str) -> Result<u64> {
    let content = read(path)?;
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what,
        content,
    })
}

/// The value of `key` in a flat-keyed file ("key value" lines, e.g.
/// `memory.events`); `Ok(None)` when the kernel does not report that key.
pub(crate) fn read_keyed(path: &Path, key: &'static str) -> Result<Option<u64>> {
    let content = read(path)?;
    keyed_value(&content, key).map_err(|()| CgroupError::Parse {
        path: path.to_path_buf(),
        what: key,
        content: content.clone(),
    })
}

/// Parses a flat-keyed file's content; `Err` when the key's value is not a
/// number.
pub(crate) fn keyed_value(content: &str, key: &str) -> std::result::Result<Option<u64>, ()> {
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            let value = fields.next().ok_or(())?;
            return value.parse().map(Some).map_err(|_| ());
        }
    }
    Ok(None)
}

/// One pid per line (`cgroup.procs`, `tasks`, `cgroup.threads`).
pub(crate) fn read_pids(path: &Path) -> Result<Vec<u32>> {
    let content = read(path)?;
    content
        .lines()
        .map(|line| {
            line.trim().parse().map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                what: "pid",
                content: line.to_string(),
            })
        })
        .collect()
}

/// Names of the child cgroups (subdirectories) of `dir`.
pub(crate) fn child_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(CgroupError::io(dir, "list"))? {
        let entry = entry.map_err(CgroupError::io(dir, "list"))?;
        let is_dir = entry
            .file_type()
            .map_err(CgroupError::io(entry.path(), "stat"))?
            .is_dir();
        if is_dir {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_keyed_value_finds_exact_key() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Ok(Some(2)));
        assert_eq!(keyed_value(events, "max"), Ok(Some(12)));
        assert_eq!(keyed_value(events, "absent"), Ok(None));
        assert_eq!(keyed_value("oom_kill x\n", "oom_kill"), Err(()));
        assert_eq!(keyed_value("oom_kill\n", "oom_kill"), Err(()));
    }
}
