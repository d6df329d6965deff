//! The offloading TUN inside a network namespace of its own: a UDP_SEGMENT
//! send and a TCP stream from the namespace's stack arrive as one
//! super-packet per read, and segmenting yields packets that etherparse
//! finds valid; a crafted SYN-ACK written through the TUN completes a real
//! handshake; with two queues both receive flows.
//!
//! Needs root (ip netns, /dev/net/tun); fails, never skips, without it.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use fpn_node::tun::{Offloads, SegmentBuffers, Tun, TunConfig, TunQueue};
use fpn_proto::packet::gro::{Offer, TcpCoalescer};
use fpn_proto::packet::vnet::GsoKind;

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("fpntun-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add: {} (these tests need root)",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// Runs `f` on a thread inside the namespace with a current-thread
    /// tokio runtime (setns changes only the calling thread).
    fn run<R: Send + 'static>(&self, f: impl AsyncFnOnce() -> R + Send + 'static) -> R {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("open the netns");
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(20), f())
                    .await
                    .expect("the test finishes in time")
            })
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn config(queues: usize) -> TunConfig {
    let mut cfg = TunConfig::new("fpnoff0", 1500);
    cfg.address = Some((LOCAL, 24));
    cfg.queues = queues;
    cfg
}

/// Checks each packet with etherparse; returns the transport payloads
/// concatenated and the TCP sequence numbers.
fn validate(bufs: &SegmentBuffers) -> (Vec<u8>, Vec<u32>) {
    let (mut data, mut seqs) = (Vec::new(), Vec::new());
    for pkt in bufs.iter() {
        let s = SlicedPacket::from_ip(pkt).expect("etherparse parses the segment");
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("IPv4")
        };
        let h = ip.header();
        assert_eq!(usize::from(h.total_len()), pkt.len(), "IPv4 total length");
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let (src, dst) = (h.source(), h.destination());
        match s.transport.expect("transport") {
            TransportSlice::Udp(u) => {
                let c = u
                    .to_header()
                    .calc_checksum_ipv4_raw(src, dst, u.payload())
                    .unwrap();
                assert_eq!(c, u.checksum(), "UDP checksum");
                assert_eq!(usize::from(u.length()), u.slice().len(), "UDP length");
                data.extend_from_slice(u.payload());
            }
            TransportSlice::Tcp(t) => {
                assert_eq!(
                    t.calc_checksum_ipv4(src, dst).unwrap(),
                    t.checksum(),
                    "TCP checksum"
                );
                seqs.push(t.sequence_number());
                data.extend_from_slice(t.payload());
            }
            _ => panic!("TCP or UDP"),
        }
    }
    (data, seqs)
}

/// A UDP socket on the TUN's address that sends with UDP_SEGMENT `gso`.
fn udp_segment_socket(gso: libc::c_int) -> UdpSocket {
    let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            std::ptr::from_ref(&gso).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT");
    sock
}

#[test]
fn tun_offload_udp_segment_is_one_read() {
    let ns = Netns::new();
    ns.run(async || {
        let tun = Tun::open(&config(1)).expect("open the TUN");
        assert!(
            tun.offloads().contains(Offloads::USO4),
            "USO granted: {}",
            tun.offloads()
        );
        let (mut rx, _tx) = tun.into_queues().unwrap().pop().unwrap();
        let sock = udp_segment_socket(1000);
        let msg: Vec<u8> = (0..7500u32).map(|i| (i * 7) as u8).collect();
        sock.send_to(&msg, SocketAddr::from((PEER, 9999))).unwrap();

        let mut bufs = SegmentBuffers::new(64, 1500, 24);
        let stats = rx.read_batch(&mut bufs).await.unwrap();
        assert_eq!(
            (stats.reads, stats.gso_reads, stats.dropped),
            (1, 1, 0),
            "{stats:?}"
        );
        assert_eq!(stats.packets, 8);
        let (data, _) = validate(&bufs);
        assert_eq!(data, msg, "the datagrams carry the message in order");
        for pkt in bufs.iter().take(7) {
            assert_eq!(pkt.len(), 20 + 8 + 1000);
        }
    });
}

