//! `image pull`'s progress display, plain text: at a terminal one line per
//! layer, rewritten in place (`\r`) as it advances; otherwise (a pipe, a
//! log) one line per layer phase change, so the output stays short.

use std::collections::HashMap;

use super::size::format_size;
use stratum_api::proto::pull_image_progress::Event;
use stratum_api::proto::{LayerPhase, LayerProgress, PullImageProgress};

/// The text for a pull's events, event by event.
#[derive(Debug)]
pub struct PullProgress {
    tty: bool,
    /// The last phase shown per layer digest.
    phases: HashMap<String, i32>,
    /// Length of the unterminated line at a terminal, if one is open.
    open_line: Option<(String, usize)>,
}

/// `sha256:0123456789ab` (the first 12 hex digits).
pub fn short_digest(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}

fn phase_text(phase: i32) -> &'static str {
    match LayerPhase::try_from(phase) {
        Ok(LayerPhase::Downloading) => "downloading",
        Ok(LayerPhase::Unpacking) => "unpacking",
        Ok(LayerPhase::Done) => "done",
        Ok(LayerPhase::AlreadyPresent) => "already present",
        _ => "unknown",
    }
}

/// One layer's line, without line ending.
pub fn layer_line(l: &LayerProgress) -> String {
    let name = short_digest(&l.digest);
    let phase = phase_text(l.phase);
    if l.phase == LayerPhase::Downloading as i32 {
        let pct = (l.done_bytes * 100)
            .checked_div(l.total_bytes)
            .unwrap_or(100);
        format!(
            "{name}: {phase} {}/{} ({pct}%)",
            format_size(l.done_bytes),
            format_size(l.total_bytes)
        )
    } else {
        format!("{name}: {phase} ({})", format_size(l.total_bytes))
    }
}

impl PullProgress {
    /// `tty`: whether stdout is a terminal.
    pub fn new(tty: bool) -> Self {
        PullProgress {
            tty,
            phases: HashMap::new(),
            open_line: None,
        }
    }

    /// What to print for `event` (possibly nothing).
    pub fn event(&mut self, event: &PullImageProgress) -> String {
        match &event.event {
            Some(Event::Resolved(r)) => {
                let mut out = self.finish();
                out.push_str(&format!(
                    "resolved {} {} ({} layer(s), {})\n",
                    r.reference,
                    short_digest(&r.manifest_digest),
                    r.layers,
                    format_size(r.total_bytes)
                ));
                out
            }
            Some(Event::Layer(l)) => self.layer(l),
            Some(Event::Image(_)) => self.finish(),
            None => String::new(),
        }
    }

    fn layer(&mut self, l: &LayerProgress) -> String {
        let changed = self.phases.insert(l.digest.clone(), l.phase) != Some(l.phase);
        let line = layer_line(l);
        if !self.tty {
            return if changed {
                format!("{line}\n")
            } else {
                String::new()
            };
        }
        match self.open_line.take() {
            Some((digest, len)) if digest == l.digest => {
                // Same layer: rewrite the line, blanking what is left of
                // a longer previous one.
                let pad = len.saturating_sub(line.len());
                self.open_line = Some((digest, line.len()));
                format!("\r{line}{}", " ".repeat(pad))
            }
            Some(_) => {
                self.open_line = Some((l.digest.clone(), line.len()));
                format!("\n{line}")
            }
            None => {
                self.open_line = Some((l.digest.clone(), line.len()));
                line
            }
        }
    }

    /// Ends an open terminal line.
    pub fn finish(&mut self) -> String {
        match self.open_line.take() {
            Some(_) => "\n".into(),
            None => String::new(),
        }
    }
}
