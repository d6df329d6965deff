//! Issue 11, NAT-f: hosts behind a home gateway that run no fpn software,
//! reached by name from laptops at a cafe.
//!
//! configs/lab/nat-home.toml: fpn-node runs on the home router `gw` as a
//! GEN (closed, groups 1 and 2, protecting 192.168.1.0/24); the NAS
//! (192.168.1.10, group 1) and the printer (192.168.1.20, group 2) run
//! nothing but a plain HTTP and FTP server; `laptop` (group 1) and `laptop2`
//! (groups 1 and 2) sit behind the cafe's port-randomizing NAT; the GMS is
//! on the VPS. Each laptop's DNS stub answers `nas.home.fpn` with a VIN;
//! the first packet to it asks the gateway for a mapping (DPRP with the
//! NAT-f option), and the gateway's kernel DNATs the decrypted packets to
//! the NAS and masquerades them to its LAN address.
//!
//! - `a_laptop_at_the_cafe_reaches_the_nas_by_name`: HTTP and a 10 s iperf3
//!   by name (both go over the overlay's IPv6: the name has an AAAA), the
//!   AAAA is the VIN's IPv6 address, `ping -6` and `curl -4`/`-6` work;
//!   the home router's WAN carries no plaintext, the NAS sees the
//!   gateway's LAN address and plain packets; a second laptop behind the
//!   same NAT gets a mapping of its own (its own reserved port, its own
//!   DNAT pair); a laptop outside the printer's group is refused at once
//!   (ICMP prohibited); a stranger on the internet gets nothing from the
//!   NAS on the gateway's address, on the reserved ports before and after
//!   a negotiation.
//! - `a_gateway_box_behind_a_router_that_runs_nothing_of_ours`
//!   (configs/lab/nat-home-box.toml): the GEN is a box in the home LAN and
//!   the router only forwards UDP 7718 to it; the NAS is still reached by
//!   name (over the QUIC fallback: the native path needs more forwards),
//!   the DDNS names the router's public address; then the router stops
//!   forwarding (a NAT the user does not control) and the next connection
//!   works through the NAT traversal's candidates (here the GMS's relay).
//! - `ftp_through_the_gateway_and_a_gateway_restart`: vsftpd on the NAS,
//!   curl on the laptop: a listing and a 10 MB download by name in passive
//!   mode, EPSV and PASV (the PASV answer's address must be the VIN: curl
//!   is told to use it), checksums equal; then the gateway is killed and
//!   started again, and the application's next connection works.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, iperf_client, iperf_server, lab_bin, need};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, Process, config_path};

const MARKER: &str = "fpn-natf-plaintext-marker-51c7";
/// The default VIN range (configs/node/node.toml).
const VINS: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 127, 0, 0), 16);
/// The home gateway's reserved ports: its `natf_ports`, set by [`start`]
/// beside the default (47000-47999) so the tests show the setting reaches
/// DPRP (before design note 73 it did not).
const RESERVED: std::ops::RangeInclusive<u16> = 48000..=48999;
const NAS: &str = "192.168.1.10";