#[test]
fn tun_offload_without_uso_the_kernel_segments() {
    let ns = Netns::new();
    ns.run(async || {
        let mut cfg = config(1);
        cfg.offloads = Offloads::TSO;
        let tun = Tun::open(&cfg).expect("open the TUN");
        assert_eq!(tun.offloads(), Offloads::TSO);
        assert_eq!(tun.offloads().to_string(), "csum,tso4,tso6,tso_ecn");
        let (mut rx, _tx) = tun.into_queues().unwrap().pop().unwrap();
        let sock = udp_segment_socket(1000);
        let msg: Vec<u8> = (0..7500u32).map(|i| (i * 7) as u8).collect();
        sock.send_to(&msg, SocketAddr::from((PEER, 9999))).unwrap();
        let mut bufs = SegmentBuffers::new(64, 1500, 24);
        let mut reads = 0;
        // Bounded: at most one read per datagram is expected.
        for _ in 0..16 {
            if bufs.len() >= 8 {
                break;
            }
            let stats = rx.read_batch(&mut bufs).await.unwrap();
            assert_eq!((stats.gso_reads, stats.dropped), (0, 0), "{stats:?}");
            reads += stats.reads;
        }
        assert_eq!((reads, bufs.len()), (8, 8), "one read per datagram");
        let (data, _) = validate(&bufs);
        assert_eq!(data, msg);
    });
}

#[test]
fn tun_offload_tcp_stream_arrives_as_tso_super_packets() {
    let ns = Netns::new();
    ns.run(async || {
        let tun = Tun::open(&config(1)).expect("open the TUN");
        assert!(
            tun.offloads().contains(Offloads::TSO4),
            "{}",
            tun.offloads()
        );
        let (mut rx, tx) = tun.into_queues().unwrap().pop().unwrap();
        let mut bufs = SegmentBuffers::new(128, 1500, 24);

        let connect = tokio::spawn(tokio::net::TcpStream::connect((PEER, 80)));
        // The SYN (skip anything else, e.g. nothing on an IPv6-less TUN).
        let (syn_seq, sport) = loop {
            bufs.clear();
            rx.read_batch(&mut bufs).await.unwrap();
            let found = bufs.iter().find_map(|p| {
                let s = SlicedPacket::from_ip(p).ok()?;
                match s.transport? {
                    TransportSlice::Tcp(t) if t.syn() => {
                        Some((t.sequence_number(), t.source_port()))
                    }
                    _ => None,
                }
            });
            if let Some(f) = found {
                break f;
            }
        };
        // Answer it: a SYN-ACK written through the TUN (empty virtio header).
        let server_isn = 0x1000_0000u32;
        let mut synack = Vec::new();
        PacketBuilder::ipv4(PEER.octets(), LOCAL.octets(), 64)
            .tcp(80, sport, server_isn, 65535)
            .syn()
            .ack(syn_seq.wrapping_add(1))
            .options(&[TcpOptionElement::MaximumSegmentSize(1400)])
            .unwrap()
            .write(&mut synack, &[])
            .unwrap();
        tx.write(&synack).await.expect("write the SYN-ACK");
        let mut stream = connect.await.unwrap().expect("the handshake completes");

        // The write side: three in-order segments from the peer, coalesced
        // into one GSO super-packet and written at once; the socket reads
        // them as one stream.
        let sent: Vec<u8> = (0..4200u32).map(|i| (i * 3) as u8).collect();
        let mut co = TcpCoalescer::new();
        for (i, chunk) in sent.chunks(1400).enumerate() {
            let mut seg = Vec::new();
            let mut b = PacketBuilder::ipv4(PEER.octets(), LOCAL.octets(), 64)
                .tcp(80, sport, server_isn + 1 + 1400 * i as u32, 65535)
                .ack(syn_seq.wrapping_add(1));
            if i == 2 {
                b = b.psh();
            }
            b.write(&mut seg, chunk).unwrap();
            assert_eq!(co.offer(&seg), Offer::Absorbed);
        }
        let (hdr, sup) = co.pending().unwrap();
        assert_eq!(hdr.gso, GsoKind::TcpV4);
        tx.write_gso(&hdr, sup)
            .await
            .expect("write the super-packet");
        let mut got = vec![0; sent.len()];
        {
            use tokio::io::AsyncReadExt;
            stream.read_exact(&mut got).await.unwrap();
        }
        assert_eq!(got, sent, "the kernel took the super-packet");

        let msg: Vec<u8> = (0..60_000u32).map(|i| (i * 13) as u8).collect();
        let writer = {
            let msg = msg.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                // Only the first window goes out (nobody acknowledges); that is enough.
                let _ = stream.write_all(&msg).await;
                stream
            })
        };
        // Read until a TSO super-packet shows up, within a bound.
        let mut seen_gso = false;
        for _ in 0..50 {
            bufs.clear();
            let stats = rx.read_batch(&mut bufs).await.unwrap();
            assert_eq!(stats.dropped, 0, "{stats:?}");
            let (data, seqs) = validate(&bufs);
            if stats.gso_reads > 0 && data.len() > 1400 {
                assert!(stats.packets > stats.reads, "{stats:?}");
                // Contiguous sequence numbers, payload in order from the start.
                let mut expect = seqs[0];
                for (pkt, seq) in bufs.iter().zip(&seqs) {
                    assert_eq!(*seq, expect, "contiguous seq");
                    let s = SlicedPacket::from_ip(pkt).unwrap();
                    let Some(TransportSlice::Tcp(t)) = s.transport else {
                        panic!()
                    };
                    assert!(t.payload().len() <= 1400, "clamped to the MSS");
                    expect = expect.wrapping_add(t.payload().len() as u32);
                }
                let off = seqs[0].wrapping_sub(syn_seq.wrapping_add(1)) as usize;
                assert_eq!(data[..], msg[off..off + data.len()], "payload in order");
                seen_gso = true;
                break;
            }
        }
        assert!(seen_gso, "a TSO super-packet arrived");
        writer.abort();
    });
}

