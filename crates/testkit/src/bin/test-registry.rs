//! `test-registry`: a throwaway `docker-registry` on loopback (plain HTTP)
//! holding a busybox image built from the host's static busybox, for
//! trying pods by hand. Prints the image reference and the agent option
//! that lets the agent pull from it, then serves until stdin closes or
//! Ctrl-C; the registry and its storage go with it. Needs root and the
//! Debian packages docker-registry, umoci, skopeo and busybox-static.

use std::io::Read;
use std::process::ExitCode;

use stratum_testkit::fixture::registry_with_busybox;

fn main() -> ExitCode {
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
         close stdin (Ctrl-D) to stop",
        registry.addr(),
        registry.addr()
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(registry);
    ExitCode::SUCCESS
}