/// The home with its gateway, two laptops at the cafe, the NAS and the
/// printer registered behind the gateway.
fn start() -> Overlay {
    let mut tools = OVERLAY_TOOLS.to_vec();
    tools.extend(["curl", "vsftpd", "sha256sum"]);
    need(&tools);
    let lab = Lab::up(config_path("nat-home.toml")).expect("lab");
    lab.roam("laptop", "homelan", "cafelan")
        .expect("laptop to the cafe");
    let ov = Overlay::start(
        lab,
        &Spec::new(
            &[(1, "home"), (2, "printers")],
            vec![
                NodeSpec {
                    config: format!("natf_ports = \"{}-{}\"\n", RESERVED.start(), RESERVED.end()),
                    ..common::home_gateway("gw", &[1, 2])
                },
                NodeSpec::new("laptop", Mode::Op, &[1]),
                NodeSpec::new("laptop2", Mode::Op, &[1, 2]),
            ],
        ),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"));
    for (name, lan, group) in [("nas", NAS, "1"), ("printer", "192.168.1.20", "2")] {
        ov.gms_admin(&[
            "host", "add", name, "--via", "gw", "--lan", lan, "--group", group,
        ])
        .unwrap_or_else(|e| panic!("host add {name}: {e}"));
    }
    for laptop in ["laptop", "laptop2"] {
        wait_vin(&ov, laptop, "nas");
    }
    ov
}

/// Waits (bounded) until `node`'s DNS stub answers `host` with a VIN.
fn wait_vin(ov: &Overlay, node: &str, host: &str) -> Ipv4Addr {
    let t = Instant::now();
    let lab_host = ov.host_of(node).unwrap().to_owned();
    loop {
        let out = ov
            .lab()
            .exec(
                &lab_host,
                ["dig", "+short", "+time=1", "+tries=1", &Overlay::fqdn(host)],
            )
            .unwrap();
        if let Some(ip) = out
            .stdout
            .lines()
            .find_map(|l| l.trim().parse::<Ipv4Addr>().ok())
        {
            assert!(in_net(ip, VINS), "{host} resolved to {ip}, not a VIN");
            return ip;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{node} never resolved {host}: {}{}\n{}",
            out.stdout,
            out.stderr,
            ov.log_tails(30)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX << (32 - u32::from(len));
    u32::from(ip) & mask == u32::from(net) & mask
}

/// A plain HTTP server on the NAS serving `dir` on port 80.
fn nas_http(lab: &Lab, dir: &Path) -> Process {
    let p = lab
        .command(
            "nas",
            [
                lab_bin().as_str(),
                "http",
                "--listen",
                "0.0.0.0:80",
                "--dir",
                dir.to_str().unwrap(),
            ],
        )
        .name("nas-http")
        .spawn()
        .unwrap();
    p.wait_for_log("serving", Duration::from_secs(5)).unwrap();
    p
}

/// `curl` from `host` (bounded), its output.
fn curl(lab: &Lab, host: &str, args: &[&str]) -> fpn_lab::Output {
    let mut argv = vec!["curl", "-sS", "--max-time", "30"];
    argv.extend_from_slice(args);
    lab.command(host, argv)
        .timeout(Duration::from_secs(40))
        .output()
        .unwrap()
}

/// The gateway's DNAT pairs (`remote . vin : host` lines of its map).
fn gateway_pairs(ov: &Overlay) -> String {
    ov.lab()
        .exec_ok(
            "gw",
            ["nft", "list", "map", "inet", "fpn_natf_fpn0", "natf_pairs"],
        )
        .unwrap_or_default()
}

/// A stranger on the internet (`inet`) connects to the gateway's public
/// address on each port and gets no answer.
fn stranger_gets_nothing(lab: &Lab, gw: IpAddr, ports: &[u16]) {
    for port in ports {
        let url = format!("http://{gw}:{port}/");
        let out = curl(lab, "inet", &["--connect-timeout", "1", &url]);
        assert!(!out.success(), "the stranger got an answer on port {port}");
    }
}

/// TCP ports the gateway used toward the cafe's public address (the wire
/// side of NAT-f flows: the reserved ports), from a capture on its WAN.
fn gateway_ports(pcap: &fpn_lab::Pcap, gw: IpAddr, cafe: IpAddr) -> Vec<u16> {
    let mut ports: Vec<u16> = pcap
        .packets()
        .iter()
        .filter_map(|p| {
            let (src, dst, proto, sport, _) = p.five_tuple()?;
            (src == gw && dst == cafe && proto == 6).then_some(sport)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn a_laptop_at_the_cafe_reaches_the_nas_by_name() {
    let ov = start();
    let lab = ov.lab();
    let gw_pub = lab.addr("gw", "pub-home").unwrap();
    let cafe_pub = lab.addr("cafe", "pub-cafe").unwrap();
    let www = lab.log_dir().join("nas-www");
    std::fs::create_dir_all(&www).unwrap();
    let page = MARKER.repeat(40);
    std::fs::write(www.join("index.html"), &page).unwrap();
    let _http = nas_http(lab, &www);

    // A stranger on the internet, before any negotiation: the gateway's
    // address on the NAS's port and on reserved ports gives nothing, and
    // the NAS sees nothing of it.
    let stranger = lab.addr("inet", "pub-home").unwrap();
    let nas_cap = lab.capture("nas", "homelan", "ip").unwrap();
    stranger_gets_nothing(
        lab,
        gw_pub,
        &[80, 21, *RESERVED.start(), *RESERVED.start() + 1],
    );

    // The laptop at the cafe, by name.
    let wan_cap = lab.capture("gw", "pub-home", "ip").unwrap();
    let vin = wait_vin(&ov, "laptop", "nas");
    assert_eq!(wait_vin(&ov, "laptop", "nas"), vin, "the VIN changed");
    let t = Instant::now();
    let got = curl(lab, "laptop", &["http://nas.home.fpn/"]);
    let first = t.elapsed();
    assert!(
        got.success(),
        "curl nas: {}\n{}",
        got.stderr,
        ov.log_tails(40)
    );
    assert_eq!(got.stdout, page);
    eprintln!("first page through the gateway after {first:?}");
    // The NAS believes it talks to the gateway's LAN address.
    let who = curl(lab, "laptop", &["http://nas.home.fpn/whoami"]);
    assert!(
        who.stdout.starts_with("192.168.1.1:"),
        "the NAS saw {}",
        who.stdout
    );
    // A 10 s iperf3 by name.
    let _iperf = iperf_server(lab, "nas");
    let report = iperf_client(lab, "laptop", "nas.home.fpn", 10);
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    eprintln!(
        "iperf3 laptop -> nas through the gateway: {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(bps > 1e6, "iperf3 moved almost nothing: {report}");

    // IPv6 (design note 60): the stub answers AAAA with the VIN's IPv6
    // address (the overlay prefix and the VIN); ping -6 and HTTP over
    // IPv6 reach the same NAS as IPv4, through the same IPv4 mapping at
    // the gateway (the laptop makes the flow IPv4 at its TUN).
    let aaaa = lab
        .exec(
            "laptop",
            ["dig", "+short", "+time=2", "AAAA", &Overlay::fqdn("nas")],
        )
        .unwrap();
    let vin6: std::net::Ipv6Addr = aaaa
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no AAAA for nas: {aaaa:?}"));
    assert_eq!(
        vin6.octets()[12..],
        vin.octets(),
        "the AAAA is not the VIN's IPv6 address"
    );
    let ping6 = lab
        .command(
            "laptop",
            [
                "ping",
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "3",
                "nas.home.fpn",
            ],
        )
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap();
    assert!(
        ping6.success(),
        "ping -6 nas: {}{}\n{}",
        ping6.stdout,
        ping6.stderr,
        ov.log_tails(30)
    );
    for family in ["-6", "-4"] {
        let who = curl(lab, "laptop", &[family, "http://nas.home.fpn/whoami"]);
        assert!(
            who.success() && who.stdout.starts_with("192.168.1.1:"),
            "curl {family}: {} {}",
            who.stdout,
            who.stderr
        );
    }

    // The second laptop behind the same NAT: its own mapping.
    let who2 = curl(lab, "laptop2", &["http://nas.home.fpn/whoami"]);
    assert!(who2.success(), "laptop2: {}", who2.stderr);
    assert!(who2.stdout.starts_with("192.168.1.1:"), "{}", who2.stdout);
    // The gateway keeps its fronted hosts, reachable through pairs only.
    let fronted = ov
        .lab()
        .exec_ok(
            "gw",
            ["nft", "list", "set", "inet", "fpn_natf_fpn0", "natf_hosts"],
        )
        .unwrap();
    assert!(
        fronted.contains(NAS) && fronted.contains("192.168.1.20"),
        "{fronted}"
    );
    let pairs = gateway_pairs(&ov);
    let laptop = ov.overlay_addr("laptop").unwrap();
    let laptop2 = ov.overlay_addr("laptop2").unwrap();
    assert!(
        pairs.contains(&format!("{laptop} . {vin} : {NAS}")),
        "no DNAT pair for laptop: {pairs}"
    );
    assert!(
        pairs.contains(&format!("{laptop2} . ")) && pairs.contains(&format!(": {NAS}")),
        "no DNAT pair for laptop2: {pairs}"
    );

    let wan = wan_cap.stop().unwrap();
    assert!(
        !wan.contains(MARKER.as_bytes()),
        "plaintext marker on the home router's WAN"
    );
    let ports = gateway_ports(&wan, gw_pub, cafe_pub);
    eprintln!("gateway ports toward the cafe: {ports:?}");
    let reserved: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| RESERVED.contains(p))
        .collect();

    // The stranger again, on the ports now reserved.
    stranger_gets_nothing(lab, gw_pub, &reserved[..reserved.len().min(8)]);
    let nas_pcap = nas_cap.stop().unwrap();
    assert!(
        nas_pcap.contains(MARKER.as_bytes()),
        "the NAS's own capture does not show the plain page"
    );
    for p in nas_pcap.packets() {
        if let Some((src, dst, ..)) = p.five_tuple() {
            assert!(
                src != stranger && dst != stranger,
                "the NAS exchanged packets with the stranger: {src} -> {dst}"
            );
            // The link's own multicast control (IGMP reports of an
            // interface without an address, 0.0.0.0 -> 224.0.0.22) never
            // leaves it; anything else must be between LAN addresses.
            if dst.is_multicast() {
                continue;
            }
            for a in [src, dst] {
                if let IpAddr::V4(v4) = a {
                    assert!(
                        v4.octets()[..3] == [192, 168, 1],
                        "a non-LAN address reached the NAS's link: {src} -> {dst}"
                    );
                }
            }
        }
    }

    // The flows went natively (the application's TCP between the cafe and
    // the router's reserved ports, no tunnel), so the marker's absence on
    // the WAN is PCCOM's doing and not QUIC's: one reserved port per flow,
    // two laptops included (more flows than one laptop's).
    assert!(
        reserved.len() >= 3,
        "fewer NAT-f flows on reserved ports than expected: {ports:?}"
    );
    let carrier = ov.status("laptop").unwrap()["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["natf"].is_object())
        .map(|f| f["carrier"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert!(
        carrier.iter().any(|c| c == "native"),
        "no NAT-f flow on the native path: {carrier:?}"
    );

    // Outside the printer's group: refused at once, not a timeout.
    let t = Instant::now();
    let refused = curl(
        lab,
        "laptop",
        &["--connect-timeout", "10", "http://printer.home.fpn/"],
    );
    let took = t.elapsed();
    assert!(
        !refused.success(),
        "laptop reached the printer: {}",
        refused.stdout
    );
    assert!(
        took < Duration::from_secs(3),
        "the refusal took {took:?}: {}",
        refused.stderr
    );
    let st = ov.status("laptop").unwrap();
    assert!(
        st["counters"]["refused_flows"].as_u64().unwrap_or(0) >= 1,
        "{}",
        st["counters"]
    );
}

/// vsftpd on the NAS serving `root` (anonymous, read-only, passive ports
/// 30000-30100), in the foreground under the lab.
fn nas_ftp(lab: &Lab, root: &Path) -> Process {
    let empty = root.parent().unwrap().join("vsftpd-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let conf = root.parent().unwrap().join("vsftpd.conf");
    std::fs::write(
        &conf,
        format!(
            "listen=YES\nlisten_ipv6=NO\nbackground=NO\nanonymous_enable=YES\n\
             local_enable=NO\nwrite_enable=NO\nno_anon_password=YES\n\
             anon_root={}\nsecure_chroot_dir={}\npasv_enable=YES\n\
             pasv_min_port=30000\npasv_max_port=30100\nseccomp_sandbox=NO\n\
             xferlog_enable=NO\nconnect_from_port_20=NO\n",
            root.display(),
            empty.display()
        ),
    )
    .unwrap();
    let p = lab
        .command("nas", ["vsftpd", conf.to_str().unwrap()])
        .name("nas-vsftpd")
        .spawn()
        .unwrap();
    lab.wait_for_tcp(
        "nas",
        "127.0.0.1:21".parse().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("vsftpd did not listen: {e}\n{}", p.log()));
    p
}

fn sha256(lab: &Lab, host: &str, path: &Path) -> String {
    lab.exec_ok(host, ["sha256sum", path.to_str().unwrap()])
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn ftp_through_the_gateway_and_a_gateway_restart() {
    let ov = start();
    let lab = ov.lab();
    let root = lab.log_dir().join("ftp-root");
    std::fs::create_dir_all(&root).unwrap();
    // Readable by vsftpd's unprivileged user; the root not writable by it.
    lab.exec_ok(
        "nas",
        [
            "sh",
            "-c",
            &format!(
                "head -c 10485760 /dev/urandom > {0}/big.bin && chmod 755 {0} && chmod 644 {0}/big.bin",
                root.display()
            ),
        ],
    )
    .unwrap();
    let want = sha256(lab, "nas", &root.join("big.bin"));
    let _ftp = nas_ftp(lab, &root);

    let listing = curl(lab, "laptop", &["ftp://nas.home.fpn/"]);
    assert!(
        listing.success() && listing.stdout.contains("big.bin"),
        "listing: {}{}\n{}",
        listing.stdout,
        listing.stderr,
        ov.log_tails(30)
    );
    // EPSV (curl's default) and PASV with the answer's address used as
    // given: only a PASV answer rewritten to the VIN works from the cafe.
    for (mode, extra) in [
        ("epsv", vec![]),
        ("pasv", vec!["--disable-epsv", "--no-ftp-skip-pasv-ip"]),
    ] {
        let out = lab.log_dir().join(format!("big-{mode}.bin"));
        let mut args = extra.clone();
        args.extend(["-o", out.to_str().unwrap(), "ftp://nas.home.fpn/big.bin"]);
        let t = Instant::now();
        let got = curl(lab, "laptop", &args);
        assert!(
            got.success(),
            "{mode} download: {}\n{}",
            got.stderr,
            ov.log_tails(30)
        );
        assert_eq!(
            sha256(lab, "laptop", &out),
            want,
            "{mode}: checksum differs"
        );
        eprintln!("10 MB over FTP ({mode}) in {:?}", t.elapsed());
    }

    // The gateway restarts: its table and mappings are gone with it; the
    // application's next connection negotiates afresh.
    ov.kill("gw").unwrap();
    ov.up("gw").unwrap();
    let www = lab.log_dir().join("nas-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), MARKER).unwrap();
    let _http = nas_http(lab, &www);
    let t = Instant::now();
    loop {
        let got = curl(lab, "laptop", &["--max-time", "5", "http://nas.home.fpn/"]);
        if got.success() && got.stdout == MARKER {
            eprintln!(
                "the NAS answered again {:?} after the gateway restart",
                t.elapsed()
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no answer from the NAS after the gateway restart: {}\n{}",
            got.stderr,
            ov.log_tails(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The GEN need not be the home router: a box in the LAN runs it, and the
/// router, which runs nothing of ours, forwards one port to it (UDP 7718,
/// the QUIC carrier). The NAS is reached by name from the cafe, encrypted
/// on the router's WAN, and sees the box's LAN address as its peer.
#[test]
fn a_gateway_box_behind_a_router_that_runs_nothing_of_ours() {
    let mut tools = OVERLAY_TOOLS.to_vec();
    tools.push("curl");
    need(&tools);
    let lab = Lab::up(config_path("nat-home-box.toml")).expect("lab");
    let ov = Overlay::start(
        lab,
        &Spec::new(
            &[(1, "home")],
            vec![
                common::home_gateway("box", &[1]),
                NodeSpec::new("laptop", Mode::Op, &[1]),
            ],
        ),
    )
    .unwrap_or_else(|e| panic!("overlay start: {e}"));
    ov.gms_admin(&[
        "host", "add", "nas", "--via", "box", "--lan", NAS, "--group", "1",
    ])
    .unwrap();
    let lab = ov.lab();
    let router = lab.addr("gw", "pub-home").unwrap();
    // The DDNS publishes the NAS at the address the box's session comes
    // from: the router's.
    let dig = lab
        .exec(
            "laptop",
            ["dig", "+short", "@198.18.1.10", &Overlay::fqdn("nas"), "A"],
        )
        .unwrap();
    assert_eq!(dig.stdout.trim(), router.to_string(), "{}", dig.stderr);
    wait_vin(&ov, "laptop", "nas");
    let www = lab.log_dir().join("box-www");
    std::fs::create_dir_all(&www).unwrap();
    let page = MARKER.repeat(40);
    std::fs::write(www.join("index.html"), &page).unwrap();
    let _http = nas_http(lab, &www);
    let wan_cap = lab.capture("gw", "pub-home", "ip").unwrap();
    let got = curl(lab, "laptop", &["http://nas.home.fpn/"]);
    assert!(
        got.success() && got.stdout == page,
        "curl nas through the box: {}\n{}\n{}",
        got.stderr,
        ov.status("box").unwrap(),
        ov.log_tails(40)
    );
    let who = curl(lab, "laptop", &["http://nas.home.fpn/whoami"]);
    assert!(
        who.stdout.starts_with("192.168.1.2:"),
        "the NAS saw {}",
        who.stdout
    );
    let wan = wan_cap.stop().unwrap();
    assert!(
        !wan.contains(MARKER.as_bytes()),
        "plaintext marker on the router's WAN"
    );
    // With one forward the native path cannot pass the router (the NAT-f
    // flows' reserved ports and DPRP's 7717 are not forwarded): the flows
    // take the QUIC fallback, and the node says why. (PCCOM on the wire with
    // a plaintext control is the router case above, on the native path.)
    let st = ov.status("laptop").unwrap();
    let natf: Vec<&serde_json::Value> = st["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["natf"].is_object())
        .collect();
    assert!(
        !natf.is_empty()
            && natf
                .iter()
                .all(|f| f["action"] == "encrypt" && f["carrier"] == "quic"),
        "{natf:#?}"
    );
    let path = common::peer_entry(&ov, "laptop", "box")["path"].clone();
    assert!(
        path.as_str().is_some_and(|p| p.contains("native blocked")),
        "{path}"
    );

    // The router stops forwarding (a NAT the user does not control at all:
    // nothing from outside reaches the box unless the box opened it). The
    // candidates of the NAT traversal issue (hole punching, else the GMS's
    // relay) carry the laptop's next connection, with no operator action.
    lab.sh(
        "gw",
        "nft insert rule ip fpnlab_nat forward iifname wan ct status dnat drop",
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let got = curl(lab, "laptop", &["--max-time", "3", "http://nas.home.fpn/"]);
        if got.success() && got.stdout == page {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the NAS unreachable once the router stopped forwarding: {}\n{}\n{}",
            got.stderr,
            common::peer_entry(&ov, "laptop", "box"),
            ov.log_tails(40)
        );
    }
    let peer = common::peer_entry(&ov, "laptop", "box");
    eprintln!(
        "without the forward: the NAS again after {:?}, laptop -> box {} ({})",
        t.elapsed(),
        peer["carrier"],
        peer["path"]
    );
    assert!(
        peer["carrier"] == "relay" || peer["punched"].as_u64() > Some(0),
        "{peer}"
    );
}
