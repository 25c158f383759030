//! `vsock-host`: the host side of the vsock tests and benchmark, run inside
//! the nested test host (static, like `vmm`).
//!
//!   vsock-host serve PATH                 echo every stream accepted on the
//!                                         Unix socket PATH (guest-initiated
//!                                         streams to port P reach `<uds>_P`)
//!   vsock-host echo UDS PORT BYTES        hybrid-vsock CONNECT to guest PORT
//!                                         through UDS, send BYTES of a pattern,
//!                                         read them back; "HOST-ECHO-OK BYTES"
//!   vsock-host rtt (uds:PATH|cid:N) PORT COUNT SIZE
//!                                         COUNT round trips of SIZE bytes to a
//!                                         guest echo server, through our hybrid
//!                                         socket or the kernel's AF_VSOCK
//!                                         (vhost-vsock); prints the latencies
//!
//! The guest side is guest-images/vsock-tool.c, which uses the same pattern.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

type Result<T> = std::result::Result<T, String>;

fn serve(path: &str) -> Result<()> {
    let listener = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            // A socket that cannot be duplicated is dropped: the guest sees
            // the connection close, as for any other echo failure.
            let Ok(mut reader) = stream.try_clone() else {
                return;
            };
            let _ = std::io::copy(&mut reader, &mut stream);
        });
    }
    Ok(())
}

/// Connects through the hybrid-vsock socket, retrying while the guest
/// has nobody listening yet (the VMM then closes the stream).
fn connect_hybrid(uds: &str, port: u32) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_error = None;
    loop {
        let attempt = UnixStream::connect(uds)
            .map_err(|e| format!("connect {uds}: {e}"))
            .and_then(|mut stream| {
                stream
                    .write_all(format!("CONNECT {port}\n").as_bytes())
                    .map_err(|e| e.to_string())?;
                let mut line = String::new();
                BufReader::new(&stream)
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?;
                if line.starts_with("OK ") && line.ends_with('\n') {
                    Ok(stream)
                } else {
                    Err(format!("port {port}: no OK (got {line:?})"))
                }
            });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => {
                let first = first_error.unwrap_or_else(|| e.clone());
                return Err(format!(
                    "no stream in 60 s; first error: {first}; last: {e}"
                ));
            }
            Err(e) => {
                first_error.get_or_insert(e);
                std::thread::sleep(Duration::from_millis(200))
            }
        }
    }
}

/// Connects with the kernel's AF_VSOCK (to a vhost-vsock guest), a fresh
/// socket per attempt, retrying while the guest has nobody listening yet.
fn connect_vsock(cid: u32, port: u32) -> Result<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_connect_vsock(cid, port) {
            Ok(fd) => return Ok(fd),
            Err(e) => {
                let transient = matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNRESET) | Some(libc::ECONNREFUSED)
                );
                if !transient || Instant::now() > deadline {
                    return Err(format!("connect cid {cid} port {port}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn try_connect_vsock(cid: u32, port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    };
    // SAFETY: addr is a valid sockaddr_vm of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(fd)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn echo(uds: &str, port: u32, bytes: usize) -> Result<()> {
    let mut stream = connect_hybrid(uds, port)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        let data: Vec<u8> = (0..bytes).map(pattern).collect();
        writer.write_all(&data)
    });
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    while got < bytes {
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {bytes} bytes"));
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(got + i)) {
            return Err(format!("byte {} differs", got + i));
        }
        got += n;
    }
    sender
        .join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("write: {e}"))?;
    println!("HOST-ECHO-OK {bytes}");
    Ok(())
}

fn rtt(target: &str, port: u32, count: usize, size: usize) -> Result<()> {
    let mut stream: Box<dyn ReadWrite> = match target.split_once(':') {
        Some(("uds", path)) => Box::new(connect_hybrid(path, port)?),
        Some(("cid", cid)) => {
            let cid = cid.parse().map_err(|_| format!("bad cid {cid}"))?;
            Box::new(std::fs::File::from(connect_vsock(cid, port)?))
        }
        _ => return Err(format!("target {target}: use uds:PATH or cid:N")),
    };
    let message: Vec<u8> = (0..size).map(pattern).collect();
    let mut reply = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    // A few round trips first, so connection set-up is not measured.
    for round in 0..count + 10 {
        let start = Instant::now();
        stream
            .write_all(&message)
            .map_err(|e| format!("write: {e}"))?;
        stream
            .read_exact(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        if round >= 10 {
            samples.push(start.elapsed().as_micros() as u64);
        }
        if reply != message {
            return Err("the echo differs".into());
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let mean = samples.iter().sum::<u64>() / samples.len().max(1) as u64;
    println!(
        "VSOCK-RTT count={count} size={size} p50_us={} p99_us={} mean_us={mean}",
        at(0.5),
        at(0.99)
    );
    Ok(())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn number<T: std::str::FromStr>(text: Option<&String>, what: &str) -> Result<T> {
    text.and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{what}: expected a number"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") if args.len() == 2 => serve(&args[1]),
        Some("echo") if args.len() == 4 => number(args.get(2), "port")
            .and_then(|port| Ok((port, number(args.get(3), "bytes")?)))
            .and_then(|(port, bytes)| echo(&args[1], port, bytes)),
        Some("rtt") if args.len() == 5 => (|| {
            rtt(
                &args[1],
                number(args.get(2), "port")?,
                number(args.get(3), "count")?,
                number(args.get(4), "size")?,
            )
        })(),
        _ => {
            eprintln!("usage: vsock-host serve PATH | echo UDS PORT BYTES | rtt uds:PATH|cid:N PORT COUNT SIZE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-host: {e}");
            ExitCode::FAILURE
        }
    }
}
