//! The overlay harness's GMS side, without nodes: fpn-gms initialised and
//! serving in the lab's VPS, groups and GEs defined through its admin CLI,
//! tokens created, and a kill/restart.

mod common;

use fpn_lab::overlay::{Mode, NodeSpec, Overlay, Spec};

#[test]
fn the_gms_runs_in_the_vps_and_takes_groups_ges_and_tokens() {
    common::need(&[]);
    let lab = fpn_lab::Lab::up(fpn_lab::config_path("overlay.toml")).unwrap();
    let spec = Spec::new(
        &[(1, "home"), (2, "work")],
        vec![
            NodeSpec::new("a", Mode::Op, &[1]),
            NodeSpec::new("d", Mode::Cl, &[2]),
        ],
    );
    let ov = Overlay::prepare(lab, &spec).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ov.gms_addr().to_string(), "198.18.1.10:4433");

    let groups = ov.gms_json(&["group", "list"]).unwrap();
    assert_eq!(groups.as_array().map(Vec::len), Some(2), "{groups}");
    let d = ov.gms_json(&["ge", "show", "d"]).unwrap();
    assert_eq!(d["mode"], "cl", "{d}");
    let token = ov.token("a").unwrap();
    assert!(token.starts_with("fpn1:"), "{token}");
    assert!(ov.token("nobody").is_err(), "a token for an unknown GE");

    // The GMS answers from a node's host, across the router.
    let out = ov
        .lab()
        .exec("a", ["ping", "-c1", "-W2", "198.18.1.10"])
        .unwrap();
    assert!(out.success(), "{}", out.stderr);

    ov.kill_gms();
    assert!(
        ov.gms_admin(&["status"]).is_err(),
        "admin CLI answered with the GMS killed"
    );
    ov.start_gms().unwrap();
    let st = ov.gms_json(&["status"]).unwrap();
    assert!(st.is_object(), "{st}");
    assert!(ov.gms_log().contains("GMS serving"));
}
