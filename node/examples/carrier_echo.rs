//! A QUIC carrier that echoes every frame back to its sender, for at most 60 s.
//!
//! The carrier restart tests (node/tests/carrier.rs) run it as a separate
//! process so they can SIGKILL it (no CONNECTION_CLOSE reaches the peer) and
//! start it again on the same port with the same identity.
//!
//! ```text
//! carrier_echo IDENTITY_DIR PORT [GREET_ADDR]
//! ```
//! Prints `port N` once it listens. With GREET_ADDR it first sends one data
//! frame to GE 1 at that address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use fpn_gms_client::Identity;
use fpn_node::carrier::{Carrier, FrameKind, PeerTarget, QuicCarrier, QuicCarrierConfig};
use fpn_proto::ge::GeId;

/// How long the echo carrier lives at most.
const LIFE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, port) = match args.as_slice() {
        [dir, port, ..] => (dir, port.parse::<u16>().context("PORT")?),
        _ => anyhow::bail!("usage: carrier_echo IDENTITY_DIR PORT [GREET_ADDR]"),
    };
    let greet: Option<SocketAddr> = args.get(2).map(|a| a.parse()).transpose()?;
    let mut cfg = QuicCarrierConfig::new(Identity::load(Path::new(dir))?);
    cfg.listen = ([127, 0, 0, 1], port).into();
    cfg.connect_timeout = Duration::from_secs(1);
    let (c, mut rx) = QuicCarrier::bind(cfg)?;
    println!("port {}", c.local_addr().port());
    if let Some(addr) = greet {
        let to = PeerTarget {
            ge: GeId(1),
            addrs: vec![addr],
            reflexive: None,
        };
        c.send(&to, FrameKind::Data, b"hello again")?;
    }
    let end = tokio::time::Instant::now() + LIFE;
    while let Ok(Some(f)) = tokio::time::timeout_at(end, rx.recv()).await {
        let to = PeerTarget {
            ge: f.peer,
            reflexive: None,
            addrs: vec![f.from],
        };
        // A frame that cannot go back is the test's to notice.
        let _ = c.send(&to, f.kind, &f.payload);
    }
    Ok(())
}
