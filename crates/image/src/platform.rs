//! Choosing the image for this host from a multi-platform index. The node
//! runs linux/amd64 only (the `vmm` is KVM on x86-64), so that is the one
//! platform selected, whatever the index lists first.

use oci_spec::image::{Arch, Descriptor, ImageIndex, Os};

/// The platform pulled and imported, as `os/arch`.
pub const PLATFORM: &str = "linux/amd64";

/// The first linux/amd64 entry of `index`; entries without a platform
/// are skipped (they are attestations or artifacts).
pub fn select(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|d| is_host_platform(d))
}

/// Whether a descriptor declares linux/amd64.
pub fn is_host_platform(descriptor: &Descriptor) -> bool {
    descriptor
        .platform()
        .as_ref()
        .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_linux_amd64_not_the_first_entry() {
        let json = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
          "manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222"},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333",
             "platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let index = ImageIndex::from_reader(json.as_bytes()).expect("index");
        let chosen = select(&index).map(|d| d.digest().to_string());
        assert_eq!(
            chosen.as_deref(),
            Some(&*format!("sha256:{}", "3".repeat(64)))
        );
    }
}
