//! The bound on how long this node trusts its revocation knowledge without
//! the GMS (issue 9 #3; docs/DESIGN-NOTES.md note 26).
//!
//! While the GMS session is up, revocations are pushed at once, and every
//! session start brings the whole list. When it is lost, the node keeps
//! working from its caches, but it cannot hear of a revocation: after
//! `max_gms_silence` it refuses new negotiations from peers whose
//! credentials were valid from before the loss (a credential renewed since
//! passes), until the session is back. Flows already up go on.

use std::time::Instant;

use tracing::{info, warn};

use super::NodeCore;
use super::timers::Timer;

/// What the core knows of the GMS session.
#[derive(Debug, Default)]
pub(super) struct GmsSilence {
    /// Wall-clock seconds when the session was lost (`None`: up, or never
    /// reported).
    lost_unix: Option<u64>,
    /// When the bound passes (a timer of an earlier loss may still fire:
    /// only this one counts).
    due: Option<Instant>,
    /// True once the bound passed and the floor is in place.
    floor_set: bool,
}

impl NodeCore {
    /// The daemon reports the GMS session up or lost.
    pub(super) fn gms_state(&mut self, connected: bool, unix: u64, now: Instant) {
        if connected {
            if self.silence.floor_set {
                info!("GMS back: credentials older than its loss are accepted again");
            }
            self.silence = GmsSilence::default();
            self.dprp.set_credential_floor(None);
            return;
        }
        if self.silence.lost_unix.is_some() {
            return;
        }
        self.silence.lost_unix = Some(unix);
        if let Some(limit) = self.cfg.max_gms_silence {
            self.silence.due = Some(now + limit);
            self.timers.schedule(now + limit, Timer::GmsSilence);
        }
    }

    /// The bound passed without the GMS coming back.
    pub(super) fn gms_silence_reached(&mut self, now: Instant) {
        let Some(lost) = self.silence.lost_unix else {
            return;
        };
        if self.silence.floor_set || self.silence.due.is_none_or(|d| d > now) {
            return;
        }
        self.silence.floor_set = true;
        self.counters.gms_silence_floors += 1;
        warn!(
            lost_unix = lost,
            "no GMS for longer than max_gms_silence_secs: refusing new negotiations from credentials older than its loss until it is back"
        );
        self.dprp.set_credential_floor(Some(lost));
    }

    /// Wall-clock seconds since which credentials are refused, if any.
    pub fn credential_floor(&self) -> Option<u64> {
        self.silence
            .floor_set
            .then_some(self.silence.lost_unix)
            .flatten()
    }
}
