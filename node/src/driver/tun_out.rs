//! The driver's write side of the TUN: coalescing TCP segments into
//! super-packets, and the TUN write stage ([`crate::stage::Stage`]).

use std::ops::Range;
use std::sync::Arc;

use fpn_proto::packet::gro::{Offer, TcpCoalescer};
use fpn_proto::packet::vnet::VnetRepr;
use tracing::{trace, warn};

use super::TunWriter;
use crate::stage::Stage;
use crate::tun::Offloads;

/// Batches this small are written by the driver itself when the write
/// thread holds nothing: waking the thread costs a lone packet (a ping, an
/// ACK) more than the write.
const WRITE_HERE_MAX: usize = 4;

/// A batch is handed over once it holds this many bytes (about eight
/// super-packets), even within one wake-up.
pub(super) const BATCH_BYTES: usize = 512 * 1024;

/// The TUN writes of one wake-up, copied into one reused buffer.
#[derive(Debug, Default)]
pub(super) struct TunBatch {
    bytes: Vec<u8>,
    /// Each write: its virtio header when it is a super-packet, and where
    /// its bytes are.
    writes: Vec<(Option<VnetRepr>, Range<usize>)>,
}

impl TunBatch {
    fn push(&mut self, hdr: Option<VnetRepr>, packet: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(packet);
        self.writes.push((hdr, start..self.bytes.len()));
    }

    fn len(&self) -> usize {
        self.writes.len()
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes everything to `dev` in order and empties the batch; returns
    /// how many writes the kernel refused.
    fn write_to(&mut self, dev: &dyn TunWriter) -> u64 {
        let mut refused = 0;
        for (hdr, r) in self.writes.drain(..) {
            let p = &self.bytes[r];
            let res = match hdr {
                Some(h) => dev.write_gso(&h, p),
                None => dev.write_packet(p),
            };
            if !log_refused(res) {
                refused += 1;
            }
        }
        self.bytes.clear();
        refused
    }
}

/// The write side of the TUN: consecutive in-order TCP segments of one
/// flow are coalesced into one super-packet and one write (when the device
/// has TSO: a kernel that hands out super-packets takes them too), anything
/// else is written as it comes, after what is pending, so the order holds.
///
/// With a write stage, the writes of a wake-up are copied into a batch
/// that the stage's thread writes (the host's receive path, which a TUN
/// write runs in the writer's context, then runs on another core); a
/// small batch is written here when the thread holds nothing, so a lone
/// packet does not wait for the thread to wake.
pub(super) struct TunOut {
    dev: Arc<dyn TunWriter>,
    gro: Option<TcpCoalescer>,
    offloads: Offloads,
    stage: Option<Stage<TunBatch>>,
    batch: TunBatch,
    /// Refused writes of batches handed over early (see [`BATCH_BYTES`]).
    early_refused: u64,
    /// Counters for `status` (the reads are counted here too).
    reads: u64,
    gso_reads: u64,
    read_drops: u64,
    writes: u64,
    gso_writes: u64,
    coalesced: u64,
}

impl TunOut {
    pub(super) fn new(dev: Arc<dyn TunWriter>, offloads: Offloads, coalesce: bool) -> Self {
        let gro = (coalesce && offloads.contains(Offloads::TSO4)).then(TcpCoalescer::new);
        Self {
            dev,
            gro,
            offloads,
            stage: None,
            batch: TunBatch::default(),
            early_refused: 0,
            reads: 0,
            gso_reads: 0,
            read_drops: 0,
            writes: 0,
            gso_writes: 0,
            coalesced: 0,
        }
    }

    /// Takes one packet for the TUN; false when a write the kernel refused
    /// dropped it (or what was pending before it): dropped rather than
    /// stalling every flow.
    pub(super) fn write(&mut self, packet: &[u8]) -> bool {
        let Some(gro) = self.gro.as_mut() else {
            return self.write_one(packet);
        };
        if gro.offer(packet) == Offer::Absorbed {
            return true;
        }
        let flushed = self.flush();
        let gro = self.gro.as_mut().expect("checked above");
        if gro.offer(packet) == Offer::Absorbed {
            return flushed;
        }
        self.write_one(packet) && flushed
    }

    /// Writes the pending super-packet, if any; false when refused.
    pub(super) fn flush(&mut self) -> bool {
        let Some(gro) = self.gro.as_mut() else {
            return true;
        };
        let segments = gro.segments() as u64;
        let Some((hdr, p)) = gro.pending() else {
            return true;
        };
        let hdr = if segments > 1 {
            self.gso_writes += 1;
            self.coalesced += segments;
            Some(hdr)
        } else {
            None
        };
        self.writes += 1;
        if self.stage.is_some() {
            self.batch.push(hdr, p);
            gro.clear();
            self.after_push();
            return true;
        }
        let r = match hdr {
            Some(h) => self.dev.write_gso(&h, p),
            None => self.dev.write_packet(p),
        };
        gro.clear();
        log_refused(r)
    }

