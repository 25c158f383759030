//! `balloon`: Firecracker's `Balloon` body (`PUT /balloon`, the config
//! file's `balloon` section, `GET /balloon`), `BalloonUpdate` (`PATCH
//! /balloon`) and `BalloonStatsUpdate` (`PATCH /balloon/statistics`), with
//! the checks Firecracker makes before boot and their texts.
//!
//! What it refuses: `free_page_hinting` and `free_page_reporting` set to
//! true (the device offers neither feature yet; false, as Firecracker's
//! clients send it, is accepted), and a target larger than the guest's
//! memory. The checks that need the running device (the driver is up, the
//! statistics stay on or off) are the device's
//! ([`crate::devices::virtio::balloon::SharedBalloon`]).

use serde::{Deserialize, Serialize};

use crate::config::BalloonConfig;

/// Firecracker's `BalloonConfigError`; its API prefixes them with
/// "Balloon config error: " (see the controller's `ActionError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("No balloon device found.")]
    DeviceNotFound,
    #[error("Amount of pages requested is too large.")]
    TooManyPagesRequested,
    #[error("{0} is not supported by this VMM yet.")]
    Unsupported(&'static str),
}

/// Firecracker's `Balloon`: what `PUT /balloon` takes and `GET /balloon`
/// returns (the current target after boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonBody {
    /// Target size in MiB: how much memory the guest is asked to give back.
    pub amount_mib: u32,
    /// The guest may take pages back from the balloon rather than OOM-kill.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0 turns statistics off.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonBody {
    /// Firecracker's checks at `PUT /balloon`: the target fits in the
    /// guest's `mem_size_mib`; and ours, the features we do not offer.
    pub fn validate(&self, mem_size_mib: u64) -> Result<(), ConfigError> {
        if self.free_page_hinting {
            return Err(ConfigError::Unsupported("free_page_hinting"));
        }
        if self.free_page_reporting {
            return Err(ConfigError::Unsupported("free_page_reporting"));
        }
        if u64::from(self.amount_mib) > mem_size_mib {
            return Err(ConfigError::TooManyPagesRequested);
        }
        Ok(())
    }

    /// The builder's configuration of the device.
    pub fn to_config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.amount_mib,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_polling_interval_s,
        }
    }
}

/// Firecracker's `BalloonUpdate` (`PATCH /balloon`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdateBody {
    pub amount_mib: u32,
}

/// Firecracker's `BalloonStatsUpdate` (`PATCH /balloon/statistics`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdateBody {
    pub stats_polling_interval_s: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<BalloonBody, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn bodies_parse_as_firecrackers() {
        let b = body(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(
            b.to_config(),
            BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 0,
            }
        );
        let b = body(
            r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 5,
                "free_page_hinting": false, "free_page_reporting": false}"#,
        )
        .unwrap();
        assert_eq!(b.stats_polling_interval_s, 5);
        // deflate_on_oom is required, as in Firecracker's swagger.
        assert!(body(r#"{"amount_mib": 1}"#)
            .unwrap_err()
            .contains("deflate_on_oom"));
        assert!(body(r#"{"amount_mib": -1, "deflate_on_oom": false}"#).is_err());
        assert!(
            body(r#"{"amount_mib": 1, "deflate_on_oom": false, "x": 1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        // The interval is Firecracker's u16.
        assert!(body(
            r#"{"amount_mib": 1, "deflate_on_oom": false, "stats_polling_interval_s": 65536}"#
        )
        .is_err());
        // GET /balloon shows every field, as Firecracker's does.
        let shown = serde_json::to_value(BalloonBody::default()).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"amount_mib": 0, "deflate_on_oom": false,
                "stats_polling_interval_s": 0, "free_page_hinting": false,
                "free_page_reporting": false})
        );
    }

    #[test]
    fn validation_follows_firecracker() {
        let b = |amount_mib, hinting, reporting| BalloonBody {
            amount_mib,
            free_page_hinting: hinting,
            free_page_reporting: reporting,
            ..Default::default()
        };
        assert_eq!(b(128, false, false).validate(128), Ok(()));
        assert_eq!(
            b(129, false, false).validate(128),
            Err(ConfigError::TooManyPagesRequested)
        );
        assert_eq!(
            ConfigError::TooManyPagesRequested.to_string(),
            "Amount of pages requested is too large."
        );
        assert_eq!(
            b(u32::MAX, false, false).validate(u64::from(u32::MAX)),
            Ok(())
        );
        let e = b(0, true, false).validate(128).unwrap_err();
        assert_eq!(
            e.to_string(),
            "free_page_hinting is not supported by this VMM yet."
        );
        assert!(b(0, false, true).validate(128).is_err());
    }

    #[test]
    fn updates_take_only_their_field() {
        let u: BalloonUpdateBody = serde_json::from_str(r#"{"amount_mib": 7}"#).unwrap();
        assert_eq!(u.amount_mib, 7);
        assert!(serde_json::from_str::<BalloonUpdateBody>(
            r#"{"amount_mib": 7, "deflate_on_oom": true}"#
        )
        .is_err());
        let s: BalloonStatsUpdateBody =
            serde_json::from_str(r#"{"stats_polling_interval_s": 2}"#).unwrap();
        assert_eq!(s.stats_polling_interval_s, 2);
        assert!(serde_json::from_str::<BalloonStatsUpdateBody>("{}").is_err());
    }
}
