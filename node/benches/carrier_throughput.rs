//! QUIC carrier throughput on loopback: one sender, one receiver, data
//! frames of one size sent as fast as `send` accepts them for a fixed time.
//!
//! `send` never blocks, so the sender outruns the connection and quinn
//! drops the oldest queued datagrams; the number that matters is what the
//! receiver got per second (printed with the loss). Run with
//! `cargo bench -p fpn-node --bench carrier_throughput` (env: `SECS`,
//! default 3; `SIZE`, default 1300 bytes).

use std::time::{Duration, Instant};

use fpn_node::carrier::{
    Carrier, Congestion, FrameKind, PeerState, PeerTarget, QuicCarrier, QuicCarrierConfig,
};

#[path = "../tests/support/carrier_net.rs"]
#[allow(dead_code)]
mod carrier_net;
use carrier_net::Network;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(congestion: Congestion, secs: u64, size: usize) {
    let net = Network::new();
    let cfg = |id| {
        let mut c = QuicCarrierConfig::new(net.identity(id, u64::from(id)));
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.congestion = congestion;
        c.initial_mtu = 1452;
        c.mtu_upper_bound = 1452;
        c
    };
    let (a, _arx) = QuicCarrier::bind(cfg(1)).unwrap();
    let (b, mut brx) = QuicCarrier::bind(cfg(2)).unwrap();
    let to = PeerTarget {
        ge: b.local_ge(),
        addrs: vec![b.local_addr()],
        reflexive: None,
    };
    a.send(&to, FrameKind::Data, b"hello").unwrap();
    brx.recv().await.unwrap();
    assert_eq!(a.peers()[0].state, PeerState::Up);

    let counter = tokio::spawn(async move {
        let (mut frames, mut bytes) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(f)) = tokio::time::timeout_at(end.into(), brx.recv()).await {
            frames += 1;
            bytes += f.payload.len() as u64;
        }
        (frames, bytes)
    });
    let payload = vec![0x5au8; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..64 {
            if a.send(&to, FrameKind::Data, &payload).is_ok() {
                sent += 1;
            }
        }
        // Lets the connection's driver and the receiver run on a 2-core box.
        tokio::task::yield_now().await;
    }
    let (frames, bytes) = counter.await.unwrap();
    let gbits = bytes as f64 * 8.0 / secs as f64 / 1e9;
    println!(
        "carrier_throughput {congestion:?} size={size}: received {gbits:.2} Gbit/s ({frames} frames), \
         sent {sent}, lost {:.1}%",
        100.0 * (sent.saturating_sub(frames)) as f64 / sent.max(1) as f64
    );
    a.close().await;
    b.close().await;
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick { 1 } else { env("SECS", 3) };
    let size = env("SIZE", 1300) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for c in [Congestion::Cubic, Congestion::Bbr] {
        rt.block_on(run(c, secs, size));
    }
}
