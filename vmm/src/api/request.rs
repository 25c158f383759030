//! Routing: an HTTP request (method, path, JSON body) to a [`VmmAction`],
//! with Firecracker's paths, bodies and error texts. Endpoints Firecracker
//! has and we do not yet are answered 400 naming the endpoint, so a client
//! learns what is missing rather than seeing a generic "invalid path".

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::controller::VmmAction;
use super::http::{Method, Request};
use crate::mmds::MmdsVersion;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("Invalid request method and/or path: {0} {1}.")]
    InvalidPathMethod(Method, String),
    #[error("{0} {1} is not supported by this VMM yet.")]
    UnsupportedEndpoint(Method, String),
    #[error("The action {0} is not supported by this VMM yet.")]
    UnsupportedAction(&'static str),
    #[error("Empty {0} request.")]
    EmptyBody(Method),
    #[error("GET request cannot have a body.")]
    BodyOnGet,
    #[error("Unrecognized PUT request path `{0}`.")]
    UnrecognizedPutPath(String),
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(#[from] serde_json::Error),
}

/// Firecracker's `InstanceActionInfo`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

/// Firecracker's `Vm` (`PATCH /vm`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Debug, Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

/// Our own actions, under `/stratum` so they never collide with
/// Firecracker's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StratumActionBody {
    action_type: StratumAction,
}

#[derive(Debug, Deserialize)]
enum StratumAction {
    /// End the VM now, without asking the guest.
    HardStop,
}

/// Firecracker endpoints we do not serve yet, by first path segment (and
/// the balloon's free page hinting, `/balloon/hinting/...`).
const UNSUPPORTED: &[&str] = &["hotplug", "pmem", "vm"];

/// Why Firecracker deprecates what `action` asks for, if it does: the
/// answer then carries `Deprecation: true` and the log says why, as
/// Firecracker's do.
pub fn deprecation(action: &VmmAction) -> Option<&'static str> {
    match action {
        VmmAction::PutMachineConfig(config) if config.cpu_template.is_some() => {
            Some("PUT /machine-config: cpu_template is deprecated")
        }
        VmmAction::PatchMachineConfig(update) if update.cpu_template.is_some() => {
            Some("PATCH /machine-config: cpu_template is deprecated")
        }
        VmmAction::PutVsock(vsock) if vsock.vsock_id.is_some() => {
            Some("PUT /vsock: vsock_id is deprecated")
        }
        VmmAction::LoadSnapshot(load) if load.deprecated() => {
            Some("PUT /snapshot/load: mem_file_path and enable_diff_snapshots are deprecated")
        }
        VmmAction::PutMmdsConfig(config) if config.version == MmdsVersion::V1 => {
            Some("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
        }
        _ => None,
    }
}

