//! fpn-forge: the third node of issue 12's forged-Binding-Update test
//! (overlay-tests/tests/node_move.rs). Run in an enrolled node's lab host
//! with that node's state directory, it sends a peer (`--peer-ge` at
//! `--to`) moved messages (fpn's Binding Update) that must change nothing:
//!
//! - over its own authenticated QUIC connection, one that names another GE
//!   as its sender (`--victim-ge`: "the victim moved, to me");
//! - over the same connection, one in its own name under a key that is not
//!   the pair's (what a node without the pair key can make);
//! - each of them twice (a replay);
//! - the victim's forged one as a plain UDP datagram to the peer's port
//!   7717 (the native path, where nothing vouches for the source).
//!
//! Prints what it sent as JSON. Every send is bounded; the tool exits after
//! a second for the frames to arrive.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use fpn_node::carrier::{Carrier, FrameKind, PeerTarget, QuicCarrier, QuicCarrierConfig};
use fpn_proto::ge::GeId;
use fpn_proto::path::{ProbeKey, ProbeKind, ProbeRepr};

/// Send forged and replayed Binding Updates to a peer.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// This node's state directory (its certificate for the QUIC carrier).
    #[arg(long)]
    state: PathBuf,
    /// This node's GE id.
    #[arg(long)]
    own_ge: u32,
    /// The peer's GE id.
    #[arg(long)]
    peer_ge: u32,
    /// The GE whose move is forged.
    #[arg(long)]
    victim_ge: u32,
    /// The peer's carrier address (ADDRESS:PORT, port 7718 usually).
    #[arg(long)]
    to: SocketAddr,
}

/// A moved message from `sender` to `receiver` under a key nobody shares.
fn forged(sender: u32, receiver: u32, to: SocketAddr, seq: u64) -> Result<Vec<u8>> {
    let key = ProbeKey::new(&[0x5a; 32]);
    let repr = ProbeRepr {
        kind: ProbeKind::Moved,
        sender: GeId(sender),
        receiver: GeId(receiver),
        seq,
        timestamp: 1,
        rx_native: 0,
        to,
        observed: None,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr
        .emit(&key, &mut buf)
        .context("emitting a moved message")?;
    buf.truncate(n);
    Ok(buf)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let identity = fpn_gms_client::Identity::load(&cli.state)
        .with_context(|| format!("loading the identity in {}", cli.state.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let as_victim = forged(cli.victim_ge, cli.peer_ge, cli.to, u64::MAX / 2)?;
    let own_bad_key = forged(cli.own_ge, cli.peer_ge, cli.to, u64::MAX / 2)?;
    let sent = rt.block_on(async {
        let mut cfg = QuicCarrierConfig::new(identity);
        cfg.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        let (carrier, _inbound) = QuicCarrier::bind(cfg)?;
        let target = PeerTarget {
            ge: GeId(cli.peer_ge),
            addrs: vec![cli.to],
            reflexive: None,
        };
        let mut sent = 0u32;
        for m in [&as_victim, &own_bad_key, &as_victim, &own_bad_key] {
            if carrier.send(&target, FrameKind::Control, m).is_ok() {
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        carrier.close().await;
        anyhow::Ok(sent)
    })?;
    let udp = UdpSocket::bind("0.0.0.0:0").context("binding UDP")?;
    let native = SocketAddr::new(cli.to.ip(), 7717);
    let mut native_sent = 0u32;
    for _ in 0..2 {
        if udp.send_to(&as_victim, native).is_ok() {
            native_sent += 1;
        }
    }
    println!(
        "{}",
        serde_json::json!({"carrier_sent": sent, "native_sent": native_sent})
    );
    Ok(())
}
