//! The zone and keys every target runs against.

use fpn_ddns::hickory_proto::rr::Name;
use fpn_ddns::hickory_proto::rr::rdata::SOA;
use fpn_ddns::keys::{Algorithm, KeyPolicy, KeyRing, TsigKey};
use fpn_ddns::zone::{ApiChange, Txn, Zone};

pub const NOW: u64 = 1_800_000_000;
pub const SECRET: [u8; 32] = [5; 32];

fn n(s: &str) -> Name {
    Name::from_ascii(s).expect("valid name")
}

/// home.fpn. with a GE that has A and LIP records, and a subdomain.
pub fn zone() -> Zone {
    let soa = SOA::new(
        n("ns1.home.fpn."),
        n("hostmaster.home.fpn."),
        7,
        3600,
        600,
        86400,
        60,
    );
    let mut z = Zone::new_empty(&n("home.fpn."), soa, 3600, &[n("ns1.home.fpn.")]).expect("zone");
    let mut txn = Txn::new(&z);
    for name in ["nas.home.fpn.", "pc.lan.home.fpn."] {
        txn.api(&ApiChange::SetGe {
            name: n(name),
            ttl: 60,
            a: Some([198, 18, 0, 7].into()),
            aaaa: Some("2001:db8::7".parse().expect("addr")),
            lips: vec!["192.168.1.10".parse().expect("addr")],
        })
        .expect("api");
    }
    let cs = txn.finish().expect("finish").expect("changes");
    z.apply(&cs).expect("apply");
    z
}

/// One key with full rights, one scoped to lan.home.fpn.
pub fn keys() -> KeyRing {
    let mut k = KeyRing::default();
    k.insert(TsigKey::new(
        n("admin."),
        Algorithm::HmacSha256,
        SECRET.to_vec(),
        KeyPolicy::admin(&n("home.fpn.")),
    ));
    let scoped = KeyPolicy {
        update: vec![n("lan.home.fpn.")],
        transfer: false,
    };
    k.insert(TsigKey::new(
        n("lan."),
        Algorithm::HmacSha256,
        SECRET.to_vec(),
        scoped,
    ));
    k
}