    fn write_one(&mut self, packet: &[u8]) -> bool {
        self.writes += 1;
        if self.stage.is_some() {
            self.batch.push(None, packet);
            self.after_push();
            return true;
        }
        log_refused(self.dev.write_packet(packet))
    }

    /// Writes through a stage thread from now on (see the type's doc).
    /// `Err` when the thread could not be started: writes stay here.
    pub(super) fn start_stage(&mut self) -> crate::error::Result<()> {
        let dev = Arc::clone(&self.dev);
        self.stage = Some(Stage::start("fpn-tun-write", move |b: &mut TunBatch| {
            b.write_to(dev.as_ref())
        })?);
        Ok(())
    }

    /// Whether writes go through a stage thread.
    pub(super) fn has_stage(&self) -> bool {
        self.stage.is_some()
    }

    /// Hands the writes of this wake-up over (or writes them here: a small
    /// batch while the thread is idle, every batch once the thread is
    /// gone). Returns how many writes the kernel refused since the last
    /// call.
    pub(super) fn hand_off(&mut self) -> u64 {
        let Some(stage) = self.stage.as_mut() else {
            return 0;
        };
        let mut refused = stage.take_refused() + std::mem::take(&mut self.early_refused);
        if self.batch.is_empty() {
            return refused;
        }
        if self.batch.len() <= WRITE_HERE_MAX && stage.is_idle() {
            return refused + self.batch.write_to(self.dev.as_ref());
        }
        let next = stage.empty_batch().unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, next);
        if let Err(mut back) = stage.send(full) {
            warn!("the TUN write thread stopped; writing from the driver");
            self.stage = None;
            refused += back.write_to(self.dev.as_ref());
        }
        refused
    }

    /// Hands the batch over early once it holds [`BATCH_BYTES`]: one
    /// batch stays a bounded copy. What the coalescer holds stays there;
    /// it is later than everything in the batch, so the order holds.
    fn after_push(&mut self) {
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.early_refused += self.hand_off();
        }
    }

    pub(super) fn count_reads(&mut self, s: &crate::tun::ReadStats) {
        self.reads += s.reads as u64;
        self.gso_reads += s.gso_reads as u64;
        self.read_drops += s.dropped as u64;
        if let Some(e) = &s.last_error {
            trace!(error = %e, dropped = s.dropped, "TUN reads dropped");
        }
    }

    /// The TUN's counters, next to the core's in `status`.
    pub(super) fn add_counters(&self, c: &mut std::collections::BTreeMap<String, u64>) {
        for (k, v) in [
            ("tun_reads", self.reads),
            ("tun_gso_reads", self.gso_reads),
            ("tun_read_drops", self.read_drops),
            ("tun_writes", self.writes),
            ("tun_gso_writes", self.gso_writes),
            ("tun_coalesced_segments", self.coalesced),
            ("tun_offloads_bits", u64::from(self.offloads.bits())),
        ] {
            c.insert(k.to_owned(), v);
        }
    }
}