#[test]
fn tun_offload_two_queues_both_receive_flows() {
    let ns = Netns::new();
    ns.run(async || {
        let tun = Tun::open(&config(2)).expect("open the TUN");
        assert_eq!(tun.queues(), 2);
        let flows = 32;
        for i in 0..flows {
            let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
            sock.send_to(&[i as u8; 100], SocketAddr::from((PEER, 9000 + i)))
                .unwrap();
        }
        // Each queue on a thread and runtime of its own, as the node runs
        // one core per queue.
        let threads: Vec<_> = tun
            .into_queue_fds()
            .into_iter()
            .map(|q| {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(drain(q, flows as usize))
                })
            })
            .collect();
        let per_queue: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            per_queue.iter().sum::<usize>(),
            flows as usize,
            "{per_queue:?}"
        );
        assert!(
            per_queue.iter().all(|&n| n > 0),
            "both queues got flows: {per_queue:?}"
        );
    });
}

/// Reads the queue until it stays quiet for 200 ms (at most `max` batches);
/// returns how many of the test's 128-byte UDP packets it saw.
async fn drain(q: TunQueue, max: usize) -> usize {
    let (mut rx, _tx) = q.register().expect("register the queue");
    let mut bufs = SegmentBuffers::new(64, 1500, 0);
    let mut n = 0;
    for _ in 0..max {
        bufs.clear();
        let Ok(stats) =
            tokio::time::timeout(Duration::from_millis(200), rx.read_batch(&mut bufs)).await
        else {
            break;
        };
        assert_eq!(stats.unwrap().dropped, 0);
        validate(&bufs);
        n += bufs.iter().filter(|p| p.len() == 128 && p[9] == 17).count();
    }
    n
}
