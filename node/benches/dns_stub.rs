//! DNS stub round trips over loopback UDP, one client, wall time.
//!
//! `cargo bench -p fpn-node --bench dns_stub`
//!
//! Benchmark ids: `dns_stub/zone_a` (an A query answered from the name
//! table, 1000 names in it) and `dns_stub/forwarded_a` (an A query forwarded
//! to a hickory-server upstream on loopback and relayed back: the stub's
//! forwarding cost plus the upstream's own). Each iteration is one query
//! sent and its answer received by a blocking socket; the stub runs on a
//! two-thread tokio runtime.

// criterion_group! generates an undocumented public fn.
#![allow(missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fpn_node::dns::{DnsConfig, DnsStub, NameTable, Target, Upstreams};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

async fn upstream() -> (SocketAddr, Server<Catalog>) {
    let origin = Name::from_ascii("example.test.").unwrap();
    let zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        None,
    );
    let soa = SOA::new(origin.clone(), origin.clone(), 1, 3600, 600, 86400, 60);
    zone.upsert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1)
        .await;
    let www = Name::from_ascii("www.example.test.").unwrap();
    let a = RData::A(A(Ipv4Addr::new(198, 18, 0, 80)));
    zone.upsert(Record::from_rdata(www, 60, a), 1).await;
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), vec![Arc::new(zone) as Arc<dyn ZoneHandler>]);
    let mut server = Server::new(catalog);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    server.register_socket(udp);
    (addr, server)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stub_addr, _server) = rt.block_on(async {
        let (up, server) = upstream().await;
        let table = NameTable::new();
        let names = (0..1000u32).map(|i| {
            let ip = Ipv4Addr::from(0x6440_0000 + i);
            (format!("host{i}"), Target::peer(ip))
        });
        table.replace_all(names).unwrap();
        let listen = (Ipv4Addr::LOCALHOST, 0).into();
        let mut cfg = DnsConfig::new(listen, "home.fpn", table).unwrap();
        cfg.upstreams = Upstreams::List(vec![up]);
        let stub = DnsStub::bind(cfg).await.unwrap();
        let addr = stub.local_addr();
        tokio::spawn(stub.run());
        (addr, server)
    });

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(stub_addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut g = c.benchmark_group("dns_stub");
    for (id, name) in [
        ("zone_a", "host500.home.fpn."),
        ("forwarded_a", "www.example.test."),
    ] {
        let q = query(name);
        g.bench_function(id, |b| {
            b.iter(|| {
                client.send(&q).unwrap();
                let n = client.recv(&mut buf).unwrap();
                assert!(n > 12 && buf[3] & 0x0f == 0, "{id}: no answer");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
