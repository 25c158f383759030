//! The pod's own `/etc/hostname`, `/etc/hosts` and, when the pod has DNS
//! settings, `/etc/resolv.conf`: written once into the sandbox's
//! directory (`<sandbox>/etc/`) and bound into every container of the
//! pod, as containerd and CRI-O do, so that all containers of a pod agree
//! on who they are and whom they ask, whatever their images carry.
//!
//! The module owns the files' contents and refuses settings that would
//! let a caller write more than the lines it names (a newline or a blank
//! inside a search domain or an option, a server that is not an address).
//! A container's own mount at one of these paths (a kubelet's managed
//! `/etc/hosts`) replaces the pod's.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::error::{Result, RuntimeError};
use super::spec::{BindMount, Propagation};

/// resolv.conf's limits as glibc reads it (MAXNS, MAXDNSRCH in
/// Kubernetes' validation): more would be ignored by the resolver.
pub const MAX_SERVERS: usize = 3;
/// Search domains Kubernetes allows.
pub const MAX_SEARCHES: usize = 32;

/// A pod's DNS settings: resolv.conf's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDns {
    /// `nameserver` addresses.
    pub servers: Vec<IpAddr>,
    /// `search` domains.
    pub searches: Vec<String>,
    /// `options` (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

impl PodDns {
    /// Parses the servers and checks the words; refuses what would not be
    /// one line of resolv.conf per setting.
    pub fn new(servers: &[String], searches: &[String], options: &[String]) -> Result<PodDns> {
        if servers.len() > MAX_SERVERS {
            return Err(RuntimeError::invalid(
                "DNS servers",
                servers.join(","),
                "more than 3",
            ));
        }
        if searches.len() > MAX_SEARCHES {
            return Err(RuntimeError::invalid(
                "DNS search domains",
                searches.join(","),
                "more than 32",
            ));
        }
        let servers = servers
            .iter()
            .map(|s| {
                s.parse::<IpAddr>().map_err(|_| {
                    RuntimeError::invalid("DNS server", s.as_str(), "not an IP address")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for word in searches.iter().chain(options) {
            if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(RuntimeError::invalid(
                    "DNS search domain or option",
                    word.as_str(),
                    "empty or holds a blank or a control character",
                ));
            }
        }
        Ok(PodDns {
            servers,
            searches: searches.to_vec(),
            options: options.to_vec(),
        })
    }

    /// resolv.conf's text.
    pub fn resolv_conf(&self) -> String {
        let mut text = String::new();
        if !self.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// `/etc/hosts` of a pod: loopback names and the pod's own name on its
/// address (the kubelet's layout).
pub fn hosts(hostname: &str, ip: Option<IpAddr>) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    text
}

/// The files of one pod, in `<sandbox dir>/etc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEtc {
    dir: PathBuf,
}

/// Container paths and the pod files bound there.
const FILES: [(&str, &str); 3] = [
    ("/etc/hostname", "hostname"),
    ("/etc/hosts", "hosts"),
    ("/etc/resolv.conf", "resolv.conf"),
];

impl PodEtc {
    /// The files of the sandbox in `sandbox_dir`.
    pub fn of(sandbox_dir: &Path) -> PodEtc {
        PodEtc {
            dir: sandbox_dir.join("etc"),
        }
    }

    /// Writes the files (each through a temporary file renamed into
    /// place), readable by all, owned by `owner` (the pod's root in a pod
    /// with a user namespace, so its containers may change them) when
    /// given.
    pub fn write(
        &self,
        hostname: &str,
        ip: Option<IpAddr>,
        dns: Option<&PodDns>,
        owner: Option<u32>,
    ) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(RuntimeError::io(&self.dir, "create directory"))?;
        self.write_one("hostname", &format!("{hostname}\n"), owner)?;
        self.write_one("hosts", &hosts(hostname, ip), owner)?;
        if let Some(dns) = dns {
            self.write_one("resolv.conf", &dns.resolv_conf(), owner)?;
        }
        Ok(())
    }

    fn write_one(&self, name: &str, text: &str, owner: Option<u32>) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).map_err(RuntimeError::io(&tmp, "write"))?;
        if let Some(id) = owner {
            std::os::unix::fs::chown(&tmp, Some(id), Some(id))
                .map_err(RuntimeError::io(&tmp, "chown"))?;
        }
        fs::rename(&tmp, &path).map_err(RuntimeError::io(&path, "rename into place"))
    }

    /// Bind mounts of the files that exist, read-only when the
    /// container's root is.
    pub fn mounts(&self, readonly: bool) -> Vec<BindMount> {
        FILES
            .iter()
            .map(|(destination, name)| (destination, self.dir.join(name)))
            .filter(|(_, source)| source.is_file())
            .map(|(destination, source)| BindMount {
                source,
                destination: PathBuf::from(destination),
                readonly,
                propagation: Propagation::Private,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_one_line_per_setting() {
        let dns = PodDns::new(
            &["10.96.0.10".into(), "fd00::a".into()],
            &[
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            &["ndots:5".into()],
        )
        .unwrap();
        assert_eq!(
            dns.resolv_conf(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"
        );
    }

    #[test]
    fn injected_lines_and_bad_servers_are_refused() {
        assert!(PodDns::new(&["8.8.8.8\nnameserver 1.1.1.1".into()], &[], &[]).is_err());
        assert!(PodDns::new(&["dns.example".into()], &[], &[]).is_err());
        assert!(PodDns::new(&[], &["a\nnameserver 6.6.6.6".into()], &[]).is_err());
        assert!(PodDns::new(&[], &[], &["ndots:5 attempts:1".into()]).is_err());
        assert!(PodDns::new(&[], &[], &["".into()]).is_err());
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        assert!(PodDns::new(&four, &[], &[]).is_err());
    }

    #[test]
    fn files_are_written_and_bound_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let etc = PodEtc::of(dir.path());
        etc.write("web", Some("10.88.0.5".parse().unwrap()), None, None)
            .unwrap();
        let mounts = etc.mounts(false);
        let destinations: Vec<_> = mounts.iter().map(|m| m.destination.clone()).collect();
        assert_eq!(
            destinations,
            [PathBuf::from("/etc/hostname"), PathBuf::from("/etc/hosts")]
        );
        let hosts = fs::read_to_string(dir.path().join("etc/hosts")).unwrap();
        assert!(hosts.ends_with("10.88.0.5\tweb\n"), "{hosts}");
        let dns = PodDns::new(&["10.96.0.10".into()], &[], &[]).unwrap();
        etc.write("web", None, Some(&dns), None).unwrap();
        assert_eq!(etc.mounts(true).len(), 3);
        assert!(etc.mounts(true).iter().all(|m| m.readonly));
    }
}
