//! Following a VM's serial console log as `vmm` appends to it, for the
//! gRPC `Console` stream.
//!
//! Why a log file and polling: `vmm --console FILE` writes the serial
//! output to a file, which survives agent restarts (an adopted VM's console
//! is still there) and lets any number of clients read from any offset
//! independently. inotify would save a few wake-ups but not work the same
//! on every filesystem; a short poll interval is simple and cheap for one
//! small file.
//!
//! [`ConsoleFollower`] yields chunks of new bytes from an offset
//! (0 = the whole log); at end of file it sleeps for the poll interval and
//! looks again. It ends when the [`ProcessIdentity`] it watches is no
//! longer running and everything written has been yielded
//! ([`ConsoleFollower::until_exit_of`]), or at the end of the file when
//! nothing writes to it any more ([`ConsoleFollower::until_eof`], for a VM
//! that has stopped); otherwise it follows until dropped. When vmm rotates
//! the log (a new file at the path), the follower drains the old one and
//! goes on at the new one's start; offsets count from the start of the
//! current file. A missing file
//! is waited for (vmm creates it when the VM is built), except in
//! `until_eof` mode, where it is an empty log. [`ConsoleFollower::into_stream`] turns it into
//! a `Stream` for tonic.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::Stream;

use super::process::ProcessIdentity;

/// Default time between looks at the end of the file.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Largest chunk yielded at once.
const MAX_CHUNK: usize = 64 * 1024;

/// When a follower stops.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Never: it waits for more until dropped.
    Never,
    /// Once this process has exited and the log is drained.
    AtExitOf(ProcessIdentity),
    /// At the end of the file as it is.
    AtEof,
}

/// Follows one console log file.
#[derive(Debug)]
pub struct ConsoleFollower {
    path: PathBuf,
    offset: u64,
    end: End,
    poll_interval: Duration,
    file: Option<File>,
}

impl ConsoleFollower {
    /// Follows `path` from byte `offset` until dropped.
    pub fn new(path: impl Into<PathBuf>, offset: u64) -> ConsoleFollower {
        ConsoleFollower {
            path: path.into(),
            offset,
            end: End::Never,
            poll_interval: DEFAULT_POLL_INTERVAL,
            file: None,
        }
    }

    /// Ends the stream once `process` has exited and the log is drained.
    pub fn until_exit_of(mut self, process: ProcessIdentity) -> ConsoleFollower {
        self.end = End::AtExitOf(process);
        self
    }

    /// Ends the stream at the end of the file: nothing writes to it any
    /// more (the VM has stopped).
    pub fn until_eof(mut self) -> ConsoleFollower {
        self.end = End::AtEof;
        self
    }

