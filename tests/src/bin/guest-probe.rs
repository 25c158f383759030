//! `guest-probe`: the host end of the guest agent protocol, for tests and
//! benchmarks in the nested host. Connects to a VM's guest agent through
//! the VM's hybrid-vsock socket (our vmm) or to its vsock CID (QEMU's
//! vhost-vsock), says Hello, waits until the guest reports ready, pings
//! it, optionally asks it to power off, and prints what it saw as
//! `GUEST-...` lines. With `--console FILE --mark NAME=TEXT` it also
//! follows the VM's console and notes when each TEXT first appears:
//!
//!   GUEST-MARK <name> after_ms=<since start>
//!   GUEST-HELLO agent=<agent version> after_ms=<since start>
//!   GUEST-READY after_ms=<since start> detail=<how> hostname=<h> os=<os> kernel=<k>
//!   GUEST-IF <name> <mac> <address>...
//!   GUEST-PONG
//!   GUEST-SHUTDOWN-ACK
//!
//! Exits 0 when all of that happened within --timeout, 1 otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use stratum_guest::proto::{guest_message, host_message, GuestMessage, HostMessage};
use stratum_guest::{encode, FrameDecoder, PROTOCOL_VERSION};

#[derive(Parser)]
#[command(about = "Talk to a VM's guest agent over hybrid vsock or vsock")]
struct Args {
    /// The VM's hybrid-vsock Unix socket.
    #[arg(long, required_unless_present = "cid")]
    uds: Option<PathBuf>,
    /// The VM's vsock CID (vhost-vsock), instead of --uds.
    #[arg(long, conflicts_with = "uds")]
    cid: Option<u32>,
    /// The VM's console log, followed for --mark texts.
    #[arg(long, requires = "mark")]
    console: Option<PathBuf>,
    /// NAME=TEXT: print `GUEST-MARK NAME after_ms=…` when TEXT first
    /// appears in the console (repeatable).
    #[arg(long, value_parser = parse_mark)]
    mark: Vec<(String, String)>,
    #[arg(long, default_value_t = stratum_guest::PORT)]
    port: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Ask the guest to power off once it is ready.
    #[arg(long)]
    shutdown: bool,
}

fn parse_mark(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .ok_or_else(|| format!("expected NAME=TEXT, got {text:?}"))
}

/// A connection to the guest agent, whichever the transport.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn main() -> ExitCode {
    let args = Args::parse();
    match probe(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &Args) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    if let Some(console) = &args.console {
        follow_console(console.clone(), args.mark.clone(), start, deadline);
    }
    let mut stream = connect(args, deadline)?;
    let ms = || start.elapsed().as_millis();
    send(
        &mut stream,
        1,
        host_message::Body::Hello(stratum_guest::proto::Hello {
            protocol_version: PROTOCOL_VERSION,
        }),
    )?;
    let mut decoder = FrameDecoder::new();
    loop {
        let message = receive(&mut stream, &mut decoder)?;
        match message.body {
            Some(guest_message::Body::Hello(hello)) => {
                println!(
                    "GUEST-HELLO agent={} after_ms={}",
                    hello.agent_version,
                    ms()
                );
            }
            Some(guest_message::Body::Status(status)) if status.ready => {
                println!(
                    "GUEST-READY after_ms={} detail={} hostname={} os={} kernel={}",
                    ms(),
                    status.ready_detail,
                    status.hostname,
                    status.os,
                    status.kernel
                );
                for i in &status.interfaces {
                    println!("GUEST-IF {} {} {}", i.name, i.mac, i.addresses.join(" "));
                }
                break;
            }
            Some(guest_message::Body::Error(e)) => {
                return Err(format!("guest error: {}", e.message))
            }
            _ => {}
        }
    }
    send(
        &mut stream,
        2,
        host_message::Body::Ping(stratum_guest::proto::Ping {}),
    )?;
    wait_for(&mut stream, &mut decoder, 2, "GUEST-PONG")?;
    if args.shutdown {
        let shutdown = stratum_guest::proto::Shutdown { reboot: false };
        send(&mut stream, 3, host_message::Body::Shutdown(shutdown))?;
        wait_for(&mut stream, &mut decoder, 3, "GUEST-SHUTDOWN-ACK")?;
    }
    Ok(())
}

