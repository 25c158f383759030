//! `logger`: where the VMM's own log lines go (not the guest console).
//!
//! Until a logger is configured the VMM logs nothing, so the command-line
//! behaviour (errors on stderr, the console on stdout) is unchanged. Lines
//! look like Firecracker's:
//! `2024-05-01T12:00:00.123456789 [anonymous-instance:main:INFO] message`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the log file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    Off,
    Error,
    Warning,
    #[default]
    Info,
    Debug,
    Trace,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Off => "Off",
            Level::Error => "Error",
            Level::Warning => "Warn",
            Level::Info => "Info",
            Level::Debug => "Debug",
            Level::Trace => "Trace",
        }
    }
}

// Firecracker accepts the level names in any case.
impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        [
            Level::Off,
            Level::Error,
            Level::Warning,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ]
        .into_iter()
        .find(|level| {
            level.name().eq_ignore_ascii_case(&text)
                || (*level == Level::Warning && text.eq_ignore_ascii_case("warning"))
        })
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown log level {text:?}: expected Error, Warn (or Warning), Info, Debug, \
                 Trace or Off"
            ))
        })
    }
}

impl Serialize for Level {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The body of `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// A file or named pipe; without it lines go to stderr (stdout carries
    /// the guest console).
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub level: Option<Level>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only log lines from modules whose path starts with this.
    #[serde(default)]
    pub module: Option<String>,
}

enum Sink {
    File(File),
    Stderr,
}

struct Logger {
    sink: Sink,
    level: Level,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);
static INSTANCE_ID: OnceLock<String> = OnceLock::new();

/// Names the instance in every log line (Firecracker's `--id`).
pub fn set_instance_id(id: &str) {
    let _ = INSTANCE_ID.set(id.to_string());
}

/// Starts (or redirects) logging as `config` says.
pub fn configure(config: &LoggerConfig) -> Result<(), Error> {
    let sink = match &config.log_path {
        // Read-write and non-blocking, as Firecracker opens it: a named
        // pipe nobody reads yet opens (its reader comes later, as
        // firecracker-go-sdk's does) instead of failing or hanging the
        // API, and a full pipe drops lines instead of stalling the VMM.
        // A regular file is appended to (Firecracker writes from its
        // start over what was there).
        Some(path) => Sink::File(
            OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|source| Error::Open {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => Sink::Stderr,
    };
    let logger = Logger {
        sink,
        level: config.level.unwrap_or_default(),
        show_level: config.show_level.unwrap_or(false),
        show_origin: config.show_log_origin.unwrap_or(false),
        module: config.module.clone(),
    };
    *LOGGER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(logger);
    Ok(())
}

/// Writes one line if a logger is configured and lets it through. Use
/// [`crate::vmm_log!`] rather than calling this directly.
pub fn log(level: Level, module: &str, file: &str, line: u32, message: std::fmt::Arguments) {
    let mut guard = LOGGER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(logger) = guard.as_mut() else {
        return;
    };
    if level == Level::Off || level > logger.level {
        return;
    }
    if logger
        .module
        .as_deref()
        .is_some_and(|prefix| !module.starts_with(prefix))
    {
        return;
    }
    let thread = std::thread::current();
    let mut tag = format!(
        "{}:{}",
        INSTANCE_ID
            .get()
            .map_or("anonymous-instance", String::as_str),
        thread.name().unwrap_or("thread")
    );
    if logger.show_level {
        tag.push(':');
        tag.push_str(&level.name().to_ascii_uppercase());
    }
    if logger.show_origin {
        tag.push_str(&format!(":{file}:{line}"));
    }
    let text = format!("{} [{tag}] {message}\n", timestamp());
    // A log line that cannot be written is dropped: logging must never be
    // the reason the VMM stops.
    let _ = match &mut logger.sink {
        Sink::File(file) => file.write_all(text.as_bytes()),
        Sink::Stderr => std::io::stderr().write_all(text.as_bytes()),
    };
}

/// Logs a line through the configured logger:
/// `vmm_log!(Info, "started {} vCPUs", n)`.
#[macro_export]
macro_rules! vmm_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::vmm_config::logger::log(
            $crate::vmm_config::logger::Level::$level,
            module_path!(),
            file!(),
            line!(),
            format_args!($($arg)+),
        )
    };
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm), to avoid a date crate for one log prefix.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn levels_parse_in_any_case() {
        let c: LoggerConfig = serde_json::from_str(
            r#"{"log_path": "/tmp/x", "level": "warning", "show_level": true}"#,
        )
        .unwrap();
        assert_eq!(c.level, Some(Level::Warning));
        for name in ["warn", "WARN", "Warn", "Warning"] {
            let c: LoggerConfig =
                serde_json::from_str(&format!(r#"{{"level": "{name}"}}"#)).unwrap();
            assert_eq!(c.level, Some(Level::Warning), "{name}");
        }
        assert!(serde_json::from_str::<LoggerConfig>(r#"{"level": "loud"}"#).is_err());
        assert!(serde_json::from_str::<LoggerConfig>(r#"{"path": "/x"}"#).is_err());
    }
}
