//! Issue 8 acceptance, the native carrier under an on-path attacker: the
//! router between two nodes captures real native packets of a UDP flow and
//! injects (1) copies with a byte of the PCCOM trailer flipped (the tag, and
//! the counter, which a forger would move past the replay window), (2)
//! copies from another source address (the flow's ports and destination),
//! (3) exact replays. None reaches the application (a UDP receiver on the
//! victim that records every datagram), each is counted by the victim's
//! `status` counters, and the flow keeps working afterwards (the forged
//! counter did not move the replay window).

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fpn_lab::inject;
use fpn_lab::overlay::Overlay;
use serde_json::Value;

/// The application's port on the victim (b).
const PORT: u16 = 7003;
/// Datagrams the sender sends before the attack (after the new-flow grace).
const SENT: usize = 20;
/// Injected copies of each kind.
const EACH: usize = 3;
/// PCCOM's trailer: an 8-byte counter, then a 16-byte tag (docs/PROTOCOL.md).
const TRAILER: usize = 24;
/// A new translation's packets may ride QUIC for 300 ms (a late steering,
/// docs/NODE.md): the sender waits past that so its datagrams are native.
const GRACE: Duration = Duration::from_millis(800);

fn counters(ov: &Overlay, node: &str) -> Value {
    ov.status(node).unwrap()["counters"].clone()
}

fn delta(after: &Value, before: &Value, name: &str) -> u64 {
    after[name].as_u64().unwrap_or(0) - before[name].as_u64().unwrap_or(0)
}

/// The native packets a -> b of the flow from `sport` to `PORT` in a
/// capture, as whole IPv4 packets (total length, no link header).
fn native_packets(pcap: &fpn_lab::Pcap, a: Ipv4Addr, b: Ipv4Addr, sport: u16) -> Vec<Vec<u8>> {
    pcap.packets()
        .iter()
        .filter_map(|p| p.ip())
        .filter_map(|ip| {
            let (s, d, proto, ihl, total) = inject::ipv4_fields(ip).ok()?;
            let l4 = ip.get(ihl..total)?;
            (s == a
                && d == b
                && proto == 17
                && l4.len() >= 8 + TRAILER
                && u16::from_be_bytes([l4[0], l4[1]]) == sport
                && u16::from_be_bytes([l4[2], l4[3]]) == PORT)
                .then(|| ip[..total].to_vec())
        })
        .collect()
}

