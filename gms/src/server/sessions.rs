//! The registry of live sessions, and delivery of the core's outputs.

use std::collections::HashMap;
use std::sync::Arc;

use fpn_proto::ge::GeId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::DirectoryHook;
use crate::core::Output;
use crate::wire::close;

/// Frames queued per session before it counts as too slow and is closed
/// (it gets the full state again when it reconnects).
pub const PUSH_QUEUE: usize = 256;

/// One live session.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Arc<[u8]>>,
    pub(crate) conn: quinn::Connection,
}

/// Live sessions by GE (at most one per GE: a newer one replaces the older).
#[derive(Debug, Default)]
pub struct Sessions {
    by_ge: HashMap<GeId, SessionHandle>,
    /// Sessions registered since start (for `/metrics`).
    opened: u64,
    /// Frames pushed to sessions since start (directory changes, keys,
    /// revocations...: one per receiving session; `status`, `/metrics`).
    pushed: u64,
}

impl Sessions {
    /// Registers a session; an older session of the same GE is closed.
    pub(crate) fn insert(&mut self, ge: GeId, h: SessionHandle) {
        self.opened += 1;
        if let Some(old) = self.by_ge.insert(ge, h) {
            debug!(%ge, "session replaced by a newer one");
            old.conn
                .close(close::SUPERSEDED.into(), b"replaced by a newer session");
        }
    }

    /// Forgets session `id` of `ge` if it is still the registered one.
    pub(crate) fn remove(&mut self, ge: GeId, id: u64) {
        if self.by_ge.get(&ge).is_some_and(|h| h.id == id) {
            self.by_ge.remove(&ge);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.by_ge.len()
    }

    /// Sessions registered since the server started.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Frames pushed to sessions since the server started.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// True without sessions.
    pub fn is_empty(&self) -> bool {
        self.by_ge.is_empty()
    }

    /// Carries out the core's outputs, in order. Never blocks.
    pub(crate) fn deliver(&mut self, out: Vec<Output>, hook: &dyn DirectoryHook) {
        for o in out {
            match o {
                Output::Send { to, frame } => {
                    for ge in to {
                        if let Some(h) = self.by_ge.get(&ge) {
                            push(ge, h, &frame);
                            self.pushed += 1;
                        }
                    }
                }
                Output::Broadcast { frame } => {
                    for (ge, h) in &self.by_ge {
                        push(*ge, h, &frame);
                    }
                    self.pushed += self.by_ge.len() as u64;
                }
                Output::Close { ge, code, reason } => {
                    if let Some(h) = self.by_ge.remove(&ge) {
                        debug!(%ge, code, %reason, "closing session");
                        h.conn.close(code.into(), reason.as_bytes());
                    }
                }
                Output::Directory(ev) => hook.on_change(&ev),
            }
        }
    }
}

fn push(ge: GeId, h: &SessionHandle, frame: &Arc<[u8]>) {
    if h.tx.try_send(frame.clone()).is_err() {
        warn!(%ge, "session does not read its pushes; closing it");
        h.conn
            .close(close::SLOW.into(), b"too slow reading pushes; reconnect");
    }
}
