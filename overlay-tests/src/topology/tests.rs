//! Parsing and validation of topology files (no root needed).

use super::*;

fn parse(text: &str) -> Result<Topology, Error> {
    Topology::parse(text, "<test>")
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const PAIR: &str = r#"
[hosts.a]
[hosts.b]
[[links]]
name = "ab"
ends = [{ host = "a", addr = "198.18.0.1/24" }, { host = "b", addr = "198.18.0.2/24" }]
"#;

#[test]
fn example_topologies_parse() {
    for name in [
        "two-hosts.toml",
        "routed.toml",
        "nat-home.toml",
        "nat-two-homes.toml",
        "overlay.toml",
        "nat-matrix-eim.toml",
        "nat-matrix-adm.toml",
        "nat-matrix-symmetric.toml",
        "nat-matrix-upnp.toml",
        "nat-matrix-timeout.toml",
        "demo.toml",
    ] {
        let t = Topology::from_file(crate::config_path(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.hosts.is_empty(), "{name}");
    }
    let t = Topology::from_file(crate::config_path("nat-home.toml")).unwrap();
    let cafe = t.end("laptop", "cafelan").unwrap();
    assert!(!cafe.attached);
    assert_eq!(cafe.ifname(), "wlan0");
    assert_eq!(t.end("laptop", "homelan").unwrap().ifname(), "wlan0");
    assert!(t.hosts["gw"].forward, "nat implies forward");
    assert_eq!(t.hosts["gw"].nat.as_ref().unwrap().forwards.len(), 1);
}

#[test]
fn normalization_fills_defaults() {
    let t = parse(PAIR).unwrap();
    let l = t.link("ab").unwrap();
    assert!(!l.is_switch());
    assert_eq!(l.ends[0].ifname(), "ab");
    assert_eq!(l.ends[0].addrs, vec!["198.18.0.1/24".parse().unwrap()]);
    assert!(l.ends[0].addr.is_none(), "addr folded into addrs");

    let three = r#"
[hosts.a]
[hosts.b]
[hosts.c]
[[links]]
name = "lan"
ends = [{ host = "a" }, { host = "b" }, { host = "c" }]
"#;
    assert!(parse(three).unwrap().link("lan").unwrap().is_switch());
}

#[test]
fn services_get_names() {
    let t = parse(
        r#"
[hosts.a]
services = ["iperf3 -s", "/usr/bin/iperf3 -s -p 5202", { name = "web", cmd = "sleep 9", wait_for = "x" }]
"#,
    )
    .unwrap();
    let names: Vec<&str> = t.hosts["a"]
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["iperf3", "iperf3-2", "web"]);
    assert_eq!(t.hosts["a"].services[2].wait_for.as_deref(), Some("x"));
}

#[test]
fn sysctl_values_print_as_the_kernel_wants() {
    let t = parse(
        r#"
[hosts.a]
sysctls = { "net.ipv4.tcp_rmem" = "4096 87380 6291456", "net.ipv4.ip_forward" = true, "net.core.somaxconn" = 512 }
"#,
    )
    .unwrap();
    let s = &t.hosts["a"].sysctls;
    assert_eq!(s["net.ipv4.ip_forward"].to_string(), "1");
    assert_eq!(s["net.core.somaxconn"].to_string(), "512");
    assert_eq!(s["net.ipv4.tcp_rmem"].to_string(), "4096 87380 6291456");
}

#[test]
fn state_json_round_trips_the_topology() {
    let t = Topology::from_file(crate::config_path("nat-home.toml")).unwrap();
    let json = serde_json::to_string(&t).unwrap();
    let back: Topology = serde_json::from_str(&json).unwrap();
    assert_eq!(t, back);
}

#[test]
fn bad_topologies_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("", "no hosts"),
        ("[hosts.a]\nbogus = 1", "unknown field"),
        ("[hosts.A]", "host name `A`"),
        ("[hosts.averyveryverylonghost]", "host name"),
        ("[hosts.lo]", "reserved"),
        (
            "[hosts.a]\nresolv_conf = \"nameserver 1.2.3.4\\u0000\"",
            "resolv_conf contains a NUL",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"l\"\nends = [{ host = \"zz\" }]",
            "unknown host `zz`",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"a\"\nends = [{ host = \"a\" }]",
            "used twice",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\" }, { host = \"a\" }]",
            "appears twice",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\", attached = false }, { host = \"b\" }]",
            "needs `switch = true`",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\", ifname = \"sixteen-chars-xx\" }]",
            "interface name",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\", addr = \"10.0.0.1/33\" }]",
            "prefix length",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\", addr = \"10.0.0.1/24\", gateway = \"10.0.1.1\" }]",
            "not in the subnet",
        ),
        (
            "[hosts.a]\nroutes = [{ to = \"default\", via = \"10.0.0.9\" }]\n[[links]]\nname = \"l\"\nends = [{ host = \"a\", addr = \"10.0.0.1/24\", gateway = \"10.0.0.254\" }]",
            "two default routes",
        ),
        (
            "[hosts.a]\nroutes = [{ to = \"10.0.0.0/8\" }]",
            "needs `via` or `dev`",
        ),
        (
            "[hosts.a]\nroutes = [{ to = \"10.0.0.0/8\", dev = \"x\" }]",
            "not on",
        ),
        (
            "[hosts.a]\nroutes = [{ to = \"10.0.0.0/8\", via = \"fd00::1\" }]",
            "mixes address",
        ),
        (
            "[hosts.a]\nnat = { out = \"nowhere\" }",
            "not a link of this host",
        ),
        (
            "[hosts.a]\nsysctls = { \"kernel.panic\" = 1 }",
            "only net.*",
        ),
        ("[hosts.a]\nsysctls = { \"net.ipv4..x\" = 1 }", "only net.*"),
        ("[hosts.a]\nrun = [\"  \"]", "empty command"),
        (
            "[hosts.a]\nservices = [{ name = \"x\", cmd = \"a\" }, { name = \"x\", cmd = \"b\" }]",
            "two services",
        ),
        (
            "[hosts.a]\nservices = [{ cmd = \"a\", wait_secs = 0.0 }]",
            "wait_secs",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\ndelay = \"10 ms\"\nends = [{ host = \"a\" }, { host = \"b\" }]",
            "delay",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\nrate = \"fast\"\nends = [{ host = \"a\" }, { host = \"b\" }]",
            "rate",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\njitter = \"1ms\"\nends = [{ host = \"a\" }, { host = \"b\" }]",
            "jitter needs delay",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\nmtu = 20\nends = [{ host = \"a\" }, { host = \"b\" }]",
            "mtu",
        ),
        (
            "[hosts.a]\n[hosts.b]\n[[links]]\nname = \"l\"\nends = []",
            "no ends",
        ),
        (
            "[hosts.a]\n[[links]]\nname = \"l1\"\nends = [{ host = \"a\", ifname = \"eth0\" }]\n[[links]]\nname = \"l2\"\nends = [{ host = \"a\", ifname = \"eth0\" }]",
            "interface `eth0` is used by links",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "for:\n{text}\nexpected `{want}` in: {e}");
    }
}

#[test]
fn a_detached_end_may_share_an_interface_name() {
    let t = r#"
[hosts.l]
[[links]]
name = "home"
ends = [{ host = "l", addr = "10.0.0.5/24", ifname = "wlan0", gateway = "10.0.0.1" }]
[[links]]
name = "cafe"
ends = [{ host = "l", addr = "10.1.0.5/24", ifname = "wlan0", gateway = "10.1.0.1", attached = false }]
"#;
    let topo = parse(t).unwrap();
    assert!(topo.link("cafe").unwrap().is_switch());
}

const NAT_ROUTER: &str = r#"
[hosts.gw]
nat = { out = "wan", NAT }
[hosts.in]
[[links]]
name = "wan"
ends = [{ host = "gw", addr = "WAN/24" }, { host = "in", addr = "198.18.9.1/24" }]
[[links]]
name = "lan"
ends = [{ host = "gw", addr = "10.0.0.1/24" }, { host = "in", addr = "10.0.0.2/24", ifname = "lan2" }]
"#;

fn nat_router(nat: &str, wan: &str) -> String {
    NAT_ROUTER.replace("NAT", nat).replace("WAN", wan)
}

#[test]
fn nat_behaviours_parse_with_defaults() {
    let t = parse(&nat_router(r#"mapping = "address-dependent", filtering = "endpoint-independent", hairpin = true, udp_timeout = 10"#, "198.18.9.2")).unwrap();
    let nat = t.hosts["gw"].nat.as_ref().unwrap();
    assert_eq!(nat.mapping, Mapping::AddressDependent);
    assert_eq!(nat.filtering, Filtering::EndpointIndependent);
    assert_eq!(nat.port_assignment(), PortAssignment::Preserving);
    assert!(nat.hairpin && nat.keeps_bindings());
    assert_eq!(nat.udp_timeout, Some(10));

    // nat-home.toml's keys alone: Linux masquerade, no binding table.
    let t = parse(&nat_router("random_ports = true", "198.18.9.2")).unwrap();
    let nat = t.hosts["gw"].nat.as_ref().unwrap();
    assert_eq!(nat.mapping, Mapping::Linux);
    assert_eq!(nat.filtering, Filtering::AddressAndPortDependent);
    assert_eq!(nat.port_assignment(), PortAssignment::Random);
    assert!(!nat.keeps_bindings());

    let t = parse(&nat_router("port_mapping = { upnp = false }", "198.20.9.2")).unwrap();
    let pm = t.hosts["gw"]
        .nat
        .as_ref()
        .unwrap()
        .port_mapping
        .clone()
        .unwrap();
    assert!(pm.natpmp && !pm.upnp);
    assert_eq!(pm.http_port, 5000);
}

#[test]
fn bad_nat_behaviours_are_refused_with_a_reason() {
    let e = err(&nat_router(r#"mapping = "full-cone""#, "198.18.9.2"));
    assert!(e.contains("full-cone"), "{e}");
    let e = err(&nat_router(
        r#"random_ports = true, ports = "preserving""#,
        "198.18.9.2",
    ));
    assert!(e.contains("keep one"), "{e}");
    for secs in [0, 3601] {
        let e = err(&nat_router(&format!("udp_timeout = {secs}"), "198.18.9.2"));
        assert!(e.contains("udp_timeout"), "{e}");
    }
    // miniupnpd would start and then map nothing.
    let e = err(&nat_router("port_mapping = {}", "198.18.9.2"));
    assert!(e.contains("reserved") && e.contains("198.18.9.2"), "{e}");
    let e = err(&nat_router(
        "port_mapping = { natpmp = false, upnp = false }",
        "198.20.9.2",
    ));
    assert!(e.contains("neither"), "{e}");
}

#[test]
fn miniupnpd_reserved_ranges_match_its_list() {
    use super::nat::miniupnpd_refuses;
    for ip in [
        "198.18.0.1",
        "198.19.255.255",
        "10.1.2.3",
        "192.168.1.1",
        "100.64.0.1",
        "203.0.113.9",
    ] {
        assert!(miniupnpd_refuses(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["198.20.0.2", "198.17.255.255", "8.8.8.8", "100.128.0.1"] {
        assert!(!miniupnpd_refuses(ip.parse().unwrap()), "{ip}");
    }
}
