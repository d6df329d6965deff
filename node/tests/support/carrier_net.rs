//! A CA and node identities it issues, for the carrier tests and benchmark
//! (included with `#[path]`; not a test target of its own).

use std::path::PathBuf;

use fpn_gms::ca::{Ca, NodeCertRequest, generate_node_key};
use fpn_gms_client::Identity;
use fpn_proto::ge::{GeId, GeInfo, GeKind, Mode};

/// A CA and the identities it issued.
pub struct Network {
    pub ca: Ca,
    dir: tempfile::TempDir,
}

impl Network {
    pub fn new() -> Self {
        Self {
            ca: Ca::generate(fpn_gms_client::now_unix()).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues GE `id` (certificate serial `serial`) and loads it the way the node does.
    pub fn identity(&self, id: u32, serial: u64) -> Identity {
        Identity::load(&self.identity_dir(id, serial)).unwrap()
    }

    /// Issues GE `id` (certificate serial `serial`) into a state directory of its own.
    pub fn identity_dir(&self, id: u32, serial: u64) -> PathBuf {
        let now = fpn_gms_client::now_unix();
        let (key, public) = generate_node_key().unwrap();
        let name = format!("ge{id}");
        let cert = self
            .ca
            .issue_node_cert(&NodeCertRequest {
                node_key: &public,
                ge_id: id,
                name: &name,
                zone: "home.fpn.",
                serial,
                not_before: now,
                not_after: now + 86_400,
            })
            .unwrap();
        let info = GeInfo {
            id: GeId(id),
            name: name.clone(),
            kind: GeKind::Ges,
            mode: Mode::Open,
            groups: Default::default(),
            overlay: std::net::Ipv4Addr::new(100, 64, 0, id as u8),
        };
        let cred = self
            .ca
            .issue_credential(serial + 1000, info, public, now, now + 86_400)
            .unwrap();
        let identity = Identity::from_parts(
            "127.0.0.1:1".into(),
            "home.fpn.".into(),
            self.ca.public_key(),
            self.ca.cert_der().to_vec(),
            cert,
            cred.encode().unwrap(),
            key,
        )
        .unwrap();
        let dir = self.dir.path().join(format!("{name}-{serial}"));
        identity.save(&dir).unwrap();
        dir
    }
}

/// A QUIC carrier for `id` on a loopback port of its own (3 s connect
/// timeout) and its inbound frames.
#[allow(dead_code)] // the benchmark builds its carriers itself
pub fn carrier(
    id: Identity,
) -> (
    fpn_node::carrier::QuicCarrier,
    tokio::sync::mpsc::Receiver<fpn_node::carrier::Inbound>,
) {
    let mut cfg = fpn_node::carrier::QuicCarrierConfig::new(id);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.connect_timeout = std::time::Duration::from_secs(3);
    fpn_node::carrier::QuicCarrier::bind(cfg).unwrap()
}

/// Where to reach carrier `c`.
#[allow(dead_code)] // the benchmark builds its targets itself
pub fn target(c: &fpn_node::carrier::QuicCarrier) -> fpn_node::carrier::PeerTarget {
    fpn_node::carrier::PeerTarget {
        ge: c.local_ge(),
        addrs: vec![c.local_addr()],
        reflexive: None,
    }
}
