//! fpn-flood: the flooding node of the DoS acceptance test
//! (overlay-tests/tests/node_flood.rs). Run inside an enrolled node's lab
//! host, with that node's state directory, it sends at once, from three
//! threads, until `--duration` or `--max` per kind:
//!
//! - DPRP DDEs to the victim's underlay address, UDP port 7717 (the native
//!   DPRP port), each a new negotiation (fresh id, ports, nonce and share)
//!   carrying the flooder's real credential for a flow from its own overlay
//!   address, so nothing cheap refuses them: only DPRP's budgets, capacity
//!   and cookies stand between them and an X25519 each;
//! - raw junk towards the victim's underlay address: UDP datagrams and TCP
//!   segments (random flags, valid checksums) to port 7717 and to random
//!   high ports;
//! - enrollment attempts against the GMS with well-formed tokens that the
//!   GMS never issued (the real GMS address and CA pin, random secrets).
//!
//! Every loop is bounded in count and time. The test caps its CPU from
//! outside (a cgroup; `ip netns exec` gives the process a /sys of its own,
//! without the cgroup tree). Prints what it sent as JSON on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use fpn_proto::dprp::msg::{CredentialBytes, Dde};
use fpn_proto::dprp::{Message, NegotiationId};
use fpn_proto::flow::FlowId;

/// Flood a victim node with DDEs, junk packets and bad enrollments.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The flooding node's state directory (its credential and GMS pin).
    #[arg(long)]
    state: PathBuf,
    /// The flooding node's overlay address (the DDEs' flow source).
    #[arg(long)]
    overlay: Ipv4Addr,
    /// The victim's underlay address.
    #[arg(long)]
    victim: Ipv4Addr,
    /// The victim's overlay address (the DDEs' flow destination).
    #[arg(long)]
    victim_overlay: Ipv4Addr,
    /// How long to flood, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// Most packets (or enrollment attempts) of each kind.
    #[arg(long, default_value_t = 5_000_000)]
    max: u64,
    /// Enrollment attempts in flight at once.
    #[arg(long, default_value_t = 8)]
    enroll_parallel: usize,
}

#[derive(Default)]
struct Counts {
    dde: AtomicU64,
    udp_junk: AtomicU64,
    tcp_junk: AtomicU64,
    send_errors: AtomicU64,
    enroll_attempts: AtomicU64,
    enroll_refused: AtomicU64,
    enroll_accepted: AtomicU64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let id = fpn_gms_client::Identity::load(&cli.state).context("loading the state directory")?;
    let credential = CredentialBytes::new(id.credential.clone()).context("credential")?;
    let deadline = Instant::now() + Duration::from_millis(cli.duration_ms);
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    {
        let (c, cli_overlay, victim, victim_overlay, max) = (
            counts.clone(),
            cli.overlay,
            cli.victim,
            cli.victim_overlay,
            cli.max,
        );
        threads.push(std::thread::spawn(move || {
            flood_ddes(
                &c,
                credential,
                cli_overlay,
                victim,
                victim_overlay,
                deadline,
                max,
            )
        }));
    }
    {
        let (c, victim, max) = (counts.clone(), cli.victim, cli.max);
        threads.push(std::thread::spawn(move || {
            flood_junk(&c, victim, deadline, max)
        }));
    }
    let ca_pin = fpn_gms_client::ca::fingerprint(&id.ca_cert);
    let (c, max, parallel) = (counts.clone(), cli.max, cli.enroll_parallel.max(1));
    let gms = id.gms_addr.clone();
    threads.push(std::thread::spawn(move || {
        flood_enrollments(&c, &gms, ca_pin, parallel, deadline, max)
    }));
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a flood thread panicked"))??;
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let out = serde_json::json!({
        "dde": n(&counts.dde),
        "udp_junk": n(&counts.udp_junk),
        "tcp_junk": n(&counts.tcp_junk),
        "send_errors": n(&counts.send_errors),
        "enroll_attempts": n(&counts.enroll_attempts),
        "enroll_refused": n(&counts.enroll_refused),
        "enroll_accepted": n(&counts.enroll_accepted),
    });
    println!("{out}");
    Ok(())
}

/// xorshift64*: junk and ids need to differ, not to be secret.
struct Junk(u64);

impl Junk {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Junk(t | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn high_port(&mut self) -> u16 {
        1024 + (self.next() % (65536 - 1024)) as u16
    }
}

fn flood_ddes(
    c: &Counts,
    credential: CredentialBytes,
    own: Ipv4Addr,
    victim: Ipv4Addr,
    victim_overlay: Ipv4Addr,
    deadline: Instant,
    max: u64,
) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("DDE socket")?;
    let to = SocketAddr::new(IpAddr::V4(victim), 7717);
    let mut rng = Junk::seeded();
    let mut dde = Dde {
        id: NegotiationId(0),
        flow: FlowId {
            src: IpAddr::V4(own),
            dst: IpAddr::V4(victim_overlay),
            protocol: 6,
            src_port: 0,
            dst_port: 0,
        },
        nonce: Default::default(),
        share: Default::default(),
        credential,
        claims: Vec::new(),
        options: Vec::new(),
        hops: Vec::new(),
    };
    let mut sent = 0;
    while sent < max && Instant::now() < deadline {
        dde.id = NegotiationId(rng.next());
        dde.flow.src_port = rng.high_port();
        dde.flow.dst_port = rng.high_port();
        rng.fill(&mut dde.nonce);
        rng.fill(&mut dde.share);
        let bytes = Message::Dde(dde.clone())
            .encode()
            .context("encoding a DDE")?;
        match sock.send_to(&bytes, to) {
            Ok(_) => c.dde.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.send_errors.fetch_add(1, Ordering::Relaxed),
        };
        sent += 1;
    }
    Ok(())
}