/// The action `request` asks for.
pub fn parse(request: &Request) -> Result<VmmAction, RequestError> {
    // Empty segments are ignored, so a trailing slash changes nothing.
    let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method;
    if method == Method::Get && !request.body.is_empty() {
        return Err(RequestError::BodyOnGet);
    }
    match (method, segments.as_slice()) {
        (Method::Get, []) => Ok(VmmAction::GetInstanceInfo),
        (Method::Get, ["version"]) => Ok(VmmAction::GetVersion),
        (Method::Get, ["machine-config"]) => Ok(VmmAction::GetMachineConfig),
        (Method::Get, ["vm", "config"]) => Ok(VmmAction::GetVmConfig),
        (Method::Put, ["machine-config"]) => Ok(VmmAction::PutMachineConfig(body(request)?)),
        (Method::Patch, ["machine-config"]) => Ok(VmmAction::PatchMachineConfig(body(request)?)),
        (Method::Put, ["boot-source"]) => Ok(VmmAction::PutBootSource(body(request)?)),
        (Method::Put, ["logger"]) => Ok(VmmAction::PutLogger(body(request)?)),
        (Method::Put, ["serial"]) => Ok(VmmAction::PutSerial(body(request)?)),
        (Method::Put, ["cpu-config"]) => Ok(VmmAction::PutCpuConfig(body(request)?)),
        (Method::Put, ["metrics"]) => Ok(VmmAction::PutMetrics(body(request)?)),
        (Method::Put, ["actions"]) => {
            let action: ActionBody = body(request)?;
            match action.action_type {
                ActionType::InstanceStart => Ok(VmmAction::InstanceStart),
                ActionType::FlushMetrics => Ok(VmmAction::FlushMetrics),
                ActionType::SendCtrlAltDel => Ok(VmmAction::SendCtrlAltDel),
            }
        }
        (Method::Put, ["drives", id]) => Ok(VmmAction::PutDrive(id.to_string(), body(request)?)),
        (Method::Put, ["network-interfaces", id]) => Ok(VmmAction::PutNetworkInterface(
            id.to_string(),
            body(request)?,
        )),
        (Method::Patch, ["drives", id]) => {
            Ok(VmmAction::PatchDrive(id.to_string(), body(request)?))
        }
        (Method::Patch, ["network-interfaces", id]) => Ok(VmmAction::PatchNetworkInterface(
            id.to_string(),
            body(request)?,
        )),
        (Method::Put, ["entropy"]) => Ok(VmmAction::PutEntropy(body(request)?)),
        (Method::Put, ["vsock"]) => Ok(VmmAction::PutVsock(body(request)?)),
        (Method::Put, ["snapshot", "create"]) => Ok(VmmAction::CreateSnapshot(body(request)?)),
        (Method::Put, ["snapshot", "load"]) => Ok(VmmAction::LoadSnapshot(body(request)?)),
        (Method::Get, ["balloon"]) => Ok(VmmAction::GetBalloon),
        (Method::Put, ["balloon"]) => Ok(VmmAction::PutBalloon(body(request)?)),
        (Method::Patch, ["balloon"]) => Ok(VmmAction::PatchBalloon(body(request)?)),
        (Method::Get, ["balloon", "statistics"]) => Ok(VmmAction::GetBalloonStats),
        (Method::Patch, ["balloon", "statistics"]) => {
            Ok(VmmAction::PatchBalloonStats(body(request)?))
        }
        (_, ["balloon", "hinting", ..]) => Err(RequestError::UnsupportedEndpoint(
            method,
            request.path.clone(),
        )),
        (Method::Patch, ["vm"]) => {
            let vm: VmStateBody = body(request)?;
            Ok(VmmAction::PatchVmPaused(matches!(
                vm.state,
                VmState::Paused
            )))
        }
        // As Firecracker routes them: by the first segment alone, but for
        // PUT's `config`.
        (Method::Get, ["mmds", ..]) => Ok(VmmAction::GetMmds),
        (Method::Put, ["mmds"]) => Ok(VmmAction::PutMmds(body(request)?)),
        (Method::Put, ["mmds", "config"]) => Ok(VmmAction::PutMmdsConfig(body(request)?)),
        (Method::Put, ["mmds", other, ..]) => {
            Err(RequestError::UnrecognizedPutPath(other.to_string()))
        }
        (Method::Patch, ["mmds", ..]) => Ok(VmmAction::PatchMmds(body(request)?)),
        (Method::Get, ["stratum", "stats"]) => Ok(VmmAction::GetStats),
        (Method::Put, ["stratum", "actions"]) => {
            let action: StratumActionBody = body(request)?;
            match action.action_type {
                StratumAction::HardStop => Ok(VmmAction::HardStop),
            }
        }
        (_, [first, ..]) if UNSUPPORTED.contains(first) => Err(RequestError::UnsupportedEndpoint(
            method,
            request.path.clone(),
        )),
        _ => Err(RequestError::InvalidPathMethod(
            method,
            request.path.clone(),
        )),
    }
}

