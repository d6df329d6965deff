//! Moving hosts between networks at runtime.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BIN, need};
use fpn_lab::{Error, Lab, config_path};

const T: Duration = Duration::from_secs(5);

#[test]
fn the_laptop_roams_from_home_to_the_cafe_and_back() {
    need(&["nft", "ping"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    let echo = lab
        .command("vps", [BIN, "echo", "serve", "--tcp", "0.0.0.0:7000"])
        .spawn()
        .unwrap();
    echo.wait_for_log("tcp 0.0.0.0:7000", T).unwrap();
    let vps = SocketAddr::new(lab.addr("vps", "pub-vps").unwrap(), 7000);
    let whoami = |lab: &Lab| {
        lab.run_in("laptop", move || fpn_lab::echo::whoami_tcp(vps, T))
            .unwrap()
            .unwrap()
            .ip()
    };

    assert_eq!(whoami(&lab), lab.addr("gw", "pub-home").unwrap());
    assert_eq!(
        lab.addr("laptop", "homelan").unwrap().to_string(),
        "192.168.1.50"
    );
    assert!(matches!(
        lab.addr("laptop", "cafelan"),
        Err(Error::NoAddress { .. })
    ));

    lab.roam("laptop", "homelan", "cafelan").unwrap();

    let new = lab.addr("laptop", "cafelan").unwrap();
    assert_eq!(new.to_string(), "10.20.0.50");
    assert!(lab.addrs("laptop", "homelan").unwrap().is_empty());
    // Reachable at the new address, gone from the old network, and out
    // through the cafe's NAT now.
    lab.exec_ok("cafe", ["ping", "-c1", "-W2", &new.to_string()])
        .unwrap();
    let out = lab
        .exec("gw", ["ping", "-c1", "-W1", "192.168.1.50"])
        .unwrap();
    assert!(!out.success(), "the laptop still answers at home");
    assert_eq!(whoami(&lab), lab.addr("cafe", "pub-cafe").unwrap());
    // The interface kept its name (wlan0), as a laptop's Wi-Fi does.
    let link = lab
        .exec_ok("laptop", ["ip", "-br", "addr", "show", "dev", "wlan0"])
        .unwrap();
    assert!(link.contains("10.20.0.50/24"), "{link}");
    let route = lab
        .exec_ok("laptop", ["ip", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via 10.20.0.1"), "{route}");

    // Errors leave the lab as it was.
    assert!(matches!(
        lab.roam("laptop", "homelan", "cafelan"),
        Err(Error::AttachState { .. })
    ));
    assert!(matches!(
        lab.detach("laptop", "homelan"),
        Err(Error::AttachState { .. })
    ));
    assert!(matches!(
        lab.attach("laptop", "pub-vps"),
        Err(Error::UnknownEnd { .. })
    ));
    assert!(
        matches!(lab.attach("vps", "pub-vps"), Err(Error::Topology(_))),
        "pairs do not roam"
    );

    lab.roam("laptop", "cafelan", "homelan").unwrap();
    assert_eq!(whoami(&lab), lab.addr("gw", "pub-home").unwrap());
}

#[test]
fn a_lab_is_shared_between_threads_while_a_host_roams() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Lab>();
    need(&["nft"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    let echo = lab
        .command("vps", [BIN, "echo", "serve", "--tcp", "0.0.0.0:7000"])
        .spawn()
        .unwrap();
    echo.wait_for_log("tcp 0.0.0.0:7000", T).unwrap();
    let vps = SocketAddr::new(lab.addr("vps", "pub-vps").unwrap(), 7000);
    let cafe = lab.addr("cafe", "pub-cafe").unwrap();
    let roamed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // One thread keeps asking the VPS from the laptop (bounded: 200 tries)
        // while the main thread moves the laptop.
        let asker = s.spawn(|| {
            for _ in 0..200 {
                let seen = lab
                    .run_in("laptop", move || fpn_lab::echo::whoami_tcp(vps, T))
                    .unwrap();
                if let Ok(seen) = seen
                    && seen.ip() == cafe
                {
                    return roamed.load(std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        });
        std::thread::sleep(Duration::from_millis(50));
        roamed.store(true, std::sync::atomic::Ordering::SeqCst);
        lab.roam("laptop", "homelan", "cafelan").unwrap();
        assert!(
            asker.join().unwrap(),
            "the asker never saw the cafe's address after the move"
        );
    });
}

#[test]
fn roaming_is_visible_to_other_processes_through_the_state_file() {
    need(&["nft"]);
    let lab = Lab::up(config_path("nat-home.toml")).unwrap();
    let other = Lab::open(Some(&lab.id())).unwrap();
    other.roam("laptop", "homelan", "cafelan").unwrap();
    drop(other); // a handle from open() leaves the lab up
    let st = fpn_lab::LabState::load(&fpn_lab::state::state_dir(), &lab.id()).unwrap();
    assert!(st.end("laptop", "cafelan").unwrap().attached);
    assert!(!st.end("laptop", "homelan").unwrap().attached);
    lab.exec_ok("cafe", ["ping", "-c1", "-W2", "10.20.0.50"])
        .unwrap();
}

#[test]
fn addresses_routes_and_link_state_change_at_runtime() {
    need(&["ping"]);
    let lab = Lab::up(config_path("routed.toml")).unwrap();
    // A second address on the server, reachable across both routers.
    lab.add_addr("server", "lan2", "10.2.0.9/24".parse().unwrap())
        .unwrap();
    assert_eq!(lab.addrs("server", "lan2").unwrap().len(), 2);
    lab.exec_ok("client", ["ping", "-c1", "-W2", "10.2.0.9"])
        .unwrap();
    lab.del_addr("server", "lan2", "10.2.0.9/24".parse().unwrap())
        .unwrap();
    assert!(
        !lab.exec("client", ["ping", "-c1", "-W1", "10.2.0.9"])
            .unwrap()
            .success()
    );

    // Core link down: the LANs are cut off; up again: the static routes the
    // kernel dropped come back.
    lab.set_link_up("r1", "core", false).unwrap();
    assert!(
        !lab.exec("client", ["ping", "-c1", "-W1", "10.2.0.2"])
            .unwrap()
            .success()
    );
    lab.set_link_up("r1", "core", true).unwrap();
    let ok = (0..20).any(|_| {
        lab.exec("client", ["ping", "-c1", "-W1", "10.2.0.2"])
            .unwrap()
            .success()
    });
    assert!(ok, "no route back after the link came up");

    // Default route replaced and deleted.
    lab.delete_route("client", "default").unwrap();
    assert!(
        !lab.exec("client", ["ping", "-c1", "-W1", "10.2.0.2"])
            .unwrap()
            .success()
    );
    lab.set_default_route("client", "10.1.0.1".parse().unwrap())
        .unwrap();
    lab.exec_ok("client", ["ping", "-c1", "-W2", "10.2.0.2"])
        .unwrap();
}
