//! A container's log as a stream of API records: the CRI log its log
//! writer keeps, read from the start or its last lines, and followed
//! while the container's current run writes.

use prost_types::Timestamp;
use stratum_api::proto;
use stratum_runtime::{CriLogLine, LogFollower, LogStream};
use tokio::sync::mpsc;

use super::PodManager;
use crate::agent::errors::Result;

/// Log records buffered for a slow client before the reader waits.
const LOG_BUFFER: usize = 256;

/// The records a Logs call streams; the channel closes at the end.
pub type LogRecords = mpsc::Receiver<Result<proto::LogRecord>>;

impl PodManager {
    /// Logs: see pods.proto. The last `tail` records (all without), and
    /// with `follow` what the current run writes next.
    pub async fn container_log_records(
        &self,
        pod_id: &str,
        name: &str,
        follow: bool,
        tail: Option<u32>,
    ) -> Result<LogRecords> {
        let follower = self.container_logs(pod_id, name, follow).await?;
        let skip = match (tail, &follower) {
            (Some(tail), Some(_)) => {
                let path = self.pod_log_path(pod_id, name);
                count_records(&path).await?.saturating_sub(u64::from(tail))
            }
            _ => 0,
        };
        let (tx, rx) = mpsc::channel(LOG_BUFFER);
        if let Some(follower) = follower {
            tokio::spawn(send_records(follower, skip, tx));
        }
        Ok(rx)
    }
}

/// How many records the log holds now.
async fn count_records(path: &std::path::Path) -> Result<u64> {
    let mut reader = LogFollower::open(path, false)?;
    let mut count = 0u64;
    while reader.next().await?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// Streams records after the first `skip` until the follower ends or the
/// client goes away.
async fn send_records(
    mut follower: LogFollower,
    mut skip: u64,
    tx: mpsc::Sender<Result<proto::LogRecord>>,
) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = tx.closed() => return,
        };
        match next {
            Ok(Some(_)) if skip > 0 => skip -= 1,
            Ok(Some(line)) => {
                if tx.send(Ok(log_record(line))).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

fn log_record(line: CriLogLine) -> proto::LogRecord {
    proto::LogRecord {
        time: line.timestamp.parse::<Timestamp>().ok(),
        stream: match line.stream {
            LogStream::Stdout => proto::LogStream::Stdout as i32,
            LogStream::Stderr => proto::LogStream::Stderr as i32,
        },
        partial: line.partial,
        message: line.message,
    }
}