fn flood_junk(c: &Counts, victim: Ipv4Addr, deadline: Instant, max: u64) -> Result<()> {
    let udp = UdpSocket::bind("0.0.0.0:0").context("junk UDP socket")?;
    let tcp = RawTcp::open()?;
    let mut rng = Junk::seeded();
    let mut payload = [0u8; 1200];
    let (mut n_udp, mut n_tcp) = (0u64, 0u64);
    while (n_udp < max || n_tcp < max) && Instant::now() < deadline {
        let port = if rng.next().is_multiple_of(2) {
            7717
        } else {
            rng.high_port()
        };
        let len = 16 + (rng.next() % 1184) as usize;
        rng.fill(&mut payload[..len]);
        let ok = if n_udp <= n_tcp && n_udp < max {
            n_udp += 1;
            let r = udp.send_to(&payload[..len], SocketAddr::new(IpAddr::V4(victim), port));
            if r.is_ok() {
                c.udp_junk.fetch_add(1, Ordering::Relaxed);
            }
            r.is_ok()
        } else {
            n_tcp += 1;
            let r = tcp.send(
                victim,
                rng.high_port(),
                port,
                &mut rng,
                &payload[..len % 256],
            );
            if r {
                c.tcp_junk.fetch_add(1, Ordering::Relaxed);
            }
            r
        };
        if !ok {
            c.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A raw IPPROTO_TCP socket: the kernel adds the IP header, we write the
/// TCP header (with its checksum, which needs our source address).
struct RawTcp {
    fd: libc::c_int,
    buf: std::cell::RefCell<Vec<u8>>,
}

impl RawTcp {
    fn open() -> Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned by the struct.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw TCP socket (root?)");
        }
        Ok(RawTcp {
            fd,
            buf: std::cell::RefCell::new(Vec::with_capacity(20 + 256)),
        })
    }

    fn send(&self, dst: Ipv4Addr, sport: u16, dport: u16, rng: &mut Junk, data: &[u8]) -> bool {
        let Some(src) = source_for(dst) else {
            return false;
        };
        let mut seg = self.buf.borrow_mut();
        seg.clear();
        seg.extend_from_slice(&sport.to_be_bytes());
        seg.extend_from_slice(&dport.to_be_bytes());
        seg.extend_from_slice(&(rng.next() as u32).to_be_bytes()); // seq
        seg.extend_from_slice(&(rng.next() as u32).to_be_bytes()); // ack
        seg.push(5 << 4); // data offset 5 words
        seg.push((rng.next() & 0x3f) as u8); // random flags
        seg.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        seg.extend_from_slice(data);
        let sum = tcp_checksum(src, dst, &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `seg` and `addr` outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd,
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        n >= 0
    }
}

impl Drop for RawTcp {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// The local address the kernel picks towards `dst` (a connected UDP socket
/// asks the routing table; nothing is sent).
fn source_for(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    thread_local!(static SRC: std::cell::Cell<Option<Ipv4Addr>> = const { std::cell::Cell::new(None) });
    SRC.with(|s| {
        if s.get().is_none() {
            let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
            sock.connect((dst, 9)).ok()?;
            if let Ok(SocketAddr::V4(a)) = sock.local_addr() {
                s.set(Some(*a.ip()));
            }
        }
        s.get()
    })
}

fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                u16::from_be_bytes([w[0], 0])
            };
            sum += u32::from(v);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn flood_enrollments(
    c: &Counts,
    gms: &str,
    ca_pin: [u8; 32],
    parallel: usize,
    deadline: Instant,
    max: u64,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let ep = fpn_gms_client::endpoint("0.0.0.0:0".parse().expect("an address"))
            .context("QUIC endpoint")?;
        let left = Arc::new(AtomicU64::new(max));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..parallel {
            let (ep, left, gms) = (ep.clone(), left.clone(), gms.to_owned());
            tasks.spawn(async move {
                let (mut refused, mut accepted, mut attempts) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline
                    && left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                {
                    let Ok(token) = fpn_gms_client::token::Token::generate(&gms, ca_pin) else {
                        break;
                    };
                    attempts += 1;
                    let left_time = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(
                        left_time,
                        fpn_gms_client::enroll(&token.encode(), &ep),
                    )
                    .await
                    {
                        Ok(Ok(_)) => accepted += 1,
                        Ok(Err(_)) => refused += 1,
                        Err(_) => break,
                    }
                }
                (attempts, refused, accepted)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (a, r, ok) = r.context("an enrollment task")?;
            c.enroll_attempts.fetch_add(a, Ordering::Relaxed);
            c.enroll_refused.fetch_add(r, Ordering::Relaxed);
            c.enroll_accepted.fetch_add(ok, Ordering::Relaxed);
        }
        ep.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(())
    })
}