#[test]
fn forged_spoofed_and_replayed_native_packets_are_dropped_and_counted() {
    let ov = common::two_nodes();
    let lab = ov.lab();
    let v4 = common::ipv4;
    let a_pub = v4(ov.underlay("a", "pub-a").unwrap());
    let b_pub = v4(ov.underlay("b", "pub-b").unwrap());
    // The attacker's own address on the victim's link.
    let router = v4(lab.addr("inet", "pub-b").unwrap());
    let b_ov = ov.overlay_addr("b").unwrap();

    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_native(&ov, "a", "b");
    common::wait_native(&ov, "b", "a");

    // The application: a UDP receiver on b's overlay address that records
    // every datagram it gets, until "end" or 60 s. (Bound to the overlay
    // address: a datagram sent to b's underlay address by anyone is the
    // host's ordinary traffic, not the overlay's.)
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let rx = {
        let got = got.clone();
        lab.thread_in("b", move || {
            let s = UdpSocket::bind(SocketAddr::new(b_ov.into(), PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                if let Ok(n) = s.recv(&mut buf) {
                    got.lock().unwrap().push(buf[..n].to_vec());
                    if &buf[..n] == b"end" {
                        break;
                    }
                }
            }
        })
        .unwrap()
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // Everything a -> b on the router's side of b's link.
    let cap = lab
        .capture(
            "inet",
            "pub-b",
            &format!("udp and src host {a_pub} and dst host {b_pub}"),
        )
        .unwrap();
    // The sender: a warm-up (the flow's first packet, on QUIC), SENT
    // numbered datagrams once the flow is native, then, on `go`, three more
    // on the same socket (the same five-tuple) and "end".
    let (port_tx, port_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let to = SocketAddr::new(b_ov.into(), PORT);
    let tx = lab
        .thread_in("a", move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"warm-up", to).unwrap();
            std::thread::sleep(GRACE);
            for i in 0..SENT {
                s.send_to(format!("seq-{i}").as_bytes(), to).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            port_tx.send(s.local_addr().unwrap().port()).unwrap();
            if go_rx.recv_timeout(Duration::from_secs(60)).is_ok() {
                for i in 0..3 {
                    s.send_to(format!("after-{i}").as_bytes(), to).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                s.send_to(b"end", to).unwrap();
            }
        })
        .unwrap();
    let sport = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The flow is native: its own ports between the two underlay addresses
    // on the wire, `native` in b's flow table, b's native_in counting.
    let pcap = cap
        .wait_for(Duration::from_secs(5), |p| {
            native_packets(p, a_pub, b_pub, sport).len() >= SENT / 2
        })
        .unwrap_or_else(|e| {
            panic!("the flow never went native ({a_pub}:{sport} -> {b_pub}:{PORT}): {e}")
        });
    let captured = native_packets(&pcap, a_pub, b_pub, sport);
    let t = Instant::now();
    while got.lock().unwrap().len() < SENT && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let flows = ov.flows_with("b", "a").unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "udp" && f["dport"] == PORT && f["carrier"] == "native"),
        "b shows no native UDP flow to port {PORT}: {flows:?}"
    );
    let before = counters(&ov, "b");
    assert!(
        before["native_in"].as_u64().unwrap_or(0) >= (SENT / 2) as u64,
        "{before}"
    );
    let delivered = got.lock().unwrap().clone();

    // The attack, from the router, on copies of the last EACH captured
    // packets (ones b has accepted).
    let originals = &captured[captured.len().saturating_sub(EACH)..];
    assert_eq!(originals.len(), EACH, "captured {}", captured.len());
    let mut forged = Vec::new();
    for orig in originals {
        let total = orig.len();
        // (1a) One tag byte flipped.
        let mut p = orig.clone();
        p[total - 1] ^= 0x01;
        inject::fix_checksums(&mut p).unwrap();
        forged.push(p);
        // (1b) The counter's top byte flipped: a counter b has never seen,
        // so the packet passes the replay window and dies at the tag; it
        // must not move the window (checked by the datagrams after).
        let mut p = orig.clone();
        p[total - TRAILER] ^= 0x80;
        inject::fix_checksums(&mut p).unwrap();
        forged.push(p);
    }
    let mut spoofed = Vec::new();
    for orig in originals {
        // (2) The flow's ports and destination, from the router's address.
        let mut p = orig.clone();
        p[12..16].copy_from_slice(&router.octets());
        inject::fix_checksums(&mut p).unwrap();
        spoofed.push(p);
    }
    // (3) Exact replays.
    let replays = originals.to_vec();
    // The replay window comes before any decryption: a copy reusing a
    // counter b has seen (1a, 3) is counted as replayed, one with a new
    // counter (1b) fails the tag and is counted as rejected.
    let n_rejected = originals.len() as u64;
    let n_replayed = (originals.len() + replays.len()) as u64;
    let n_spoofed = spoofed.len() as u64;
    let all: Vec<Vec<u8>> = forged.into_iter().chain(spoofed).chain(replays).collect();
    lab.run_in("inet", move || {
        for p in &all {
            inject::send_ipv4(p)?;
        }
        Ok::<_, fpn_lab::Error>(())
    })
    .unwrap()
    .unwrap();

    // Each injected packet is counted once, as what it is (bounded wait,
    // then a moment more so a late extra count would show).
    let t = Instant::now();
    loop {
        let now = counters(&ov, "b");
        if delta(&now, &before, "native_in_rejected") >= n_rejected
            && delta(&now, &before, "native_in_replayed") >= n_replayed
            && delta(&now, &before, "native_in_wrong_source") >= n_spoofed
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "b did not count the injected packets: before {before}, now {now}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = counters(&ov, "b");
    assert_eq!(
        delta(&after, &before, "native_in_rejected"),
        n_rejected,
        "forged counters: before {before}, after {after}"
    );
    assert_eq!(
        delta(&after, &before, "native_in_replayed"),
        n_replayed,
        "forged tags on seen counters, and replays: before {before}, after {after}"
    );
    assert_eq!(
        delta(&after, &before, "native_in_wrong_source"),
        n_spoofed,
        "spoofed sources: before {before}, after {after}"
    );
    assert_eq!(delta(&after, &before, "native_in_unknown"), 0, "{after}");
    assert_eq!(delta(&after, &before, "native_in"), 0, "{after}");
    // Nothing reached the application.
    let now = got.lock().unwrap().clone();
    assert!(
        now == delivered,
        "the receiver got {} datagrams during the attack: {:?}",
        now.len() - delivered.len().min(now.len()),
        now.iter()
            .skip(delivered.len())
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>()
    );

    // The flow still works, natively: the forged counters did not push the
    // replay window past the real ones.
    go_tx.send(()).unwrap();
    tx.join();
    rx.join();
    let got = got.lock().unwrap().clone();
    let after_attack = counters(&ov, "b");
    assert!(
        delta(&after_attack, &after, "native_in") >= 3,
        "the datagrams after the attack did not arrive natively: {after_attack}"
    );
    let sent: BTreeSet<Vec<u8>> = ["warm-up".to_owned(), "end".to_owned()]
        .into_iter()
        .chain((0..SENT).map(|i| format!("seq-{i}")))
        .chain((0..3).map(|i| format!("after-{i}")))
        .map(String::into_bytes)
        .collect();
    let unique: BTreeSet<Vec<u8>> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a datagram arrived twice");
    assert!(
        unique.is_subset(&sent),
        "the receiver got datagrams nobody sent"
    );
    for i in 0..3 {
        assert!(
            unique.contains(format!("after-{i}").as_bytes()),
            "after-{i} (sent after the attack) never arrived: got {} datagrams",
            got.len()
        );
    }
}
