//! The native carrier's receive mechanisms under load; bench/native-rx.sh
//! runs it inside two namespaces and docs/DESIGN-NOTES.md note 11 quotes it.
//!
//! ```text
//! native_rx_bench rx   --mech nfq|ring --proto udp|tcp --expect N [--secs S]
//! native_rx_bench tx   --proto udp|tcp --count N [--secs S] [--rate PPS] [--size B]
//! native_rx_bench nftcost [--singles N] [--bulk N]
//! ```
//! `rx` opens NativeIo for FLOWS flows A:SPORT+i -> B:DPORT, prints `READY`,
//! counts what arrives (every sequence number once?) until it has `--expect`
//! packets or nothing came for `--idle-ms`, and prints one JSON line with
//! packets/s, Mbit/s, the receiver's CPU time per packet (user + system of
//! this process from the first packet to the last) and the kernel's
//! TcpOutRsts / IcmpOutDestUnreachs / UdpNoPorts deltas of its namespace.
//! `tx` sends with the raw sender, `--count` packets at most and `--secs`
//! at most (both bound the load). `nftcost` times flow-set changes.
//! Every loop is bounded in count and time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fpn_node::native::packet::{build_packet, packet_seq};
use fpn_node::native::{FiveTuple, L4Proto, NativeConfig, NativeIo, RawSender, RxMechanism};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Mech {
    Nfq,
    Ring,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Proto {
    Udp,
    Tcp,
}

#[derive(clap::Args, Clone)]
struct Flows {
    #[arg(long, value_enum, default_value = "udp")]
    proto: Proto,
    /// IPv4 or IPv6 (both of one family).
    #[arg(long, default_value = "198.18.0.1")]
    src: IpAddr,
    #[arg(long, default_value = "198.18.0.2")]
    dst: IpAddr,
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    /// A port nothing listens on: a packet the kernel sees draws a RST or
    /// an ICMP port unreachable, which the counters show.
    #[arg(long, default_value_t = 5555)]
    dport: u16,
    #[arg(long, default_value_t = 4)]
    flows: u16,
}

impl Flows {
    fn list(&self) -> Vec<FiveTuple> {
        let proto = match self.proto {
            Proto::Udp => L4Proto::Udp,
            Proto::Tcp => L4Proto::Tcp,
        };
        (0..self.flows)
            .map(|i| FiveTuple {
                src: self.src,
                dst: self.dst,
                proto,
                src_port: self.sport + i,
                dst_port: self.dport,
            })
            .collect()
    }
}

#[derive(Subcommand)]
enum Cmd {
    Rx {
        #[arg(long, value_enum)]
        mech: Mech,
        #[command(flatten)]
        flows: Flows,
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    Tx {
        #[command(flatten)]
        flows: Flows,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Packets per second; 0 = as fast as the sender goes.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// IPv4 total length.
        #[arg(long, default_value_t = 1400)]
        size: usize,
    },
    Nftcost {
        #[arg(long, default_value_t = 100)]
        singles: u32,
        #[arg(long, default_value_t = 1000)]
        bulk: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Rx {
            mech,
            flows,
            expect,
            secs,
            idle_ms,
        } => rx(mech, &flows, expect, secs, idle_ms),
        Cmd::Tx {
            flows,
            count,
            secs,
            rate,
            size,
        } => tx(&flows, count, secs, rate, size),
        Cmd::Nftcost { singles, bulk } => nftcost(singles, bulk),
    }
}

fn mechanism(m: Mech) -> RxMechanism {
    match m {
        Mech::Nfq => RxMechanism::Nfqueue { queue: 3 },
        Mech::Ring => RxMechanism::PacketRing,
    }
}

fn rx(mech: Mech, flows: &Flows, expect: u64, secs: f64, idle_ms: u64) -> Result<()> {
    let expect_n = usize::try_from(expect)?;
    if expect_n == 0 || expect_n > 50_000_000 {
        bail!("--expect out of range");
    }
    let mut cfg = NativeConfig::new("fpnbench", vec![flows.dst], mechanism(mech));
    cfg.queue_len = 16384;
    cfg.ring_mib = 64;
    let mut io = NativeIo::open(cfg).context("open native I/O")?;
    io.add_flows(&flows.list()).context("add flows")?;
    let mut rxq = io.take_receiver().context("receiver")?;
    let snmp0 = snmp()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    println!("READY");
    let mut seen = vec![false; expect_n];
    let (mut got, mut unique, mut dups, mut foreign, mut bytes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut t_first, mut t_last, mut cpu_first) = (None, Instant::now(), 0.0);
    while unique < expect && Instant::now() < deadline {
        let wait = if t_first.is_some() {
            Duration::from_millis(idle_ms)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let Ok(Some(batch)) = rt.block_on(async { tokio::time::timeout(wait, rxq.recv()).await })
        else {
            break;
        };
        if t_first.is_none() {
            t_first = Some(Instant::now());
            cpu_first = cpu_secs();
        }
        for p in batch.iter() {
            got += 1;
            bytes += p.len() as u64;
            match packet_seq(p).and_then(|s| usize::try_from(s).ok()) {
                Some(s) if s < expect_n => {
                    if seen[s] {
                        dups += 1;
                    } else {
                        seen[s] = true;
                        unique += 1;
                    }
                }
                _ => foreign += 1,
            }
        }
        t_last = Instant::now();
        rxq.recycle(batch);
    }
    let cpu = cpu_secs() - cpu_first;
    let stats = io.stats();
    let snmp1 = snmp()?;
    let nfq_drops = nfq_drops();
    io.close().context("close")?;
    let dt = t_first.map_or(0.0, |t| (t_last - t).as_secs_f64());
    let pps = if dt > 0.0 { got as f64 / dt } else { 0.0 };
    let d = |k: &str| snmp1.get(k).copied().unwrap_or(0) - snmp0.get(k).copied().unwrap_or(0);
    println!(
        "{{\"mech\":\"{mech:?}\",\"proto\":\"{:?}\",\"expect\":{expect},\"received\":{got},\"unique\":{unique},\"dups\":{dups},\"foreign\":{foreign},\"secs\":{dt:.4},\"pps\":{pps:.0},\"mbps\":{:.1},\"cpu_us_per_pkt\":{:.3},\"tcp_out_rsts\":{},\"icmp_out_dest_unreachs\":{},\"udp_no_ports\":{},\"ring_drops\":{},\"truncated\":{},\"nfq_drops\":{nfq_drops},\"batches\":{}}}",
        flows.proto,
        if dt > 0.0 {
            bytes as f64 * 8.0 / dt / 1e6
        } else {
            0.0
        },
        if got > 0 { cpu * 1e6 / got as f64 } else { 0.0 },
        d("Tcp:OutRsts"),
        d("Icmp:OutDestUnreachs"),
        d("Udp:NoPorts"),
        stats.ring_drops,
        stats.truncated,
        stats.batches,
    );
    Ok(())
}

fn tx(flows: &Flows, count: u64, secs: f64, rate: u64, size: usize) -> Result<()> {
    if count > 50_000_000 || secs > 60.0 {
        bail!("--count at most 50M, --secs at most 60");
    }
    let list = flows.list();
    let mut sender = RawSender::open().context("raw socket")?;
    const BATCH: usize = 64;
    let mut bufs = vec![vec![0u8; size]; BATCH];
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    let mut errors = 0u64;
    while sent < count && Instant::now() < deadline {
        let n = BATCH.min(usize::try_from(count - sent)?);
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            let seq = sent + i as u64;
            let flow = list[(seq as usize) % list.len()];
            build_packet(b, flow, size, seq, 0x5a)?;
        }
        let refs: Vec<&[u8]> = bufs[..n].iter().map(Vec::as_slice).collect();
        match sender.send_batch(&refs) {
            Ok(k) => sent += k as u64,
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
    }
    let dt = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    // The sender's system time includes the receiving side's softirq work
    // (veth delivers in the sender's context): the kernel's receive path.
    println!(
        "{{\"sent\":{sent},\"secs\":{dt:.4},\"pps\":{:.0},\"cpu_us_per_pkt\":{:.3},\"send_errors\":{errors}}}",
        sent as f64 / dt,
        if sent > 0 {
            cpu * 1e6 / sent as f64
        } else {
            0.0
        }
    );
    Ok(())
}

/// Times changes of the flow set through NativeIo (netlink batches; the
/// `nft` binary before docs/DESIGN-NOTES.md note 41).
fn nftcost(singles: u32, bulk: u32) -> Result<()> {
    let io = NativeIo::open(NativeConfig::new(
        "fpnbench",
        vec![Ipv4Addr::new(198, 18, 0, 2).into()],
        RxMechanism::PacketRing,
    ))?;
    let f = |i: u32| FiveTuple {
        src: Ipv4Addr::from(0xc612_0000 | (i >> 16)).into(),
        dst: Ipv4Addr::new(198, 18, 0, 2).into(),
        proto: L4Proto::Tcp,
        src_port: (i & 0xffff) as u16,
        dst_port: 443,
    };
    let mut add = Vec::new();
    let mut rm = Vec::new();
    for i in 0..singles {
        let t = Instant::now();
        io.add_flow(f(i))?;
        add.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..singles {
        let t = Instant::now();
        io.remove_flow(f(i))?;
        rm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let many: Vec<FiveTuple> = (100_000..100_000 + bulk).map(f).collect();
    let t = Instant::now();
    io.add_flows(&many)?;
    let bulk_ms = t.elapsed().as_secs_f64() * 1e3;
    // One more flow with `bulk` already in the set.
    let mut add_full = Vec::new();
    for i in 0..singles.min(20) {
        let t = Instant::now();
        io.add_flow(f(200_000 + i))?;
        add_full.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    io.remove_flows(&many)?;
    let bulk_remove_ms = t.elapsed().as_secs_f64() * 1e3;
    io.close()?;
    println!(
        "{{\"add_ms\":{:.3},\"remove_ms\":{:.3},\"bulk\":{bulk},\"bulk_ms\":{bulk_ms:.3},\"bulk_remove_ms\":{bulk_remove_ms:.3},\"add_ms_with_bulk_present\":{:.3}}}",
        median(&mut add),
        median(&mut rm),
        median(&mut add_full)
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to ru.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// "Group:Field" -> value from this namespace's /proc/net/snmp.
fn snmp() -> Result<std::collections::HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let lines: Vec<&str> = text.lines().collect();
    let mut m = std::collections::HashMap::new();
    for pair in lines.chunks(2) {
        let [names, vals] = pair else { continue };
        let mut n = names.split_whitespace();
        let group = n.next().unwrap_or("").trim_end_matches(':');
        for (k, v) in n.zip(vals.split_whitespace().skip(1)) {
            if let Ok(v) = v.parse::<i64>() {
                m.insert(format!("{group}:{k}"), v.max(0) as u64);
            }
        }
    }
    Ok(m)
}

/// Packets the NFQUEUE queues of this namespace dropped (queue full) or
/// failed to hand over (socket buffer full), from /proc.
fn nfq_drops() -> u64 {
    let Ok(t) = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue") else {
        return 0;
    };
    t.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.get(5)? + f.get(6)?)
        })
        .sum()
}
