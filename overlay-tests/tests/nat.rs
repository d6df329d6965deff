//! NAT: masquerade, port forwards and the inbound firewall of nat-home.toml.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BIN, need};
use fpn_lab::{Lab, config_path};

const T: Duration = Duration::from_secs(5);

/// Starts `fpn-lab echo serve` on port 7000 (TCP and UDP) in `host`.
fn echo_server(lab: &Lab, host: &str) -> fpn_lab::Process {
    let p = lab
        .command(
            host,
            [
                BIN,
                "echo",
                "serve",
                "--tcp",
                "0.0.0.0:7000",
                "--udp",
                "0.0.0.0:7000",
            ],
        )
        .name("echo")
        .spawn()
        .unwrap();
    p.wait_for_log("udp 0.0.0.0:7000", T).unwrap();
    p
}

fn whoami(lab: &Lab, host: &str, server: SocketAddr, udp: bool) -> fpn_lab::Output {
    let mut argv = vec![
        BIN.to_string(),
        "echo".into(),
        "whoami".into(),
        server.to_string(),
    ];
    if udp {
        argv.push("--udp".into());
    }
    argv.extend(["--timeout".into(), "2".into()]);
    lab.exec(host, argv).unwrap()
}

#[test]
fn a_host_behind_the_nat_reaches_the_vps_from_the_routers_public_address() {
    need(&["nft"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    let _echo = echo_server(&lab, "vps");
    let vps = SocketAddr::new(lab.addr("vps", "pub-vps").unwrap(), 7000);
    let public = lab.addr("gw", "pub-home").unwrap();
    for udp in [false, true] {
        let out = whoami(&lab, "nas", vps, udp);
        assert!(out.success(), "udp={udp}: {}", out.stderr);
        let seen: SocketAddr = out.stdout.trim().parse().unwrap();
        assert_eq!(
            seen.ip(),
            public,
            "udp={udp}: the VPS must see the home router"
        );
    }
    // Same check from Rust in the namespace, without the CLI.
    let seen = lab
        .run_in("printer", move || fpn_lab::echo::whoami_tcp(vps, T))
        .unwrap()
        .unwrap();
    assert_eq!(seen.ip(), public);
    // The VPS itself is not NATed.
    let out = whoami(&lab, "inet", vps, false);
    assert_eq!(
        out.stdout.trim().parse::<SocketAddr>().unwrap().ip(),
        lab.addr("inet", "pub-vps").unwrap()
    );
}

#[test]
fn a_port_forward_reaches_the_nas_and_nothing_else_gets_in() {
    need(&["nft"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    // The NAS serves on port 80, which gw forwards from its port 8080.
    let _echo = lab
        .command(
            "nas",
            [
                BIN,
                "echo",
                "serve",
                "--tcp",
                "0.0.0.0:80",
                "--tcp",
                "0.0.0.0:7000",
            ],
        )
        .spawn()
        .unwrap();
    _echo.wait_for_log("tcp 0.0.0.0:7000", T).unwrap();
    let public = lab.addr("gw", "pub-home").unwrap();
    let out = whoami(&lab, "vps", SocketAddr::new(public, 8080), false);
    assert!(out.success(), "forward failed: {}", out.stderr);
    // DNAT only: the NAS sees the VPS's real address.
    let seen: SocketAddr = out.stdout.trim().parse().unwrap();
    assert_eq!(seen.ip(), lab.addr("vps", "pub-vps").unwrap());

    // Give the internet a route into the home LAN: without the firewall's
    // drop rule the NAS would now be reachable directly.
    let nas = lab.addr("nas", "homelan").unwrap();
    lab.replace_route("inet", "192.168.1.0/24", public).unwrap();
    let out = whoami(&lab, "vps", SocketAddr::new(nas, 7000), false);
    assert!(
        !out.success(),
        "unsolicited inbound got through: {}",
        out.stdout
    );
    // ... while from inside the LAN it is there.
    let out = whoami(&lab, "printer", SocketAddr::new(nas, 7000), false);
    assert!(out.success(), "{}", out.stderr);
}

#[test]
fn an_open_nat_lets_routed_inbound_traffic_in() {
    need(&["nft"]);
    let lab = Lab::from_toml(
        r#"
[hosts.out]
[hosts.nat]
nat = { out = "wan", inbound = "accept" }
[hosts.inside]
[[links]]
name = "wan"
ends = [{ host = "out", addr = "198.18.5.1/24" }, { host = "nat", addr = "198.18.5.2/24" }]
[[links]]
name = "lan"
ends = [{ host = "nat", addr = "10.5.0.1/24" }, { host = "inside", addr = "10.5.0.2/24", gateway = "10.5.0.1" }]
"#,
    )
    .unwrap();
    lab.replace_route("out", "10.5.0.0/24", "198.18.5.2".parse().unwrap())
        .unwrap();
    lab.exec_ok("out", ["ping", "-c1", "-W2", "10.5.0.2"])
        .unwrap();
    let rules = lab
        .exec_ok("nat", ["nft", "list", "table", "ip", "fpnlab_nat"])
        .unwrap();
    assert!(
        rules.contains("masquerade") && !rules.contains("drop"),
        "{rules}"
    );
}