fn body<T: DeserializeOwned>(request: &Request) -> Result<T, RequestError> {
    if request.body.is_empty() {
        return Err(RequestError::EmptyBody(request.method));
    }
    Ok(serde_json::from_slice(&request.body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str, body: &str) -> Result<VmmAction, String> {
        parse(&Request {
            method,
            path: path.to_string(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn routes() {
        assert_eq!(route(Method::Get, "/", ""), Ok(VmmAction::GetInstanceInfo));
        assert_eq!(
            route(Method::Get, "/vm/config/", ""),
            Ok(VmmAction::GetVmConfig)
        );
        assert_eq!(
            route(
                Method::Put,
                "/actions",
                r#"{"action_type": "InstanceStart"}"#
            ),
            Ok(VmmAction::InstanceStart)
        );
        assert!(matches!(
            route(
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 64}"#
            ),
            Ok(VmmAction::PutMachineConfig(_))
        ));
    }

    #[test]
    fn balloon_routes() {
        assert!(matches!(
            route(
                Method::Put,
                "/balloon",
                r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#
            ),
            Ok(VmmAction::PutBalloon(b)) if b.amount_mib == 64 && b.deflate_on_oom
        ));
        assert_eq!(
            route(Method::Get, "/balloon", ""),
            Ok(VmmAction::GetBalloon)
        );
        assert!(matches!(
            route(Method::Patch, "/balloon", r#"{"amount_mib": 32}"#),
            Ok(VmmAction::PatchBalloon(u)) if u.amount_mib == 32
        ));
        assert_eq!(
            route(Method::Get, "/balloon/statistics", ""),
            Ok(VmmAction::GetBalloonStats)
        );
        assert!(matches!(
            route(
                Method::Patch,
                "/balloon/statistics",
                r#"{"stats_polling_interval_s": 5}"#
            ),
            Ok(VmmAction::PatchBalloonStats(u)) if u.stats_polling_interval_s == 5
        ));
        let e = route(
            Method::Patch,
            "/balloon",
            r#"{"amount_mib": 1, "deflate_on_oom": true}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `deflate_on_oom`"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = route(Method::Put, "/drives/rootfs", "{}").unwrap_err();
        assert!(e.contains("missing field `drive_id`"), "{e}");
        let e = route(Method::Put, "/vsock", "{}").unwrap_err();
        assert!(e.contains("missing field `guest_cid`"), "{e}");
        let e = route(Method::Put, "/balloon", "{}").unwrap_err();
        assert!(e.contains("missing field `amount_mib`"), "{e}");
        let e = route(Method::Get, "/balloon/hinting/status", "").unwrap_err();
        assert_eq!(
            e,
            "GET /balloon/hinting/status is not supported by this VMM yet."
        );
        let e = route(Method::Patch, "/balloon/hinting/start", "").unwrap_err();
        assert_eq!(
            e,
            "PATCH /balloon/hinting/start is not supported by this VMM yet."
        );
        let e = route(Method::Get, "/balloon/other", "").unwrap_err();
        assert_eq!(e, "Invalid request method and/or path: GET /balloon/other.");
        let e = route(Method::Patch, "/balloon", "").unwrap_err();
        assert_eq!(e, "Empty PATCH request.");
        assert_eq!(
            route(Method::Patch, "/vm", r#"{"state": "Paused"}"#),
            Ok(VmmAction::PatchVmPaused(true))
        );
        let e = route(Method::Patch, "/vm", r#"{"state": "Asleep"}"#).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        assert_eq!(
            route(
                Method::Put,
                "/stratum/actions",
                r#"{"action_type": "HardStop"}"#
            ),
            Ok(VmmAction::HardStop)
        );
        assert!(matches!(
            route(
                Method::Patch,
                "/drives/data",
                r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#
            ),
            Ok(VmmAction::PatchDrive(id, _)) if id == "data"
        ));
        assert!(matches!(
            route(
                Method::Patch,
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#
            ),
            Ok(VmmAction::PatchNetworkInterface(id, _)) if id == "eth0"
        ));
        let e = route(
            Method::Patch,
            "/drives/data",
            r#"{"drive_id": "data", "is_root_device": true}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `is_root_device`"), "{e}");
        let e = route(Method::Get, "/drives/data", "").unwrap_err();
        assert_eq!(e, "Invalid request method and/or path: GET /drives/data.");
        let e = route(Method::Get, "/nothing", "").unwrap_err();
        assert_eq!(e, "Invalid request method and/or path: GET /nothing.");
        assert_eq!(
            route(
                Method::Put,
                "/actions",
                r#"{"action_type": "SendCtrlAltDel"}"#
            ),
            Ok(VmmAction::SendCtrlAltDel)
        );
        let e = route(Method::Put, "/actions", r#"{"action_type": "Reboot"}"#).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        assert_eq!(
            route(Method::Put, "/boot-source", "").unwrap_err(),
            "Empty PUT request."
        );
        assert!(route(Method::Get, "/", "x").is_err());
        let e = route(
            Method::Put,
            "/boot-source",
            r#"{"kernel_image_path": "k", "x": 1}"#,
        );
        assert!(e.unwrap_err().contains("unknown field `x`"));
    }
}
