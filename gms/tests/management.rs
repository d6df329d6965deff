//! Runs the command blocks of docs/MANAGEMENT.md against the real server and
//! recounts the items with the rule stated there.

mod common;

use common::*;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/MANAGEMENT.md");

/// The command lines of the fenced block after `<!-- commands:NAME -->`.
fn block(name: &str) -> Vec<Vec<&'static str>> {
    let marker = format!("<!-- commands:{name} -->");
    let start = DOC.find(&marker).expect("marker in docs/MANAGEMENT.md") + marker.len();
    let body = &DOC[start..];
    let open = body.find("```").unwrap();
    let body = &body[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close]
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .map(|w| {
            assert_eq!(w[0], "fpn-gms", "{w:?}");
            w[1..].to_vec()
        })
        .collect()
}

/// Items of one command: every value typed, except subcommand words and `--data`.
fn items(args: &[&str]) -> usize {
    let values = match args[0] {
        "init" => &args[1..],
        _ => &args[2..], // `group add`, `ge set`, ...
    };
    let mut n = 0;
    let mut i = 0;
    while i < values.len() {
        if values[i] == "--data" {
            i += 2;
            continue;
        }
        if values[i].starts_with("--") {
            i += 1; // the flag itself; its value is counted next
            continue;
        }
        n += 1;
        i += 1;
    }
    n
}

fn ge<'a>(ges: &'a Value, name: &str) -> &'a Value {
    ges.as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
}

#[test]
fn the_example_network_takes_20_items_and_a_new_member_4() {
    let network = block("example-network");
    let total: usize = network.iter().map(|c| items(c)).sum();
    assert_eq!(total, 20, "docs/MANAGEMENT.md says 20 items at the GMS");
    let new_member = block("new-member");
    assert_eq!(new_member.iter().map(|c| items(c)).sum::<usize>(), 4);

    // Run them (init is the harness's own, on loopback, with the doc's zone).
    let gms = Gms::start_new(&[]);
    assert_eq!(network[0][0], "init");
    for cmd in &network[1..] {
        gms.ok(cmd);
    }
    let ges = gms.json(&["ge", "list"]);
    let expect = [
        ("gen", "gen", "cl", vec![1]),
        ("ges1", "ges", "op", vec![1]),
        ("ges2", "ges", "op", vec![1, 2]),
        ("ges3", "ges", "op", vec![3]),
        ("gea", "gea", "cl", vec![2, 3]),
    ];
    for (name, kind, mode, groups) in expect {
        let g = ge(&ges, name);
        assert_eq!(
            (g["kind"].as_str(), g["mode"].as_str()),
            (Some(kind), Some(mode)),
            "{name}"
        );
        assert_eq!(g["groups"], serde_json::json!(groups), "{name}");
    }
    assert_eq!(
        ge(&ges, "gen")["protect"],
        serde_json::json!(["192.168.1.0/24"])
    );
    assert_eq!(
        ge(&ges, "gea")["protect"],
        serde_json::json!(["192.168.5.10/32"])
    );
    assert_eq!(
        ge(&ges, "ges2")["protect"],
        serde_json::json!(["10.0.0.12/32"])
    );
    let groups = gms.json(&["group", "list"]);
    assert_eq!(groups.as_array().unwrap().len(), 3);
    assert_eq!(groups[0]["name"], "g1", "the default name: {groups}");
    // Every GE got a distinct overlay address without being asked.
    let mut overlays: Vec<&str> = ges
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["overlay"].as_str().unwrap())
        .collect();
    overlays.sort_unstable();
    overlays.dedup();
    assert_eq!(overlays.len(), 5);

    // The terminal and the server by name: 3 items each, the groups are
    // their gateways'.
    let hosts = block("hosts");
    assert_eq!(hosts.iter().map(|c| items(c)).sum::<usize>(), 6);
    for cmd in &hosts {
        gms.ok(cmd);
    }
    let listed = gms.json(&["host", "list"]);
    let groups: Vec<(&str, &Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), &h["groups"]))
        .collect();
    assert_eq!(
        groups,
        [
            ("server", &serde_json::json!([2, 3])),
            ("terminal", &serde_json::json!([1]))
        ]
    );

    for cmd in &new_member {
        gms.ok(cmd);
    }
    let ges = gms.json(&["ge", "list"]);
    assert_eq!(ge(&ges, "ges1")["groups"], serde_json::json!([1, 4]));
    assert_eq!(ge(&ges, "ges4")["groups"], serde_json::json!([4]));
    // No key rotated: every group is still at version 1.
    for g in gms.json(&["group", "list"]).as_array().unwrap() {
        assert_eq!(g["key_version"], 1);
    }
}
