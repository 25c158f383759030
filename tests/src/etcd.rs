//! The etcd cluster of node VMs, as the cluster scenario (tests/tests/
//! etcd_cluster.rs) and its benchmark (`bench-cluster`) both make it: three
//! members with static addresses on one /24, each started by its
//! cloud-init user-data. One definition, so that the benchmark's peer boots
//! exactly what the test proves works.

/// The members' network, without its last octet; the gateway is `.1`.
pub const NET: &str = "10.40.0";
/// Each member's name and last octet.
pub const MEMBERS: [(&str, &str); 3] = [("etcd-1", "11"), ("etcd-2", "12"), ("etcd-3", "13")];

/// Member `name`'s address (no prefix), if it is one of [`MEMBERS`].
pub fn member_address(name: &str) -> Option<String> {
    MEMBERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, host)| format!("{NET}.{host}"))
}

/// A member's user-data: etcd's settings (Debian's unit reads
/// /etc/default/etcd), enabled so that it comes back after a restart,
/// started without waiting (its start blocks until a quorum is up). Slow
/// heartbeats: the members share one emulated CPU. None for a name that
/// is not a member.
pub fn member_user_data(name: &str) -> Option<String> {
    let ip = member_address(name)?;
    let cluster: Vec<String> = MEMBERS
        .iter()
        .map(|(n, host)| format!("{n}=http://{NET}.{host}:2380"))
        .collect();
    Some(format!(
        "#cloud-config\n\
         write_files:\n\
         \x20 - path: /etc/default/etcd\n\
         \x20   content: |\n\
         \x20     ETCD_NAME={name}\n\
         \x20     ETCD_DATA_DIR=/var/lib/etcd/stratum\n\
         \x20     ETCD_LISTEN_PEER_URLS=http://{ip}:2380\n\
         \x20     ETCD_LISTEN_CLIENT_URLS=http://{ip}:2379,http://127.0.0.1:2379\n\
         \x20     ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{ip}:2380\n\
         \x20     ETCD_ADVERTISE_CLIENT_URLS=http://{ip}:2379\n\
         \x20     ETCD_INITIAL_CLUSTER={}\n\
         \x20     ETCD_INITIAL_CLUSTER_STATE=new\n\
         \x20     ETCD_INITIAL_CLUSTER_TOKEN=stratum-test\n\
         \x20     ETCD_HEARTBEAT_INTERVAL=500\n\
         \x20     ETCD_ELECTION_TIMEOUT=5000\n\
         runcmd:\n\
         \x20 - [systemctl, enable, --now, --no-block, etcd]\n",
        cluster.join(",")
    ))
}

/// Shell functions for the nested host (etcdctl from Debian's
/// etcd-client): `cluster_ok` succeeds when every member's endpoint is
/// healthy.
pub fn shell_helpers() -> String {
    let checks: Vec<String> = MEMBERS
        .iter()
        .map(|(_, host)| format!("etcd_ok {host}"))
        .collect();
    format!(
        "E=\"etcdctl --command-timeout=10s\"\n\
         etcd_ok() {{ $E --endpoints=http://{NET}.$1:2379 endpoint health > /dev/null 2>&1; }}\n\
         cluster_ok() {{ {}; }}\n",
        checks.join(" && ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_has_user_data_naming_the_whole_cluster() {
        for (name, host) in MEMBERS {
            let data = member_user_data(name).unwrap_or_default();
            assert!(data.starts_with("#cloud-config\n"));
            assert!(data.contains(&format!("ETCD_NAME={name}\n")));
            assert!(data.contains(&format!("http://{NET}.{host}:2379,")));
            for (other, _) in MEMBERS {
                assert!(data.contains(&format!("{other}=http://")));
            }
        }
        assert_eq!(member_user_data("etcd-4"), None);
    }
}