    /// Another poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> ConsoleFollower {
        self.poll_interval = interval;
        self
    }

    /// Offset of the next byte to yield.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next new bytes (waiting for them), or `None` at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            // Decide "ended" before reading, so bytes written just before
            // the exit are still read below.
            let ended = match self.end {
                End::Never => false,
                End::AtExitOf(process) => !process.is_running(),
                End::AtEof => true,
            };
            let chunk = self.read_available().await?;
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
            if ended {
                return Ok(None);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Whatever is there now past the offset (empty at EOF or no file).
    /// At the end of the file it has, it looks whether vmm has started a
    /// new one (`vmm --console-max-bytes`: the log was renamed and another
    /// made at the same path) and goes on from that one's start. A renamed
    /// file is complete, so it is drained before the switch.
    async fn read_available(&mut self) -> io::Result<Vec<u8>> {
        let chunk = self.read_open_file().await?;
        if !chunk.is_empty() || !self.rotated().await? {
            return Ok(chunk);
        }
        let rest = self.read_open_file().await?;
        if !rest.is_empty() {
            return Ok(rest);
        }
        self.file = None;
        self.offset = 0;
        self.read_open_file().await
    }

    /// Whether the path names another file than the one open.
    async fn rotated(&self) -> io::Result<bool> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let open = file.metadata().await?.ino();
        match tokio::fs::metadata(&self.path).await {
            Ok(now) => Ok(now.ino() != open),
            // Between vmm's rename and its create: not yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn read_open_file(&mut self) -> io::Result<Vec<u8>> {
        let offset = self.offset;
        let Some(file) = self.open().await? else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(offset)).await?;
        let mut buf = vec![0; MAX_CHUNK];
        let n = file.read(&mut buf).await?;
        buf.truncate(n);
        self.offset += n as u64;
        Ok(buf)
    }

    async fn open(&mut self) -> io::Result<Option<&mut File>> {
        if self.file.is_none() {
            let path = self.path.clone();
            let opened = tokio::task::spawn_blocking(move || crate::run_dir::open_untrusted(&path))
                .await
                .map_err(io::Error::other)?;
            match opened {
                Ok(file) => self.file = Some(File::from_std(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.file.as_mut())
    }

    /// The follower as a `Stream` of chunks (ends as `next_chunk` does;
    /// an error is yielded once and ends the stream).
    pub fn into_stream(self) -> ConsoleStream {
        ConsoleStream {
            follower: Some(self),
            pending: None,
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = (io::Result<Option<Vec<u8>>>, ConsoleFollower)> + Send>>;

/// [`ConsoleFollower`] as a `Stream<Item = io::Result<Vec<u8>>>`.
pub struct ConsoleStream {
    follower: Option<ConsoleFollower>,
    pending: Option<Pending>,
}

impl Stream for ConsoleStream {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            let Some(mut follower) = self.follower.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(async move {
                let result = follower.next_chunk().await;
                (result, follower)
            }));
        }
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let (result, follower) = std::task::ready!(pending.as_mut().poll(cx));
        self.pending = None;
        match result {
            Ok(Some(chunk)) => {
                self.follower = Some(follower);
                Poll::Ready(Some(Ok(chunk)))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio_stream::StreamExt;

    const FAST: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn yields_from_the_offset_then_what_is_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"hello ").unwrap();
        let mut follower = ConsoleFollower::new(&path, 2).poll_interval(FAST);
        assert_eq!(follower.next_chunk().await.unwrap(), Some(b"llo ".to_vec()));
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(b"world").unwrap();
            }
        });
        let chunk = tokio::time::timeout(Duration::from_secs(5), follower.next_chunk()).await;
        assert_eq!(chunk.expect("in time").unwrap(), Some(b"world".to_vec()));
        assert_eq!(follower.offset(), 11);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn follows_the_log_into_the_file_that_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"ab").unwrap();
        let mut follower = ConsoleFollower::new(&path, 0).poll_interval(FAST);
        assert_eq!(follower.next_chunk().await.unwrap(), Some(b"ab".to_vec()));
        // As vmm rotates: a last write to the old file, the rename, a new
        // file with more.
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        old.write_all(b"c").unwrap();
        std::fs::rename(&path, dir.path().join("console.log.1")).unwrap();
        std::fs::write(&path, b"xyz").unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), follower.next_chunk())
                .await
                .expect("in time")
                .unwrap()
                .expect("more");
            got.extend(chunk);
        }
        assert_eq!(got, b"cxyz", "the old file's end, then the new file");
        assert_eq!(follower.offset(), 3);
    }

    #[tokio::test]
    async fn waits_for_the_file_and_ends_with_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 0.2; printf 'boot ok' > {}", path.display()))
            .spawn()
            .expect("spawn sh");
        let identity = ProcessIdentity::of(child.id()).expect("identity");
        let reaper = std::thread::spawn(move || child.wait());
        let stream = ConsoleFollower::new(&path, 0)
            .poll_interval(FAST)
            .until_exit_of(identity)
            .into_stream();
        let all = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
            .await
            .expect("stream ends after the process");
        let bytes: Vec<u8> = all.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(bytes, b"boot ok");
        reaper.join().unwrap().unwrap();
    }

    #[tokio::test]
    async fn until_eof_ends_at_the_end_of_a_finished_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, vec![b'x'; 100_000]).unwrap();
        let stream = ConsoleFollower::new(&path, 0)
            .poll_interval(FAST)
            .until_eof()
            .into_stream();
        let all = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
            .await
            .expect("a finished log ends");
        let bytes: Vec<u8> = all.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(bytes.len(), 100_000);
        let missing = ConsoleFollower::new(dir.path().join("none"), 0)
            .poll_interval(FAST)
            .until_eof()
            .into_stream();
        let none = tokio::time::timeout(Duration::from_secs(10), missing.collect::<Vec<_>>())
            .await
            .expect("a missing log of a stopped VM is empty");
        assert!(none.is_empty());
    }
}
