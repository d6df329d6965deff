//! A timestamped record stream over one TCP connection (issue 12's
//! handover measure): the sender writes a 16-byte record every interval
//! (sequence number and send time), the receiver notes when each arrived.
//! A move of either end shows up as a gap in the arrivals; a reconnect, a
//! lost or a duplicated record as a broken sequence.
//!
//! Times are `CLOCK_REALTIME` nanoseconds: every lab host is a namespace of
//! the same machine, so the sender's, the receiver's and the test's clocks
//! are one clock. `fpn-lab records send` / `fpn-lab records recv` run this
//! in lab hosts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Bytes per record: sequence number and send time, big-endian.
pub const RECORD_LEN: usize = 16;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// Its sequence number (0, 1, ...).
    pub seq: u64,
    /// When the sender wrote it.
    pub sent_ns: u64,
    /// When the receiver read it.
    pub recv_ns: u64,
}

/// What the receiver saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Received {
    /// Every record, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Connections accepted (1 unless the sender reconnected).
    pub connections: u32,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

impl Received {
    /// Records missing, duplicated or out of order: every problem with
    /// the sequence, as text (empty when it is 0, 1, ..., n-1).
    pub fn sequence_errors(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut next = 0u64;
        for (i, a) in self.arrivals.iter().enumerate() {
            if a.seq != next {
                errs.push(format!(
                    "record {i} has sequence number {} where {next} was due",
                    a.seq
                ));
                if errs.len() > 10 {
                    break;
                }
            }
            next = a.seq.saturating_add(1);
        }
        errs
    }

    /// The handover gap of a move whose new address was in place at `t_ns`:
    /// the longest wait for a record after `t_ns` within `window` (from
    /// `t_ns` to the first arrival, then between consecutive arrivals).
    /// `None` when nothing arrived in the window.
    pub fn gap_after(&self, t_ns: u64, window: Duration) -> Option<Duration> {
        let end = t_ns + window.as_nanos() as u64;
        let mut prev = t_ns;
        let mut worst = 0u64;
        let mut any = false;
        for a in self
            .arrivals
            .iter()
            .filter(|a| a.recv_ns > t_ns && a.recv_ns <= end)
        {
            worst = worst.max(a.recv_ns.saturating_sub(prev));
            prev = a.recv_ns;
            any = true;
        }
        any.then(|| Duration::from_nanos(worst))
    }

    /// The longest time between consecutive arrivals that overlaps
    /// `[from_ns, to_ns]` (the whole outage around a move, for reports).
    pub fn longest_silence(&self, from_ns: u64, to_ns: u64) -> Duration {
        self.arrivals
            .windows(2)
            .filter(|w| w[1].recv_ns >= from_ns && w[0].recv_ns <= to_ns)
            .map(|w| Duration::from_nanos(w[1].recv_ns.saturating_sub(w[0].recv_ns)))
            .max()
            .unwrap_or_default()
    }
}

/// Sends `count` records to `to`, one every `interval` on a fixed
/// schedule (a late record does not shift the next ones), over one TCP
/// connection with Nagle off; then closes it. Fails when the connection
/// breaks (which is what a move must not do).
pub fn send(to: SocketAddr, interval: Duration, count: u64) -> Result<(), Error> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| Error::io("connecting the record stream", e))?;
    s.set_nodelay(true)
        .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
    let start = Instant::now();
    for seq in 0..count {
        let due = start + interval * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut rec = [0u8; RECORD_LEN];
        rec[..8].copy_from_slice(&seq.to_be_bytes());
        rec[8..].copy_from_slice(&now_ns().to_be_bytes());
        s.write_all(&rec)
            .map_err(|e| Error::io("writing a record", e))?;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| Error::io("closing the record stream", e))?;
    // Wait for the receiver's close, so every record was read.
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::io("setting a read timeout", e))?;
    let _ = s.read(&mut b);
    Ok(())
}

/// Accepts one connection on `listener` and reads records until the
/// sender closes, `count` arrived, or `timeout` passed. Records are read
/// with one read per arrival when they come one by one, so `recv_ns` is the
/// moment the kernel handed them over. A second connection (the sender
/// reconnected) is counted.
pub fn receive(listener: TcpListener, count: u64, timeout: Duration) -> Received {
    let mut out = Received::default();
    let deadline = Instant::now() + timeout;
    let (mut s, _) = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("accepting: {e}"));
            return out;
        }
    };
    out.connections = 1;
    // Count reconnects without blocking on them.
    let _ = listener.set_nonblocking(true);
    let mut buf = [0u8; RECORD_LEN * 256];
    let mut have = 0usize;
    while (out.arrivals.len() as u64) < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.error = Some("timed out".into());
            break;
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => {
                let t = now_ns();
                have += n;
                let whole = have / RECORD_LEN * RECORD_LEN;
                for rec in buf[..whole].chunks_exact(RECORD_LEN) {
                    out.arrivals.push(Arrival {
                        seq: u64::from_be_bytes(rec[..8].try_into().unwrap_or_default()),
                        sent_ns: u64::from_be_bytes(rec[8..].try_into().unwrap_or_default()),
                        recv_ns: t,
                    });
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                out.error = Some(format!("reading: {e}"));
                break;
            }
        }
        while listener.accept().is_ok() {
            out.connections += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, recv_ms: u64) -> Arrival {
        Arrival {
            seq,
            sent_ns: 0,
            recv_ns: recv_ms * 1_000_000,
        }
    }

    #[test]
    fn the_gap_counts_from_the_move_to_the_first_arrival_and_between_arrivals() {
        let r = Received {
            arrivals: vec![at(0, 0), at(1, 10), at(2, 130), at(3, 140), at(4, 200)],
            connections: 1,
            error: None,
        };
        // Moved at 100 ms: first arrival 30 ms later, then 10, then 60.
        assert_eq!(
            r.gap_after(100_000_000, Duration::from_millis(200)),
            Some(Duration::from_millis(60))
        );
        assert_eq!(
            r.gap_after(100_000_000, Duration::from_millis(45)),
            Some(Duration::from_millis(30))
        );
        assert_eq!(r.gap_after(300_000_000, Duration::from_millis(50)), None);
        assert_eq!(
            r.longest_silence(0, 150_000_000),
            Duration::from_millis(120)
        );
        assert!(r.sequence_errors().is_empty());
    }

    #[test]
    fn a_lost_or_repeated_record_is_a_sequence_error() {
        let r = Received {
            arrivals: vec![at(0, 0), at(2, 10), at(2, 20)],
            connections: 1,
            error: None,
        };
        assert_eq!(r.sequence_errors().len(), 2);
    }

    #[test]
    fn records_cross_a_loopback_connection_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let rx = std::thread::spawn(move || receive(l, 20, Duration::from_secs(10)));
        send(to, Duration::from_millis(1), 20).unwrap();
        let r = rx.join().unwrap();
        assert_eq!(r.arrivals.len(), 20, "{r:?}");
        assert!(r.sequence_errors().is_empty());
        assert_eq!(r.connections, 1);
    }
}
