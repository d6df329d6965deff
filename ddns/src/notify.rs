//! NOTIFY (RFC 1996): tells secondaries that the zone changed, so they
//! transfer it at once instead of waiting for the SOA refresh timer.
//!
//! One task per secondary follows the zone serial; for each new serial it
//! sends a NOTIFY (signed if a key is configured) and retries with doubling
//! timeouts until the secondary answers or the attempts run out. A newer
//! serial replaces the one being retried.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span, info};

use crate::config::NotifyTarget;
use crate::server::Shared;
use crate::wire::{self, class, opcode, rtype};
use crate::{tsig, xfr};

/// Attempts per serial and target.
const ATTEMPTS: u32 = 5;
/// Wait for the first answer; doubled after each attempt.
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Runs until aborted: one task per target.
pub async fn run(targets: Vec<NotifyTarget>, shared: Arc<Shared>, serial: watch::Receiver<u32>) {
    let mut tasks = JoinSet::new();
    for t in targets {
        let span = debug_span!("notify", target = %t.address);
        tasks.spawn(target_loop(t, shared.clone(), serial.clone()).instrument(span));
    }
    while tasks.join_next().await.is_some() {}
}

async fn target_loop(target: NotifyTarget, shared: Arc<Shared>, mut serial: watch::Receiver<u32>) {
    let bind: SocketAddr = match target.address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            info!(error = %e, "cannot send NOTIFY: no socket");
            return;
        }
    };
    let key = target
        .key
        .as_ref()
        .and_then(|k| shared.keys.get(k).cloned());
    'serials: loop {
        if serial.changed().await.is_err() {
            return;
        }
        let current = *serial.borrow_and_update();
        let mut wait = FIRST_WAIT;
        for attempt in 1..=ATTEMPTS {
            let id: u16 = rand_id();
            let msg = {
                let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
                notify_message(id, &zone, key.as_deref())
            };
            if let Err(e) = socket.send_to(&msg, target.address).await {
                debug!(error = %e, attempt, "NOTIFY send failed");
            } else if answered(&socket, id, target.address, wait).await {
                debug!(serial = current, attempt, "NOTIFY acknowledged");
                continue 'serials;
            }
            if serial.has_changed().unwrap_or(false) {
                continue 'serials; // a newer serial: notify that one
            }
            wait *= 2;
        }
        info!(serial = current, "secondary did not answer NOTIFY");
    }
}

/// Waits up to `wait` for the answer to NOTIFY `id` from `from`.
async fn answered(socket: &UdpSocket, id: u16, from: SocketAddr, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        let Ok(Ok((n, peer))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        else {
            return false;
        };
        let m = &buf[..n];
        if peer == from
            && n >= wire::HEADER_LEN
            && u16::from_be_bytes([m[0], m[1]]) == id
            && m[2] & 0x80 != 0
            && (m[2] >> 3) & 0x0f == opcode::NOTIFY
        {
            return true;
        }
    }
}

/// A NOTIFY for the zone: question `zone SOA IN`, our SOA as the answer
/// (the hint RFC 1996 3.7 allows), signed when `key` is given.
pub fn notify_message(
    id: u16,
    zone: &crate::zone::Zone,
    key: Option<&crate::keys::TsigKey>,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128);
    wire::put_header(
        &mut msg,
        id,
        [(opcode::NOTIFY << 3) | 0x04, 0],
        [1, 1, 0, 0],
    );
    msg.extend_from_slice(&crate::answer::name_wire_case(zone.origin()));
    msg.extend_from_slice(&rtype::SOA.to_be_bytes());
    msg.extend_from_slice(&class::IN.to_be_bytes());
    if xfr::put_record(&mut msg, &zone.soa_record()).is_err() {
        wire::set_count(&mut msg, 6, 0);
    }
    if let Some(key) = key {
        tsig::sign_request(&mut msg, key, crate::unix_now());
    }
    msg
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // Predictable ids only make spoofed acknowledgements easier; fall back
    // to the clock if the system has no randomness.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return crate::unix_now() as u16;
    }
    u16::from_be_bytes(b)
}
