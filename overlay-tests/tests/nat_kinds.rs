//! The lab's NAT behaviours (RFC 4787) and its port-mapping router, each
//! proved from outside with `fpn-lab echo` or plain sockets in the hosts.
//!
//! Every test builds one router `gw` with the `nat` under test between a
//! LAN (`nas`, `printer`) and a switch with three outside hosts: `s1` and
//! `s2` (echo servers on UDP 7000 and 7001, TCP 7000) and `third`.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{BIN, need};
use fpn_lab::Lab;
use fpn_lab::topology::{Filtering, Mapping, PortAssignment};

const T: Duration = Duration::from_secs(5);

/// The probe lab with `nat` (the inside of a TOML inline table) on `gw`.
/// `wan` is the outside /24's first three octets.
fn probe(nat: &str, wan: &str) -> Lab {
    need(&["nft"]);
    let echo = format!(
        "{{ name = \"echo\", cmd = \"{BIN} echo serve --udp 0.0.0.0:7000 --udp 0.0.0.0:7001 --tcp 0.0.0.0:7000\", wait_for = \"udp 0.0.0.0:7001\" }}"
    );
    let text = format!(
        r#"
[hosts.gw]
nat = {{ out = "wan", {nat} }}
[hosts.nas]
[hosts.printer]
[hosts.s1]
services = [{echo}]
[hosts.s2]
services = [{echo}]
[hosts.third]
[[links]]
name = "wan"
switch = true
ends = [
  {{ host = "gw", addr = "{wan}.2/24" }},
  {{ host = "s1", addr = "{wan}.10/24" }},
  {{ host = "s2", addr = "{wan}.11/24" }},
  {{ host = "third", addr = "{wan}.12/24" }},
]
[[links]]
name = "lan"
switch = true
ends = [
  {{ host = "gw", addr = "192.168.1.1/24" }},
  {{ host = "nas", addr = "192.168.1.10/24", gateway = "192.168.1.1" }},
  {{ host = "printer", addr = "192.168.1.20/24", gateway = "192.168.1.1" }},
]
"#
    );
    Lab::from_toml(&text).unwrap_or_else(|e| panic!("lab with nat {{ {nat} }}: {e}"))
}

fn addr(lab: &Lab, host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(lab.addr(host, "wan").unwrap(), port)
}