fn log_refused(r: std::io::Result<usize>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            trace!(error = %e, "TUN write");
            false
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use super::*;
    use crate::core::sim::udp_packet;

    /// A TUN that keeps every write.
    #[derive(Default)]
    pub(in crate::driver) struct FakeTun(pub(in crate::driver) Mutex<Vec<Vec<u8>>>);

    impl TunWriter for FakeTun {
        fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(packet.to_vec());
            Ok(packet.len())
        }
        fn write_gso(&self, _hdr: &VnetRepr, packet: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(packet.to_vec());
            Ok(packet.len())
        }
    }

    /// An IPv4 TCP segment (ACK) of flow 1.2.3.4:1000 -> 5.6.7.8:2000 at
    /// sequence `seq`, checksums complete.
    fn tcp_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 40 + payload.len();
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[1, 2, 3, 4]);
        p[16..20].copy_from_slice(&[5, 6, 7, 8]);
        let mut sum: u32 = (0..20)
            .step_by(2)
            .map(|i| u32::from(u16::from_be_bytes([p[i], p[i + 1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = fpn_proto::packet::tcp_flags::ACK;
        p[34..36].copy_from_slice(&1024u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let mut pkt = fpn_proto::packet::Packet::parse_prefix(&mut p[..], len).unwrap();
        pkt.fill_l4_checksum();
        p
    }

    #[test]
    fn consecutive_tcp_segments_reach_the_tun_as_one_super_packet_in_order() {
        let fake = Arc::new(FakeTun::default());
        let mut out = TunOut::new(fake.clone(), Offloads::TSO, true);
        let udp = udp_packet(
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            1,
            2,
            b"u",
        );
        let segs: Vec<Vec<u8>> = (0..4u32)
            .map(|i| tcp_segment(100 + i * 1000, &[i as u8; 1000]))
            .collect();
        for s in &segs[..3] {
            assert!(out.write(s));
        }
        // Not TCP: what is pending goes first, then this packet on its own.
        assert!(out.write(&udp));
        assert!(out.write(&segs[3]));
        assert!(out.flush());
        let w = fake.0.lock().unwrap();
        assert_eq!(
            w.len(),
            3,
            "one super-packet, the UDP packet, a lone segment"
        );
        assert_eq!(w[0].len(), 40 + 3000, "three segments coalesced");
        assert_eq!(&w[0][40..1040], &[0u8; 1000][..]);
        assert_eq!(&w[0][2040..], &[2u8; 1000][..]);
        assert_eq!(w[1], udp);
        assert_eq!(w[2], segs[3]);
        assert_eq!((out.gso_writes, out.coalesced, out.writes), (1, 3, 3));
    }

    #[test]
    fn without_offloads_every_packet_is_written_as_it_came() {
        let fake = Arc::new(FakeTun::default());
        let mut out = TunOut::new(fake.clone(), Offloads::NONE, true);
        for i in 0..3u32 {
            assert!(out.write(&tcp_segment(100 + i * 10, &[1; 10])));
        }
        assert!(out.flush());
        assert_eq!(fake.0.lock().unwrap().len(), 3);
        assert_eq!(out.gso_writes, 0);
    }

    #[test]
    fn with_a_write_stage_every_write_arrives_in_order_and_lone_packets_stay_here() {
        let fake = Arc::new(FakeTun::default());
        let mut out = TunOut::new(fake.clone(), Offloads::TSO, true);
        out.start_stage().unwrap();
        assert!(out.has_stage());
        // A lone packet with the thread idle: written here, at once.
        let lone = tcp_segment(1, &[7; 10]);
        assert!(out.write(&lone));
        assert!(out.flush());
        assert_eq!(out.hand_off(), 0);
        assert_eq!(
            fake.0.lock().unwrap().len(),
            1,
            "written before hand_off returned"
        );
        assert_eq!(out.stage.as_ref().unwrap().batches_done(), 0);
        // Many wake-ups of many separate writes: through the thread.
        let mut sent = vec![lone];
        for w in 0..50u32 {
            for i in 0..8u32 {
                let p = udp_packet(
                    Ipv4Addr::new(1, 2, 3, 4),
                    Ipv4Addr::new(5, 6, 7, 8),
                    1,
                    2,
                    &(w * 8 + i).to_be_bytes(),
                );
                assert!(out.write(&p));
                sent.push(p);
            }
            assert!(out.flush());
            assert_eq!(out.hand_off(), 0);
        }
        let stage = out.stage.take().unwrap();
        let batches = stage.batches_done();
        drop(stage); // waits for the thread to write what it holds
        assert!(batches > 0, "the thread wrote");
        assert_eq!(*fake.0.lock().unwrap(), sent, "every write, in order");
    }

    /// A TUN whose writes from the stage's thread wait at a gate.
    #[derive(Default)]
    struct GatedTun {
        gate: Mutex<()>,
        written: Mutex<Vec<Vec<u8>>>,
    }

    impl TunWriter for GatedTun {
        fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
            if std::thread::current().name() == Some("fpn-tun-write") {
                drop(self.gate.lock().unwrap());
            }
            self.written.lock().unwrap().push(packet.to_vec());
            Ok(packet.len())
        }
        fn write_gso(&self, _hdr: &VnetRepr, packet: &[u8]) -> std::io::Result<usize> {
            self.write_packet(packet)
        }
    }

    #[test]
    fn a_lone_packet_never_overtakes_a_batch_the_write_thread_holds() {
        let tun = Arc::new(GatedTun::default());
        let mut out = TunOut::new(tun.clone(), Offloads::NONE, false);
        out.start_stage().unwrap();
        let p = |i: u32| {
            udp_packet(
                Ipv4Addr::new(1, 2, 3, 4),
                Ipv4Addr::new(5, 6, 7, 8),
                1,
                2,
                &i.to_be_bytes(),
            )
        };
        let gate = tun.gate.lock().unwrap();
        for i in 0..8 {
            assert!(out.write(&p(i)));
        }
        assert_eq!(out.hand_off(), 0);
        // The thread now waits at the gate with the batch of eight.
        assert!(out.write(&p(8)));
        assert_eq!(out.hand_off(), 0);
        drop(gate);
        drop(out);
        let written = tun.written.lock().unwrap();
        assert_eq!(*written, (0..9).map(p).collect::<Vec<_>>(), "in order");
    }
}
