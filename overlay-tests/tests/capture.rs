//! Packet captures on links and switches.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::need;
use fpn_lab::{Lab, config_path};

#[test]
fn a_capture_sees_the_filtered_traffic_on_a_link() {
    need(&["tcpdump"]);
    let lab = Lab::up(config_path("two-hosts.toml")).unwrap();
    let cap = lab.capture("bob", "ab", "udp port 7000").unwrap();
    let bob = lab.addr("bob", "ab").unwrap();
    lab.run_in("alice", move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"MARKER-7000", SocketAddr::new(bob, 7000))
            .unwrap();
        s.send_to(b"MARKER-7001", SocketAddr::new(bob, 7001))
            .unwrap();
    })
    .unwrap();
    // -U: the packet is in the file before tcpdump stops.
    let snap = cap
        .wait_for(Duration::from_secs(5), |p| p.contains(b"MARKER-7000"))
        .unwrap();
    assert!(!snap.is_empty());
    let pcap = cap.stop().unwrap();
    assert_eq!(pcap.link_type(), 1, "veth frames are Ethernet");
    assert_eq!(pcap.count_containing(b"MARKER-7000"), 1);
    assert!(
        !pcap.contains(b"MARKER-7001"),
        "the filter let port 7001 through"
    );
    let ip = pcap.packets()[0].ip().expect("an IP packet");
    assert_eq!(ip[0] >> 4, 4);
    assert_eq!(&ip[16..20], &[198, 18, 0, 2], "to bob");
}

#[test]
fn a_switch_capture_sees_traffic_between_its_hosts() {
    need(&["tcpdump", "ping"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    let cap = lab.capture_switch("homelan", "icmp").unwrap();
    lab.exec_ok(
        "nas",
        [
            "ping",
            "-c2",
            "-i",
            "0.2",
            "-W2",
            "-p",
            "c0ffee",
            "192.168.1.20",
        ],
    )
    .unwrap();
    let pcap = cap.stop().unwrap();
    // Two requests and two replies crossed the bridge.
    assert!(pcap.len() >= 4, "captured {}", pcap.len());
    assert!(pcap.contains(&[0xc0, 0xff, 0xee]));
    assert!(
        lab.capture_switch("nas", "").is_err(),
        "a host is not a switch"
    );
}
