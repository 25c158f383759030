//! `stratum-vm-image`: makes a VM image — a kernel, an optional initramfs
//! and a raw root disk — into an OCI image layout directory, which `nodectl
//! image import` takes into a node's store and `skopeo copy oci:DIR:TAG
//! docker://REGISTRY/NAME:TAG` pushes to a registry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use stratum_image::vm_layout::{write_vm_layout, VmImageSource};

#[derive(Parser)]
#[command(about = "Make a VM image (kernel, initramfs, raw disk) into an OCI image layout")]
struct Args {
    /// The guest kernel (bzImage or ELF vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// The initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The root disk: a raw image (sparse or not), stored gzip-compressed.
    #[arg(long)]
    disk: PathBuf,
    /// The image's default kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The tag the layout names the image by.
    #[arg(long, default_value = "latest")]
    tag: String,
    /// The layout directory to create (it must not exist).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.out.exists() {
        eprintln!("stratum-vm-image: {} exists", args.out.display());
        return ExitCode::from(2);
    }
    let source = VmImageSource {
        kernel: args.kernel,
        initrd: args.initrd,
        disk: args.disk,
        cmdline: args.cmdline,
        tag: args.tag,
    };
    match write_vm_layout(&source, &args.out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&args.out);
            eprintln!("stratum-vm-image: {e}");
            ExitCode::FAILURE
        }
    }
}
