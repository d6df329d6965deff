//! Issue 8, the TUN offloads in the node's data path (design note 16): with
//! `IFF_VNET_HDR` and TSO the kernel hands the node TCP super-packets of up
//! to 64 KB, which the node cuts to the (clamped) MSS itself; the wire must
//! still carry only MTU-sized PCCOM packets, each the application's own
//! TCP packet between the two machines' addresses, its payload sealed. On
//! the receiving node, consecutive segments of the flow are written back
//! into the TUN coalesced.
//!
//! Run with `FPN_NODE_TUN_OFFLOADS=0` (the nodes inherit it) the first
//! assertion fails: no super-packet is ever read.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{echo_send, iperf_server, two_nodes};
use fpn_lab::overlay::Overlay;
use serde_json::Value;

const MARKER: &str = "fpn-tso-plaintext-marker-5e07a1";
/// The TUN MTU of the lab's nodes (node/src/config.rs DEFAULT_MTU): with
/// the MSS clamped by the 24-byte trailer, no PCCOM packet is longer.
const TUN_MTU: usize = 1380;
/// Bytes the iperf3 client sends from its file (the marker, repeated).
const FILE_BYTES: usize = 16 << 20;

fn counter(st: &Value, name: &str) -> u64 {
    st["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn tcp_super_packets_are_read_and_leave_as_mtu_sized_pccom_packets() {
    let ov = two_nodes();
    let lab = ov.lab();
    let a_pub = ov.underlay("a", "pub-a").unwrap();
    let b_pub = ov.underlay("b", "pub-b").unwrap();
    let b = Overlay::fqdn("b");
    let _echo = common::echo_server(lab, "b", 7001);
    let _iperf = iperf_server(lab, "b");
    let p = ov.ping("a", "b", 2).unwrap();
    assert!(p.ok, "a -> b: {:?}", p.output);
    common::wait_native(&ov, "a", "b");
    common::wait_native(&ov, "b", "a");

    // The file iperf3 sends: the marker over and over, so any plaintext
    // payload on the wire would contain it whole.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("marker");
    std::fs::write(&file, MARKER.repeat(FILE_BYTES / MARKER.len())).unwrap();

    let a0 = ov.status("a").unwrap();
    let b0 = ov.status("b").unwrap();
    // The iperf3 data connection on the wire, as the router forwards it to b.
    let cap = lab
        .capture(
            "inet",
            "pub-b",
            &format!("tcp and src host {a_pub} and dst host {b_pub} and dst port 5201"),
        )
        .unwrap();
    let out = lab
        .command(
            "a",
            ["iperf3", "-c", &b, "-F", &file.to_string_lossy(), "-J"],
        )
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    assert!(
        out.success() && report.get("error").is_none(),
        "iperf3 -F: {} {}",
        report["error"],
        out.stderr
    );
    let pcap = cap.stop().unwrap();
    let a1 = ov.status("a").unwrap();
    let b1 = ov.status("b").unwrap();

    // a read super-packets from its TUN (what offloads are for), from the
    // driver or from its TUN workers' queues ...
    let both = |c: &Value, k: &str| counter(c, k) + counter(c, &format!("worker_{k}"));
    let gso_reads = both(&a1, "tun_gso_reads") - both(&a0, "tun_gso_reads");
    let reads = both(&a1, "tun_reads") - both(&a0, "tun_reads");
    assert!(
        gso_reads >= 20,
        "a read {gso_reads} super-packets in {reads} TUN reads during a 16 MB transfer \
         (offloads granted: {})",
        a1["tun_offloads"]
    );
    assert!(
        a1["tun_offloads"]
            .as_str()
            .is_some_and(|o| o.contains("tso4")),
        "{}",
        a1["tun_offloads"]
    );
    // ... and b wrote the flow's segments back coalesced (from the driver,
    // or from its receive threads' data-path workers).
    let total = |c: &Value| {
        counter(c, "tun_coalesced_segments") + counter(c, "worker_tun_coalesced_segments")
    };
    let coalesced = total(&b1) - total(&b0);
    assert!(coalesced > 0, "b coalesced no segment into its TUN writes");

    // On the wire: the application's own TCP packets between the two
    // machines (the capture filter), each at most the TUN MTU with the PCCOM
    // trailer, most of them full-sized (the node cut to the MSS, not less),
    // and never the plaintext.
    let sizes: Vec<usize> = common::ipv4_headers(&pcap)
        .into_iter()
        .filter(|&(s, d, proto, _)| IpAddr::V4(s) == a_pub && IpAddr::V4(d) == b_pub && proto == 6)
        .map(|h| h.3)
        .collect();
    let full = sizes.iter().filter(|&&n| n + 100 >= TUN_MTU).count();
    let max = sizes.iter().copied().max().unwrap_or(0);
    // A new flow with a late steering rides QUIC for its first 300 ms: on
    // a loaded machine that was 60 % of the file once (4 565 native packets
    // of about 12 000, before note 36), so only an eighth is required.
    assert!(
        sizes.len() > FILE_BYTES / 8 / TUN_MTU,
        "only {} native TCP packets for a {FILE_BYTES}-byte transfer",
        sizes.len()
    );
    assert!(
        max <= TUN_MTU,
        "a {max}-byte packet on the wire (MTU {TUN_MTU})"
    );
    assert!(
        full * 2 > sizes.len(),
        "{full} of {} packets near the MTU: not cut to the MSS",
        sizes.len()
    );
    assert!(
        !pcap.contains(MARKER.as_bytes()),
        "plaintext marker on the wire"
    );
    // Control: the same marker sent outside the overlay is seen.
    let ctl = lab
        .capture("inet", "pub-b", &format!("host {a_pub} and host {b_pub}"))
        .unwrap();
    let out = echo_send(lab, "a", &format!("{b_pub}:7001"), MARKER, false);
    assert!(out.success(), "{}", out.stderr);
    ctl.wait_for(Duration::from_secs(5), |p| p.contains(MARKER.as_bytes()))
        .expect("the capture sees a plaintext marker");
}
