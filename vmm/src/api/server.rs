//! The API socket: accepts connections and serves each on its own thread,
//! so an idle keep-alive client (the Go SDK pools connections) never blocks
//! another. Requests are serialised by the controller's lock.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::controller::{Controller, VmmData};
use super::http::{self, Parsed, Response, StatusCode};
use super::request;
use crate::{vmm_log, VmController};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    max_body: usize,
}

impl ApiServer {
    /// Binds `path`. An existing file there is an error, as in Firecracker:
    /// it may be another VMM's live socket.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            max_body: http::DEFAULT_MAX_BODY_SIZE,
        })
    }

    /// Firecracker's `--http-api-max-payload-size`: the largest request
    /// body served; a larger one is answered 400.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests on a background thread for the rest of the process.
    /// The thread holds no guest state: the process exits without joining
    /// it once the VM ends.
    pub fn spawn(self, controller: Arc<Mutex<Controller>>) -> Result<JoinHandle<()>, Error> {
        std::thread::Builder::new()
            .name("fc_api".into())
            .spawn(move || self.serve(&controller))
            .map_err(Error::Thread)
    }

    fn serve(self, controller: &Arc<Mutex<Controller>>) {
        vmm_log!(Info, "API server listening on {}", self.path.display());
        // Until the VM runs this thread (and the connection threads it
        // starts, which inherit its filter) may have to build it; then it
        // narrows itself to the API's run-time filter.
        let mut narrowed = false;
        let max_body = self.max_body;
        narrow_once_started(&mut narrowed);
        for stream in self.listener.incoming() {
            narrow_once_started(&mut narrowed);
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    vmm_log!(Warning, "API socket accept failed: {error}");
                    continue;
                }
            };
            let controller = Arc::clone(controller);
            let spawned = std::thread::Builder::new()
                .name("fc_api_conn".into())
                .spawn(move || serve_connection(stream, &controller, narrowed, max_body));
            if let Err(error) = spawned {
                vmm_log!(
                    Error,
                    "cannot start a thread for an API connection: {error}"
                );
            }
        }
    }
}

/// Installs the API filter on this thread once the VM runs, at most once.
fn narrow_once_started(narrowed: &mut bool) {
    if !*narrowed && crate::seccomp::vm_started() {
        crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Api);
        *narrowed = true;
    }
}

/// Reads requests until the client closes, asks to close, or sends bytes
/// we cannot frame. I/O errors end the connection, never the VMM. A body
/// over `max_body` is answered 400 as in Firecracker, which keeps the
/// connection; this closes it, since the refused body's bytes cannot be
/// told from the next request's.
///
/// `narrowed`: whether the thread already runs under the API filter
/// (inherited). If not, it installs it before serving a request once the
/// VM runs, and after the request that started it.
fn serve_connection(
    mut stream: UnixStream,
    controller: &Mutex<Controller>,
    mut narrowed: bool,
    max_body: usize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut continue_sent = false;
    loop {
        loop {
            match http::parse(&buf, max_body) {
                Ok(Parsed::Complete(request, used)) => {
                    buf.drain(..used);
                    continue_sent = false;
                    narrow_once_started(&mut narrowed);
                    let (response, stop) = dispatch(&request, controller);
                    let written = stream.write_all(&response.to_bytes(request.keep_alive));
                    if let Some(vm) = stop {
                        vm.stop();
                    }
                    narrow_once_started(&mut narrowed);
                    if written.is_err() || !request.keep_alive {
                        return;
                    }
                }
                Ok(Parsed::Partial { expects_continue }) => {
                    if expects_continue && !continue_sent {
                        if stream.write_all(http::CONTINUE).is_err() {
                            return;
                        }
                        continue_sent = true;
                    }
                    break;
                }
                Err(error) => {
                    vmm_log!(Warning, "malformed API request: {error}");
                    let response = Response::framing_error(&error);
                    let _ = stream.write_all(&response.to_bytes(false));
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The response, and the VM to stop once it is written (a hard stop).
fn dispatch(
    request: &http::Request,
    controller: &Mutex<Controller>,
) -> (Response, Option<VmController>) {
    vmm_log!(
        Info,
        "The API server received a {} request on \"{}\".",
        request.method,
        request.path
    );
    let action = match request::parse(request) {
        Ok(action) => action,
        Err(error) => {
            vmm_log!(Warning, "{error}");
            return (
                Response::fault(StatusCode::BadRequest, &error.to_string()),
                None,
            );
        }
    };
    let deprecation = request::deprecation(&action);
    if let Some(why) = deprecation {
        vmm_log!(Warning, "{why}");
    }
    // A panic while holding the lock would poison it; the controller's
    // state is only changed after every check passed, so it stays usable.
    let mut controller = controller
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (response, stop) = match controller.handle(action) {
        Ok(VmmData::StopAfterReply(vm)) => (Response::no_content(), Some(vm)),
        Ok(data) => (data_response(data), None),
        Err(error) => {
            let status = if error.is_payload_too_large() {
                StatusCode::PayloadTooLarge
            } else {
                StatusCode::BadRequest
            };
            (Response::fault(status, &error.to_string()), None)
        }
    };
    match deprecation {
        Some(_) => (response.deprecated(), stop),
        None => (response, stop),
    }
}

fn data_response(data: VmmData) -> Response {
    let body = match data {
        VmmData::Empty | VmmData::StopAfterReply(_) => return Response::no_content(),
        VmmData::InstanceInfo(info) => serde_json::to_vec(&info),
        VmmData::Version(version) => serde_json::to_vec(&version),
        VmmData::MachineConfig(config) => serde_json::to_vec(&config),
        VmmData::FullConfig(config) => serde_json::to_vec(&config),
        VmmData::Stats(stats) => serde_json::to_vec(&stats),
        VmmData::Balloon(balloon) => serde_json::to_vec(&balloon),
        VmmData::BalloonStats(stats) => serde_json::to_vec(&stats),
        VmmData::Mmds(data) => serde_json::to_vec(&data),
    };
    match body {
        Ok(body) => Response::json(StatusCode::Ok, body),
        Err(error) => Response::fault(
            StatusCode::InternalServerError,
            &format!("cannot serialise the response: {error}"),
        ),
    }
}
