//! A container's log as a stream of API records: the CRI log its log
//! writer keeps (its rotated files, then the current one), read from the
//! start or its last lines, and followed while the container's current
//! run writes.

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
        let (tx, rx) = mpsc::channel(LOG_BUFFER);
        if let Some(mut follower) = follower {
            // One pass over the files as they are now: a count and a
            // second pass could be off by the files rotated in between.
            if let Some(tail) = tail {
                follower
                    .keep_last(usize::try_from(tail).unwrap_or(usize::MAX))
                    .await?;
            }
            tokio::spawn(send_records(follower, tx));
        }
        Ok(rx)
    }
}

/// Streams records until the follower ends or the client goes away.
async fn send_records(mut follower: LogFollower, tx: mpsc::Sender<Result<proto::LogRecord>>) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = tx.closed() => return,
        };
        match next {
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