/// Prints a `GUEST-MARK` line the first time each mark's text appears in
/// the console file, on a thread of its own, until all have or the
/// deadline passes.
fn follow_console(
    console: PathBuf,
    mut marks: Vec<(String, String)>,
    start: Instant,
    deadline: Instant,
) {
    thread::spawn(move || {
        let mut seen = Vec::new();
        let mut offset = 0;
        while !marks.is_empty() && Instant::now() < deadline {
            if let Ok(bytes) = std::fs::read(&console) {
                seen.extend_from_slice(bytes.get(offset..).unwrap_or_default());
                offset = bytes.len();
            }
            let text = String::from_utf8_lossy(&seen);
            marks.retain(|(name, pattern)| {
                let found = text.contains(pattern.as_str());
                if found {
                    println!("GUEST-MARK {name} after_ms={}", start.elapsed().as_millis());
                }
                !found
            });
            thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Retries until the guest agent listens: before that the VM's vsock
/// device refuses the stream (and vmm closes the socket).
fn connect(args: &Args, deadline: Instant) -> Result<Box<dyn Stream>, String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Some(left.max(Duration::from_secs(1)));
        let connected: Result<Box<dyn Stream>, String> = match args.cid {
            Some(cid) => vsock::VsockStream::connect_with_cid_port(cid, args.port)
                .and_then(|s| s.set_read_timeout(timeout).map(|()| s))
                .map(|s| Box::new(s) as Box<dyn Stream>)
                .map_err(|e| e.to_string()),
            None => try_connect(args).and_then(|s| {
                s.set_read_timeout(timeout)
                    .map(|()| Box::new(s) as Box<dyn Stream>)
                    .map_err(|e| e.to_string())
            }),
        };
        match connected {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "no guest agent on port {} before the timeout ({last})",
        args.port
    ))
}

fn try_connect(args: &Args) -> Result<UnixStream, String> {
    let uds = args.uds.as_ref().ok_or("no --uds")?;
    let mut stream = UnixStream::connect(uds).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {}\n", args.port).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(64)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(format!("vmm answered {line:?}"))
    }
}

fn send(stream: &mut dyn Stream, id: u64, body: host_message::Body) -> Result<(), String> {
    let frame = encode(&HostMessage {
        id,
        body: Some(body),
    })
    .map_err(|e| e.to_string())?;
    stream.write_all(&frame).map_err(|e| e.to_string())
}

fn receive(stream: &mut dyn Stream, decoder: &mut FrameDecoder) -> Result<GuestMessage, String> {
    let mut buf = vec![0u8; stratum_guest::HEADER_LEN + stratum_guest::MAX_FRAME];
    loop {
        if let Some(message) = decoder.next_message().map_err(|e| e.to_string())? {
            return Ok(message);
        }
        let wanted = decoder.wanted();
        let n = stream
            .read(&mut buf[..wanted])
            .map_err(|e| format!("reading from the guest: {e}"))?;
        if n == 0 {
            return Err("the guest closed the connection".into());
        }
        decoder.push(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

/// Reads until the answer to `id`, printing `marker` when it is not an error.
fn wait_for(
    stream: &mut dyn Stream,
    decoder: &mut FrameDecoder,
    id: u64,
    marker: &str,
) -> Result<(), String> {
    loop {
        let message = receive(stream, decoder)?;
        if message.id != id {
            continue;
        }
        return match message.body {
            Some(guest_message::Body::Error(e)) => Err(format!("guest error: {}", e.message)),
            _ => {
                println!("{marker}");
                Ok(())
            }
        };
    }
}
