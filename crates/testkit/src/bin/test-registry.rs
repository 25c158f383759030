//! `test-registry`: a throwaway `docker-registry` on loopback (plain HTTP)
//! holding a busybox image built from the host's static busybox, for
//! trying pods by hand. Prints the image reference and the agent option
//! that lets the agent pull from it, then serves until stdin closes,
//! Ctrl-C or SIGTERM; the registry and its storage go with it. Needs root
//! and the Debian packages docker-registry, umoci, skopeo and
//! busybox-static.

use std::io::Read;
use std::process::ExitCode;

use stratum_testkit::fixture::registry_with_busybox;

/// Blocks SIGINT, SIGTERM and SIGHUP in every thread (call before any
/// is spawned) and returns the set, for [`wait_for_end`].
fn block_end_signals() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value for sigemptyset to set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; the signal numbers are valid; the
    // mask is changed for this thread, whose children inherit it.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Returns once stdin closes or one of `set`'s signals arrives, so that
/// `main` drops the registry (and so stops it) in every case.
fn wait_for_end(set: &libc::sigset_t) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        // SAFETY: kill(2) to our own pid with a blocked signal, which the
        // main thread collects with sigwait.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    });
    let mut signal = 0;
    // SAFETY: `set` holds blocked signals; `signal` is a live int.
    unsafe { libc::sigwait(set, &mut signal) };
}

fn main() -> ExitCode {
    let end_signals = block_end_signals();
    let work = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("test-registry: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (registry, reference) = match registry_with_busybox(work.path()) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("test-registry: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{reference}");
    eprintln!(
        "test-registry: serving {reference}; start the agent with \
         --insecure-registry {} (make run AGENT_ARGS='--insecure-registry {}'); \
         Ctrl-C or Ctrl-D stops it",
        registry.addr(),
        registry.addr()
    );
    wait_for_end(&end_signals);
    drop(registry);
    ExitCode::SUCCESS
}