/// What each server saw of one UDP socket of `host` bound to `local`
/// (`fpn-lab echo whoami --udp --bind`), in order.
fn whoami(lab: &Lab, host: &str, local: u16, servers: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut argv = vec![
        BIN.to_string(),
        "echo".into(),
        "whoami".into(),
        "--udp".into(),
        "--bind".into(),
        format!("0.0.0.0:{local}"),
        "--timeout".into(),
        "2".into(),
    ];
    argv.extend(servers.iter().map(ToString::to_string));
    let out = lab.exec(host, argv).unwrap();
    assert!(out.success(), "whoami from {host}: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Opens a mapping from `host`'s UDP port `local` by asking `opener`, then
/// serves echo on it (`fpn-lab echo serve --open`). Returns the process and
/// the mapping's outside address.
fn open_mapping(
    lab: &Lab,
    host: &str,
    local: u16,
    opener: SocketAddr,
) -> (fpn_lab::Process, SocketAddr) {
    open_mapping_with(lab, host, local, opener, &[])
}

/// [`open_mapping`] with more `echo serve` arguments (e.g. `--keepalive`).
fn open_mapping_with(
    lab: &Lab,
    host: &str,
    local: u16,
    opener: SocketAddr,
    extra: &[&str],
) -> (fpn_lab::Process, SocketAddr) {
    let mut argv = vec![
        BIN.to_string(),
        "echo".into(),
        "serve".into(),
        "--udp".into(),
        format!("0.0.0.0:{local}"),
        "--open".into(),
        opener.to_string(),
    ];
    argv.extend(extra.iter().map(ToString::to_string));
    let p = lab.command(host, argv).name("opened").spawn().unwrap();
    p.wait_for_log("echo: udp", T).unwrap();
    let log = std::fs::read_to_string(p.log_path()).unwrap();
    let mapped = log
        .lines()
        .find_map(|l| l.strip_prefix("mapped "))
        .unwrap_or_else(|| panic!("no mapping in {log}"))
        .trim()
        .parse()
        .unwrap();
    (p, mapped)
}

/// True when one datagram sent from `host` (a fresh socket) to `to` comes
/// back echoed (`fpn-lab echo send --udp`); also returns who the receiver
/// saw.
fn reaches(lab: &Lab, host: &str, to: SocketAddr) -> Option<SocketAddr> {
    let out = lab
        .exec(
            host,
            [
                BIN,
                "echo",
                "send",
                &to.to_string(),
                "--udp",
                "--message",
                "knock",
                "--timeout",
                "1.5",
            ],
        )
        .unwrap();
    out.success().then(|| {
        out.stdout
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    })
}

#[test]
fn endpoint_independent_mapping_keeps_one_port_per_endpoint_for_every_remote() {
    let lab = probe(r#"mapping = "endpoint-independent""#, "198.18.0");
    let public = lab.addr("gw", "wan").unwrap();
    let (s1, s1b, s2) = (
        addr(&lab, "s1", 7000),
        addr(&lab, "s1", 7001),
        addr(&lab, "s2", 7000),
    );

    let seen = whoami(&lab, "nas", 5000, &[s1, s1b, s2]);
    assert_eq!(seen[0], SocketAddr::new(public, 5000), "port preserved");
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");

    // The printer takes port 5001 towards s2 first. Linux masquerade would
    // still give the NAS 5001 towards s1 and then another port towards s2
    // (the tuple to s2 is taken); the EIM NAT gives the NAS one other port
    // for both.
    assert_eq!(whoami(&lab, "printer", 5001, &[s2])[0].port(), 5001);
    let seen = whoami(&lab, "nas", 5001, &[s1, s2]);
    assert_eq!(
        seen[0], seen[1],
        "one mapping whatever the remote: {seen:?}"
    );
    assert_ne!(seen[0].port(), 5001, "5001 is the printer's: {seen:?}");
}

/// Connects from `host`'s TCP port `local` to each server in turn (one
/// socket each, all bound to the same port with SO_REUSEADDR, as a node
/// reusing its port does) and returns the address each server greeted with.
fn whoami_tcp_from(lab: &Lab, host: &str, local: u16, servers: &[SocketAddr]) -> Vec<SocketAddr> {
    use std::io::{BufRead, BufReader};
    use std::os::fd::FromRawFd;
    let servers = servers.to_vec();
    lab.run_in(host, move || {
        servers
            .iter()
            .map(|server| {
                // SAFETY: plain socket calls on a descriptor we own; it is
                // handed to TcpStream, which closes it.
                let stream = unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    assert!(fd >= 0, "socket");
                    let one: libc::c_int = 1;
                    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            opt,
                            (&one as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        );
                    }
                    let mut sa: libc::sockaddr_in = std::mem::zeroed();
                    sa.sin_family = libc::AF_INET as libc::sa_family_t;
                    sa.sin_port = local.to_be();
                    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    let rc = libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len);
                    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                    let SocketAddr::V4(v4) = server else {
                        panic!("IPv4 servers only")
                    };
                    sa.sin_port = v4.port().to_be();
                    sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                    let rc = libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), len);
                    assert_eq!(
                        rc,
                        0,
                        "connect {server}: {}",
                        std::io::Error::last_os_error()
                    );
                    std::net::TcpStream::from_raw_fd(fd)
                };
                stream.set_read_timeout(Some(T)).unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                line.trim().parse().unwrap()
            })
            .collect()
    })
    .unwrap()
}

