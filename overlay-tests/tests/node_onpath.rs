//! Gateways on the path (issue 11, part 2; configs/lab/onpath.toml): GESs
//! in the LANs of a GEN and a GEA talk across them on a routed intranet.
//! Each gateway's kernel routes the DDEs that cross it into its TUN; the
//! node joins the negotiation (its hop, credential and signature in the
//! transcript both ends check) and then relays the flow the ends protect,
//! or drops the flow its rules refuse, in `forward` in both directions.
//!
//! Checked with captures on the links between the hops and with the
//! gateways' own state (their transit entries, the drop set in nftables),
//! not only with the ends' status (docs/DESIGN-NOTES.md note 54).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{echo_server, need, route_get, send_marked, wait_native};
use fpn_lab::overlay::{Mode as M, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

/// The UDP port the echo servers listen on.
const PORT: u16 = 9200;

/// The GEs: (lab host, kind, mode, groups, the prefix it protects).
const GES: [(&str, &str, M, &[u32], &str); 6] = [
    ("gen", "gen", M::Cl, &[9], "192.168.1.0/24"),
    ("gea", "gea", M::Cl, &[3], "192.168.5.10/32"),
    ("inner", "ges", M::Op, &[1], "192.168.2.20/32"),
    ("far", "ges", M::Op, &[1], "192.168.6.20/32"),
    ("out", "ges", M::Op, &[1], "198.18.2.2/32"),
    ("stranger", "ges", M::Op, &[2], "198.18.3.2/32"),
];

fn onpath() -> Overlay {
    need(common::OVERLAY_TOOLS);
    let lab = Lab::up(config_path("onpath.toml")).unwrap();
    let mut spec = Spec::new(
        &[(1, "g1"), (2, "g2"), (3, "g3"), (9, "g9")],
        GES.iter()
            .map(|(n, _, m, g, _)| NodeSpec::new(n, *m, g))
            .collect(),
    );
    spec.gms_host = "gms".into();
    spec.gms_link = "l-gms".into();
    spec.define = false;
    let ov = Overlay::prepare(lab, &spec).unwrap();
    for g in [1, 2, 3, 9] {
        ov.gms_admin(&["group", "add", &g.to_string(), "--name", &format!("g{g}")])
            .unwrap();
    }
    for (name, kind, mode, groups, prefix) in GES {
        let mut args: Vec<String> = ["ge", "add", name, "--kind", kind, "--protect", prefix]
            .map(String::from)
            .to_vec();
        args.extend([
            "--mode".into(),
            if mode == M::Op { "op" } else { "cl" }.into(),
        ]);
        for g in groups {
            args.extend(["--group".into(), g.to_string()]);
        }
        ov.gms_admin(&args).unwrap();
    }
    for (name, ..) in GES {
        ov.enroll(name).unwrap();
    }
    for (name, ..) in GES {
        ov.up(name)
            .unwrap_or_else(|e| panic!("{name} up: {e}\n{}", ov.log_tails(30)));
    }
    ov
}

fn addr(lab: &Lab, host: &str, link: &str) -> IpAddr {
    lab.addr(host, link).unwrap()
}

/// The flows `node` lists as negotiated through it (carrier "transit").
fn transit(ov: &Overlay, node: &str) -> Vec<serde_json::Value> {
    let st = ov.status(node).unwrap();
    st["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["carrier"] == "transit")
        .cloned()
        .collect()
}

fn ge_id(ov: &Overlay, node: &str) -> u64 {
    ov.status(node).unwrap()["ge"].as_u64().unwrap()
}

#[test]
fn gateways_on_the_path_join_relay_and_drop_as_the_rules_say() {
    let ov = onpath();
    let lab = ov.lab();
    let (inner, far) = (addr(lab, "inner", "lan-i"), addr(lab, "far", "lan-f"));
    let (out, stranger) = (addr(lab, "out", "l-out"), addr(lab, "stranger", "l-str"));
    // The GEN steers what comes from the terminals it protects, not the
    // GES in its other LAN (that GE speaks for itself); a DDE crossing it
    // (the mark its table sets) goes into its TUN.
    let lan = route_get(lab, "gen", &format!("{out} from {inner} iif lan-i"));
    assert!(!lan.contains("fpn0"), "{lan}");
    let terminals = route_get(lab, "gen", &format!("{out} from 192.168.1.10 iif lan-t"));
    assert!(terminals.contains("dev fpn0"), "{terminals}");
    let dde = route_get(
        lab,
        "gen",
        &format!("{out} from {inner} iif lan-i mark 0x77170001"),
    );
    assert!(dde.contains("dev fpn0"), "{dde}");
    let _servers: Vec<_> = ["inner", "far", "out", "stranger"]
        .iter()
        .map(|h| echo_server(lab, h, PORT))
        .collect();
    // DPRP takes the IP path once the ends' paths are native.
    for (a, b) in [
        ("inner", "out"),
        ("out", "inner"),
        ("inner", "far"),
        ("inner", "stranger"),
    ] {
        wait_native(&ov, a, b);
    }
    let cap_gen = lab
        .capture("gen", "l-gen", &format!("udp port {PORT}"))
        .unwrap();
    let cap_gea = lab
        .capture("gea", "l-gea", &format!("udp port {PORT}"))
        .unwrap();
    let cap_str = lab
        .capture("stranger", "l-str", &format!("udp port {PORT}"))
        .unwrap();

    // 1. Across the GEN, both ways: the ends (group 1) protect the flow in
    // place, the closed GEN {9} joins and relays it.
    for (from, to, dst) in [("inner", "out", out), ("out", "inner", inner)] {
        let m = format!("ONPATH-MARK-{from}-to-{to}");
        let (r, took) = send_marked(
            lab,
            from,
            SocketAddr::new(dst, PORT),
            m,
            Duration::from_secs(6),
        );
        assert!(
            r.is_ok(),
            "{from} -> {to}: {r:?} after {took:?}\n{}\n{}",
            ov.log_tails(40),
            ov.status("gen").unwrap()
        );
    }
    // 2. Across both gateways: the GEN and the GEA {3} both relay.
    let m = "ONPATH-MARK-inner-to-far".to_string();
    let (r, took) = send_marked(
        lab,
        "inner",
        SocketAddr::new(far, PORT),
        m,
        Duration::from_secs(6),
    );
    assert!(
        r.is_ok(),
        "inner -> far: {r:?} after {took:?}\n{}",
        ov.log_tails(40)
    );
    // 3. inner -> stranger: two open ends without a shared group would
    // pass it plain; the closed GEN between them drops it, and the sender
    // is told at once.
    let m = "ONPATH-MARK-inner-to-stranger".to_string();
    let (r, took) = send_marked(
        lab,
        "inner",
        SocketAddr::new(stranger, PORT),
        m,
        Duration::from_secs(6),
    );
    assert!(r.is_err(), "inner -> stranger must be dropped at the GEN");
    assert!(
        took < Duration::from_secs(2),
        "refused after {took:?}, not fast ({r:?})"
    );
    std::thread::sleep(Duration::from_millis(300));

    let (id_inner, id_out) = (ge_id(&ov, "inner"), ge_id(&ov, "out"));
    let at_gen = transit(&ov, "gen");
    let relayed = |list: &[serde_json::Value], src: IpAddr, dst: IpAddr, by: u64| {
        list.iter().any(|f| {
            f["src"] == src.to_string()
                && f["dst"] == dst.to_string()
                && f["action"] == "relay"
                && f["peer"] == by
        })
    };
    assert!(relayed(&at_gen, inner, out, id_inner), "{at_gen:#?}");
    assert!(relayed(&at_gen, out, inner, id_out), "{at_gen:#?}");
    assert!(relayed(&at_gen, inner, far, id_inner), "{at_gen:#?}");
    let at_gea = transit(&ov, "gea");
    assert!(relayed(&at_gea, inner, far, id_inner), "{at_gea:#?}");
    assert!(
        at_gen
            .iter()
            .any(|f| f["dst"] == stranger.to_string() && f["action"] == "refuse"),
        "{at_gen:#?}"
    );
    let st = ov.status("gen").unwrap();
    assert!(
        st["counters"]["dprp_transit_in"].as_u64() >= Some(4),
        "{st}"
    );
    assert_eq!(st["counters"]["transit_dropped"], 1, "{st}");
    // The ends negotiated with each other (the gateway is no end).
    let ends = ov.status("inner").unwrap();
    assert!(
        ends["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["action"] == "encrypt"
                && f["dst"] == out.to_string()
                && f["peer"] == id_out
                && f["carrier"] == "native"),
        "{ends:#}"
    );
    // The drop is in the GEN's kernel, for both directions of the flow.
    let set = lab
        .sh("gen", "nft list set inet fpn_natf_fpn0 transit_drop")
        .unwrap();
    assert!(
        set.stdout.contains(&format!("{inner} . {stranger} . udp")),
        "{}{}",
        set.stdout,
        set.stderr
    );

    // On the wire: between the hops the relayed flows are PCCOM on their
    // own addresses and port (in place, no tunnel), without the markers;
    // the refused flow never reached the stranger's link.
    let (pgen, pgea, pstr) = (
        cap_gen.stop().unwrap(),
        cap_gea.stop().unwrap(),
        cap_str.stop().unwrap(),
    );
    for m in ["inner-to-out", "out-to-inner", "inner-to-far"] {
        let m = format!("ONPATH-MARK-{m}");
        assert!(!pgen.contains(m.as_bytes()), "{m} crossed l-gen in plain");
        assert!(!pgea.contains(m.as_bytes()), "{m} crossed l-gea in plain");
    }
    assert!(
        common::udp_between(&pgen, inner, out).0 >= 2,
        "in place on l-gen"
    );
    assert!(
        common::udp_between(&pgea, inner, far).0 >= 2,
        "in place on l-gea"
    );
    assert_eq!(
        common::udp_between(&pstr, inner, stranger).0,
        0,
        "the refused flow reached the stranger"
    );
}
