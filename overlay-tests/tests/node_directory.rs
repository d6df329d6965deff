//! Issue 13, the directory at scale (design note 66): with the directory
//! on demand a node resolves every peer's name at once (the listing) but
//! follows, at the GMS, only the peers it talks to. Three nodes behind
//! NATs (configs/lab/nat-matrix-eim.toml: a and a2 in one home, b in
//! another): a pings b; once the sweeps have forgotten the peers fetched
//! for the cache, the GMS says a and b follow one GE each and a2 none,
//! not every listed one, and a still resolves a2, which it never talked
//! to; after a GMS restart a, still talking to b, follows b again.

mod common;

use std::time::{Duration, Instant};

use common::{OVERLAY_TOOLS, need};
use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};
use fpn_lab::{Lab, config_path};

/// How many GEs the GMS says `name`'s node follows.
fn follows(ov: &Overlay, name: &str) -> u64 {
    let ge = ov.gms_json(&["ge", "show", name]).unwrap();
    ge["follows"]
        .as_u64()
        .unwrap_or_else(|| panic!("ge show {name} without follows: {ge}"))
}

#[test]
fn a_node_behind_a_nat_follows_only_the_peer_it_talks_to_and_resolves_the_others() {
    need(OVERLAY_TOOLS);
    let lab = Lab::up(config_path("nat-matrix-eim.toml")).expect("lab");
    let nodes = ["a", "a2", "b"]
        .map(|n| NodeSpec {
            host: n.into(),
            ..NodeSpec::new(n, Mode::Op, &[1])
        })
        .to_vec();
    let ov = Overlay::start(lab, &Spec::new(&[(1, "home")], nodes))
        .unwrap_or_else(|e| panic!("overlay start: {e}"));
    let lab = ov.lab();

    // a2's name resolves on a from the listing alone.
    let a2 = Overlay::fqdn("a2");
    let stub = lab
        .exec_ok("a", ["dig", "+short", "+time=2", "+tries=2", &a2, "A"])
        .unwrap();
    assert_eq!(
        stub.trim(),
        ov.overlay_addr("a2").unwrap().to_string(),
        "a's DNS stub answer for {a2}"
    );

    let b = Overlay::fqdn("b");
    common::ping_until_answered(&ov, "a", &b, Duration::from_secs(20));
    // a keeps talking to b. Each node first fetches every listed peer's
    // credential for its cache, which follows them for a while; the sweeps
    // (every 30 s) forget those without a live flow after two rounds.
    let ping = ov
        .lab()
        .command("a", ["ping", "-n", "-i", "0.5", "-w", "200", &b])
        .name("ping")
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let f = ["a", "a2", "b"].map(|n| follows(&ov, n));
        // A listing that followed every GE would keep these at 2 each.
        if f == [1, 0, 1] {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "a, a2, b follow {f:?} GEs, not [1, 0, 1] (a and b talk, a2 talks to nobody)\n{}",
            ov.log_tails(40)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // The GMS restarts (its follows are gone with it): a, still talking to
    // b, follows b again in its new session, and still b alone.
    ov.stop_gms();
    ov.start_gms().unwrap();
    let t = Instant::now();
    while !ov.gms_json(&["ge", "show", "a"]).unwrap()["online"]
        .as_bool()
        .unwrap_or(false)
        || follows(&ov, "a") < 1
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "a did not follow b again after the GMS restarted\n{}",
            ov.log_tails(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        follows(&ov, "a"),
        1,
        "a follows more than b after the restart"
    );
    drop(ping);
}