#[test]
fn tcp_flows_follow_the_same_mapping_rules() {
    for (mapping, one_port) in [
        ("endpoint-independent", true),
        ("address-and-port-dependent", false),
    ] {
        let lab = probe(&format!(r#"mapping = "{mapping}""#), "198.18.0");
        let (s1, s2) = (addr(&lab, "s1", 7000), addr(&lab, "s2", 7000));
        let seen = whoami_tcp_from(&lab, "nas", 5100, &[s1, s2]);
        assert_eq!(seen[0].port(), 5100, "{mapping}: first flow keeps its port");
        assert_eq!(seen[0] == seen[1], one_port, "{mapping}: {seen:?}");
    }
}

#[test]
fn address_dependent_mapping_keeps_a_port_per_remote_address() {
    let lab = probe(r#"mapping = "address-dependent""#, "198.18.0");
    let (s1, s1b, s2) = (
        addr(&lab, "s1", 7000),
        addr(&lab, "s1", 7001),
        addr(&lab, "s2", 7000),
    );
    let seen = whoami(&lab, "nas", 5000, &[s1, s1b, s2]);
    assert_eq!(seen[0].port(), 5000, "first mapping preserves: {seen:?}");
    assert_eq!(seen[0], seen[1], "same address, other port: same mapping");
    assert_ne!(seen[0], seen[2], "other address: other mapping");
}

#[test]
fn address_and_port_dependent_mapping_gives_each_remote_its_own_port() {
    let lab = probe(r#"mapping = "address-and-port-dependent""#, "198.18.0");
    let (s1, s1b, s2) = (
        addr(&lab, "s1", 7000),
        addr(&lab, "s1", 7001),
        addr(&lab, "s2", 7000),
    );
    let seen = whoami(&lab, "nas", 5000, &[s1, s1b, s2]);
    assert_eq!(seen[0].port(), 5000, "first mapping preserves: {seen:?}");
    assert_ne!(seen[0], seen[1], "{seen:?}");
    assert_ne!(seen[0], seen[2], "{seen:?}");
    assert_ne!(seen[1], seen[2], "{seen:?}");
}

#[test]
fn random_port_assignment_does_not_keep_the_inside_port() {
    // Both spellings: the RFC 4787 key and nat-home.toml's random_ports.
    for nat in [
        r#"mapping = "endpoint-independent", ports = "random""#,
        "random_ports = true",
    ] {
        let lab = probe(nat, "198.18.0");
        let (s1, s2) = (addr(&lab, "s1", 7000), addr(&lab, "s2", 7000));
        // Two sockets: one random port equal to its inside port is a 1 in
        // 64512 chance, both is not.
        let a = whoami(&lab, "nas", 5000, &[s1, s2]);
        let b = whoami(&lab, "nas", 5002, &[s1]);
        assert!(
            a[0].port() != 5000 || b[0].port() != 5002,
            "{nat}: {a:?} {b:?}"
        );
        if nat.contains("endpoint-independent") {
            assert_eq!(a[0], a[1], "{nat}: still one mapping");
        }
    }
}

#[test]
fn endpoint_independent_filtering_lets_anyone_reach_an_open_mapping() {
    let lab = probe(
        r#"mapping = "endpoint-independent", filtering = "endpoint-independent""#,
        "198.18.0",
    );
    let (_nas, mapped) = open_mapping(&lab, "nas", 6000, addr(&lab, "s1", 7000));
    let seen = reaches(&lab, "third", mapped).expect("third party must get in");
    assert_eq!(seen.ip(), lab.addr("third", "wan").unwrap());
    assert!(reaches(&lab, "s2", mapped).is_some());
}

#[test]
fn address_dependent_filtering_lets_in_only_addresses_the_inside_sent_to() {
    let lab = probe(
        r#"mapping = "endpoint-independent", filtering = "address-dependent""#,
        "198.18.0",
    );
    let (_nas, mapped) = open_mapping(&lab, "nas", 6000, addr(&lab, "s1", 7000));
    // s1 from a fresh port: its address was contacted, so it gets in.
    assert!(reaches(&lab, "s1", mapped).is_some(), "s1 (other port)");
    assert!(reaches(&lab, "third", mapped).is_none(), "third got in");
}

#[test]
fn address_and_port_dependent_filtering_lets_in_only_the_remote_endpoint() {
    let lab = probe(r#"mapping = "endpoint-independent""#, "198.18.0");
    let (_nas, mapped) = open_mapping(&lab, "nas", 6000, addr(&lab, "s1", 7000));
    assert!(
        reaches(&lab, "s1", mapped).is_none(),
        "s1 from another port got in"
    );
    assert!(reaches(&lab, "third", mapped).is_none(), "third got in");
}

#[test]
fn hairpinning_takes_an_inside_host_to_another_through_the_outside_address() {
    let public = "198.18.0.2".parse::<IpAddr>().unwrap();
    for hairpin in [true, false] {
        let lab = probe(
            &format!(r#"mapping = "endpoint-independent", hairpin = {hairpin}"#),
            "198.18.0",
        );
        let (_nas, mapped) = open_mapping(&lab, "nas", 6000, addr(&lab, "s1", 7000));
        assert_eq!(mapped.ip(), public);
        let seen = reaches(&lab, "printer", mapped);
        if hairpin {
            // The NAS sees the printer as an outside peer would.
            let seen = seen.expect("hairpin on: the printer must reach the NAS");
            assert_eq!(seen.ip(), public, "{seen}");
        } else {
            assert!(seen.is_none(), "hairpin off: {seen:?}");
        }
    }
}

/// From `host`, sends one datagram to a responder on s1 that answers after
/// `delay`; meanwhile sends a keepalive every `keepalive` (if any) to the
/// same responder. True when the late answer arrives.
fn late_answer_arrives(lab: &Lab, delay: Duration, keepalive: Option<Duration>) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let responder = lab
        .thread_in("s1", move || {
            // A fresh port per call: nothing of an earlier call is in the way.
            let s = UdpSocket::bind(("0.0.0.0", 0)).expect("responder socket");
            tx.send(s.local_addr().unwrap().port()).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let mut buf = [0u8; 64];
            let (_, from) = s.recv_from(&mut buf).unwrap();
            std::thread::sleep(delay);
            s.send_to(b"late", from).unwrap();
        })
        .unwrap();
    let s1 = addr(lab, "s1", rx.recv_timeout(T).expect("responder port"));
    let sock = lab
        .run_in("nas", || UdpSocket::bind(("0.0.0.0", 0)).unwrap())
        .unwrap();
    sock.send_to(b"hello", s1).unwrap();
    let until = Instant::now() + delay + Duration::from_secs(2);
    let mut next_keepalive = Instant::now();
    let mut buf = [0u8; 64];
    let got = loop {
        let now = Instant::now();
        if now >= until {
            break false;
        }
        if let Some(every) = keepalive
            && now >= next_keepalive
        {
            // Same socket, same remote: what a node's keepalive does.
            sock.send_to(b"keepalive", s1).unwrap();
            next_keepalive = now + every;
        }
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok((_, from)) = sock.recv_from(&mut buf)
            && from == s1
            && &buf[..4] == b"late"
        {
            break true;
        }
    };
    responder.join();
    got
}

#[test]
fn a_short_udp_timeout_expires_idle_mappings_and_keepalives_hold_them() {
    let lab = probe(
        r#"mapping = "endpoint-independent", udp_timeout = 3"#,
        "198.18.0",
    );
    assert!(
        late_answer_arrives(&lab, Duration::from_secs(1), None),
        "an answer within the timeout must arrive"
    );
    assert!(
        !late_answer_arrives(&lab, Duration::from_secs(5), None),
        "the mapping must expire after 3 s idle"
    );
    assert!(
        late_answer_arrives(&lab, Duration::from_secs(5), Some(Duration::from_secs(1))),
        "keepalives every second must hold the mapping"
    );
}

#[test]
fn bindings_expire_after_the_udp_timeout_unless_outbound_keepalives_refresh_them() {
    // Endpoint-independent filtering: whether a third host gets in shows
    // whether the router still has the binding (not only conntrack's entry).
    let lab = probe(
        r#"mapping = "endpoint-independent", filtering = "endpoint-independent", udp_timeout = 2"#,
        "198.18.0",
    );
    let s1 = addr(&lab, "s1", 7000);
    let (_idle, idle) = open_mapping(&lab, "nas", 6000, s1);
    let (_kept, kept) = open_mapping_with(&lab, "nas", 6001, s1, &["--keepalive", "0.5"]);
    assert!(reaches(&lab, "third", idle).is_some(), "fresh binding");
    std::thread::sleep(Duration::from_secs(4));
    assert!(reaches(&lab, "third", kept).is_some(), "kept alive");
    assert!(
        reaches(&lab, "third", idle).is_none(),
        "idle 4 s > 2 s: gone"
    );
}

#[test]
fn a_nat_changed_at_runtime_treats_new_flows_the_new_way() {
    let lab = probe(
        r#"mapping = "address-and-port-dependent", ports = "random""#,
        "198.18.0",
    );
    let s1 = addr(&lab, "s1", 7000);
    let (_before, before) = open_mapping(&lab, "nas", 6000, s1);
    assert!(
        reaches(&lab, "third", before).is_none(),
        "symmetric NAT let a third host in"
    );

    let mut nat = lab.nat("gw").unwrap().unwrap();
    nat.mapping = Mapping::EndpointIndependent;
    nat.ports = Some(PortAssignment::Preserving);
    nat.filtering = Filtering::EndpointIndependent;
    lab.set_nat("gw", nat.clone()).unwrap();
    assert_eq!(lab.nat("gw").unwrap(), Some(nat));

    let (_after, after) = open_mapping(&lab, "nas", 6001, s1);
    assert_eq!(after.port(), 6001, "the new NAT preserves ports");
    assert!(
        reaches(&lab, "third", after).is_some(),
        "the new NAT lets anyone in"
    );

    // Refused changes change nothing.
    let mut bad = lab.nat("gw").unwrap().unwrap();
    bad.udp_timeout = Some(0);
    assert!(lab.set_nat("gw", bad).is_err());
    assert!(
        lab.set_nat("s1", lab.nat("gw").unwrap().unwrap()).is_err(),
        "s1 has no nat"
    );
    assert_eq!(lab.nat("gw").unwrap().unwrap().udp_timeout, None);
}

#[test]
fn a_port_mapping_router_maps_ports_for_natpmp_and_upnp_clients() {
    need(&["miniupnpd", "natpmpc", "upnpc"]);
    // miniupnpd maps nothing while its outside address is reserved (as all
    // of 198.18.0.0/15 is): this router's outside is 198.20.0.2.
    let lab = probe(
        r#"mapping = "address-and-port-dependent", ports = "random", port_mapping = {}"#,
        "198.20.0",
    );
    let public: IpAddr = "198.20.0.2".parse().unwrap();
    let _echo = lab
        .command(
            "nas",
            [
                BIN,
                "echo",
                "serve",
                "--udp",
                "0.0.0.0:6000",
                "--tcp",
                "0.0.0.0:6100",
            ],
        )
        .name("echo")
        .spawn()
        .unwrap();
    _echo.wait_for_log("udp 0.0.0.0:6000", T).unwrap();

    // Nothing gets in before a mapping is asked for.
    assert!(reaches(&lab, "s1", SocketAddr::new(public, 6000)).is_none());

    // NAT-PMP (natpmpc finds the gateway from the default route).
    let out = lab
        .exec_ok("nas", ["natpmpc", "-a", "6000", "6000", "udp", "120"])
        .unwrap();
    assert!(
        out.contains("Mapped public port 6000 protocol UDP"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Public IP address : {public}")),
        "{out}"
    );
    let seen = reaches(&lab, "s1", SocketAddr::new(public, 6000)).expect("NAT-PMP mapping");
    assert_eq!(seen.ip(), lab.addr("s1", "wan").unwrap(), "DNAT only");

    // UPnP IGD, found by SSDP discovery on the LAN.
    let out = lab
        .exec_ok(
            "nas",
            ["upnpc", "-a", "192.168.1.10", "6100", "6100", "TCP"],
        )
        .unwrap();
    assert!(
        out.contains("is redirected to internal 192.168.1.10:6100"),
        "{out}"
    );
    let tcp = lab
        .exec(
            "s1",
            [
                BIN,
                "echo",
                "whoami",
                &format!("{public}:6100"),
                "--timeout",
                "2",
            ],
        )
        .unwrap();
    assert!(tcp.success(), "UPnP mapping: {}", tcp.stderr);
    let listed = lab.exec_ok("nas", ["upnpc", "-l"]).unwrap();
    assert!(listed.contains("6100->192.168.1.10:6100"), "{listed}");
    assert!(listed.contains("6000->192.168.1.10:6000"), "{listed}");
}

/// What a NAT's mapping looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// Classifies the mapping of the NAT in front of `host` by asking the VPS
/// on two addresses and two ports from one socket bound to `local`; also
/// says whether the inside port was kept.
fn classify(lab: &Lab, host: &str, local: u16) -> (Seen, bool) {
    let vps = lab.addrs("vps", "pub-vps").unwrap();
    let (v1, v2) = (vps[0].addr(), vps[1].addr());
    let seen = whoami(
        lab,
        host,
        local,
        &[
            SocketAddr::new(v1, 7000),
            SocketAddr::new(v1, 7001),
            SocketAddr::new(v2, 7000),
        ],
    );
    let kind = if seen[0] == seen[1] && seen[0] == seen[2] {
        Seen::EndpointIndependent
    } else if seen[0] == seen[1] {
        Seen::AddressDependent
    } else {
        Seen::AddressAndPortDependent
    };
    (kind, seen[0].port() == local)
}

/// Simultaneous open between `a` and `b`: each sends to the address the VPS
/// saw the other's socket as, and answers whatever address reaches it
/// (a peer-reflexive candidate), for up to three seconds. True when each
/// side got a datagram from the other.
fn punch(lab: &Lab, a_port: u16, b_port: u16) -> bool {
    let vps = SocketAddr::new(lab.addr("vps", "pub-vps").unwrap(), 7000);
    let bind = |host: &str, port: u16| {
        let s = lab
            .run_in(host, move || UdpSocket::bind(("0.0.0.0", port)).unwrap())
            .unwrap();
        let mapped = fpn_lab::echo::whoami_udp_on(&s, vps, T).unwrap();
        s.set_nonblocking(true).unwrap();
        (s, mapped)
    };
    let (a, a_ext) = bind("a", a_port);
    let (b, b_ext) = bind("b", b_port);
    let (mut a_to, mut b_to) = (b_ext, a_ext);
    let (mut a_got, mut b_got) = (false, false);
    let until = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 64];
    while Instant::now() < until && !(a_got && b_got) {
        let _ = a.send_to(b"punch", a_to);
        let _ = b.send_to(b"punch", b_to);
        std::thread::sleep(Duration::from_millis(100));
        while let Ok((_, from)) = a.recv_from(&mut buf) {
            if from != vps {
                a_got = true;
                a_to = from;
            }
        }
        while let Ok((_, from)) = b.recv_from(&mut buf) {
            if from != vps {
                b_got = true;
                b_to = from;
            }
        }
    }
    a_got && b_got
}

#[test]
fn the_nat_matrix_files_are_what_their_comments_say() {
    use Seen::*;
    need(&["nft", "miniupnpd", "natpmpc"]);
    // file, home A's mapping and port preservation, home B's, punching works
    let cases = [
        (
            "eim",
            (EndpointIndependent, true),
            (EndpointIndependent, true),
            true,
        ),
        (
            "adm",
            (EndpointIndependent, true),
            (AddressDependent, false),
            true,
        ),
        (
            "symmetric",
            (AddressAndPortDependent, false),
            (AddressAndPortDependent, false),
            false,
        ),
        (
            "upnp",
            (AddressAndPortDependent, false),
            (AddressAndPortDependent, false),
            false,
        ),
        (
            "timeout",
            (EndpointIndependent, true),
            (EndpointIndependent, true),
            true,
        ),
    ];
    for (case, home_a, home_b, direct) in cases {
        let file = format!("nat-matrix-{case}.toml");
        let lab = Lab::up(fpn_lab::config_path(&file)).unwrap();
        // One socket per address: a reply from 0.0.0.0 would leave from
        // the first address whichever one was asked.
        let mut argv = vec![BIN.to_string(), "echo".into(), "serve".into()];
        for a in lab.addrs("vps", "pub-vps").unwrap() {
            for port in [7000, 7001] {
                argv.extend(["--udp".into(), SocketAddr::new(a.addr(), port).to_string()]);
            }
        }
        let echo = lab.command("vps", argv).spawn().unwrap();
        echo.wait_for_log("udp 198.18.1.11:7001", T).unwrap();
        // Random ports: two sockets, so one lucky port cannot pass.
        let a = classify(&lab, "a", 5000);
        let b = classify(&lab, "b", 5000);
        let (a, b) = (
            (a.0, a.1 || classify(&lab, "a", 5001).1),
            (b.0, b.1 || classify(&lab, "b", 5001).1),
        );
        assert_eq!((a, b), (home_a, home_b), "{file}: (home A, home B)");
        assert_eq!(punch(&lab, 6000, 6000), direct, "{file}: hole punching");
        if case == "upnp" {
            // With a mapping on gwa, b reaches a's socket directly.
            let out = lab
                .exec_ok("a", ["natpmpc", "-a", "6100", "6100", "udp", "120"])
                .unwrap();
            assert!(out.contains("Mapped public port 6100"), "{out}");
            let _srv = lab
                .command("a", [BIN, "echo", "serve", "--udp", "0.0.0.0:6100"])
                .spawn()
                .unwrap();
            _srv.wait_for_log("udp 0.0.0.0:6100", T).unwrap();
            let mapped = SocketAddr::new(lab.addr("gwa", "pub-a").unwrap(), 6100);
            assert!(
                reaches(&lab, "b", mapped).is_some(),
                "{file}: b to a's mapping"
            );
        }
    }
}
