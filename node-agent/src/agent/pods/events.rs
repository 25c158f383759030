//! What happens to containers, as it happens: the pod manager hands every
//! change of a pod's record (the one place container states are kept)
//! to [`ContainerEvents::publish`], which compares each container's state
//! before and after and tells subscribers of those that changed — the
//! CRI's `GetContainerEvents`, which a kubelet's evented PLEG follows.
//!
//! It owns nothing but the channel: the states are the records'. A
//! subscriber that falls more than [`CAPACITY`] changes behind is told
//! it lost some (it then lists what it needs again, as the kubelet
//! relists); nothing waits for a slow subscriber.

use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::records::PodRecord;
use stratum_api::proto::ContainerState;

/// Changes a subscriber may be behind before it is told it lost some.
pub const CAPACITY: usize = 1024;

/// One container's state changed (or it appeared, or went).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerChange {
    pub pod_id: String,
    /// The pod's namespace (its top-level pool), for who may see it.
    pub namespace: String,
    /// The container's name in its pod.
    pub name: String,
    /// Its CRI id, for a container made through the CRI.
    pub cri_id: Option<String>,
    /// Its state before; `None`: it was not in the pod.
    pub before: Option<ContainerState>,
    /// Its state now; `None`: it is gone from the pod.
    pub after: Option<ContainerState>,
    pub at: SystemTime,
}

/// The channel of container changes.
#[derive(Debug)]
pub struct ContainerEvents {
    tx: broadcast::Sender<ContainerChange>,
}

impl Default for ContainerEvents {
    fn default() -> Self {
        ContainerEvents {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl ContainerEvents {
    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerChange> {
        self.tx.subscribe()
    }

    /// Tells subscribers what changed between `before` and `after`, two
    /// versions of one pod's record (`None`: the pod does not exist).
    pub fn publish(&self, before: Option<&PodRecord>, after: Option<&PodRecord>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let at = SystemTime::now();
        let old = containers(before);
        let new = containers(after);
        let Some(pod) = after.or(before) else {
            return;
        };
        let pod_id = pod.id.clone();
        let namespace = pod
            .status
            .as_ref()
            .map(|s| s.namespace.clone())
            .unwrap_or_default();
        let names = old.iter().chain(&new).map(|c| c.name.as_str());
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let was = old.iter().find(|c| c.name == name);
            let is = new.iter().find(|c| c.name == name);
            let (before, after) = (was.map(|c| c.state), is.map(|c| c.state));
            if before == after {
                continue;
            }
            let cri_id = is.or(was).and_then(|c| c.cri_id.clone());
            // No subscriber left is no error: nobody listens.
            let _ = self.tx.send(ContainerChange {
                pod_id: pod_id.clone(),
                namespace: namespace.clone(),
                name: name.to_string(),
                cri_id,
                before,
                after,
                at,
            });
        }
    }
}

/// A container of a record, as compared.
struct Seen {
    name: String,
    state: ContainerState,
    cri_id: Option<String>,
}

fn containers(record: Option<&PodRecord>) -> Vec<Seen> {
    let Some(record) = record else {
        return Vec::new();
    };
    let statuses = record
        .status
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    statuses
        .iter()
        .enumerate()
        .map(|(i, status)| Seen {
            name: status.name.clone(),
            state: ContainerState::try_from(status.state).unwrap_or(ContainerState::Unspecified),
            cri_id: record
                .containers
                .get(i)
                .and_then(|c| c.cri.as_ref())
                .map(|c| c.id.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::records::{ContainerRuntime, CriContainer};
    use stratum_api::proto;

    fn record(containers: &[(&str, ContainerState)]) -> PodRecord {
        PodRecord {
            id: "pod-1".into(),
            status: Some(proto::PodStatus {
                containers: containers
                    .iter()
                    .map(|(name, state)| proto::ContainerStatus {
                        name: name.to_string(),
                        state: *state as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            containers: containers
                .iter()
                .map(|(name, _)| ContainerRuntime {
                    cri: Some(CriContainer {
                        id: format!("id-{name}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn drain(
        rx: &mut broadcast::Receiver<ContainerChange>,
    ) -> Vec<(String, Option<i32>, Option<i32>)> {
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            assert_eq!(c.cri_id, Some(format!("id-{}", c.name)));
            got.push((
                c.name,
                c.before.map(|s| s as i32),
                c.after.map(|s| s as i32),
            ));
        }
        got
    }

    #[test]
    fn only_containers_whose_state_changed_are_told() {
        use ContainerState::*;
        let events = ContainerEvents::default();
        events.publish(None, Some(&record(&[("a", Created)])));
        let mut rx = events.subscribe();
        let created = record(&[("a", Created)]);
        let both = record(&[("a", Running), ("b", Created)]);
        events.publish(Some(&created), Some(&both));
        events.publish(Some(&both), Some(&both));
        let ended = record(&[("a", Exited), ("b", Created)]);
        events.publish(Some(&both), Some(&ended));
        events.publish(Some(&ended), None);
        let s = |s: ContainerState| Some(s as i32);
        assert_eq!(
            drain(&mut rx),
            vec![
                ("a".into(), s(Created), s(Running)),
                ("b".into(), None, s(Created)),
                ("a".into(), s(Running), s(Exited)),
                ("a".into(), s(Exited), None),
                ("b".into(), s(Created), None),
            ]
        );
    }

    #[test]
    fn a_subscriber_too_far_behind_is_told() {
        use ContainerState::*;
        let events = ContainerEvents::default();
        let mut rx = events.subscribe();
        let (a, b) = (record(&[("a", Created)]), record(&[("a", Running)]));
        for _ in 0..=CAPACITY {
            events.publish(Some(&a), Some(&b));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
