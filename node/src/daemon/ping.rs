//! `fpn-node ping`: real ICMP echo requests from the overlay address,
//! through the TUN and the engine like any application's packets; the
//! first one starts the negotiation and waits for it.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::icmp::{self, EchoAnswer};

/// How long the first echo may take (it includes the negotiation).
const FIRST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each later echo may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between echoes.
const INTERVAL: Duration = Duration::from_millis(200);

/// The outcome of a ping run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Round-trip times of the answered echoes.
    pub rtts: Vec<Duration>,
    /// Set when an ICMP unreachable came back (13 = refused by policy).
    pub unreachable_code: Option<u8>,
    /// Echo requests sent.
    pub sent: u32,
}

/// Sends `count` echo requests from `src` to `dst` with identifier `id`,
/// ICMP or ICMPv6 by the addresses' family (blocking; run it on a
/// blocking thread).
pub fn ping(src: IpAddr, dst: IpAddr, id: u16, count: u32) -> Result<Outcome> {
    let io = |what: &'static str| {
        move |source| Error::Io {
            what: what.into(),
            source,
        }
    };
    let v6 = dst.is_ipv6();
    let sock = if v6 {
        // The kernel fills in an ICMPv6 raw socket's checksum.
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
    }
    .map_err(io("opening a raw ICMP socket (needs root or CAP_NET_RAW)"))?;
    sock.bind(&SocketAddr::new(src, 0).into())
        .map_err(io("binding the ICMP socket to the overlay address"))?;
    let to = SocketAddr::new(dst, 0).into();
    let mut out = Outcome::default();
    let mut req = Vec::with_capacity(64);
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    for seq in 0..count {
        let seq = seq as u16;
        icmp::echo_request(id, seq, b"fpn-node ping\0\0\0", &mut req);
        if v6 {
            // ICMPv6 echo request; the kernel computes the checksum.
            req[0] = 128;
            req[2..4].copy_from_slice(&[0, 0]);
        }
        let sent_at = Instant::now();
        sock.send_to(&req, &to)
            .map_err(io("sending an ICMP echo"))?;
        out.sent += 1;
        let deadline = sent_at + if seq == 0 { FIRST_TIMEOUT } else { TIMEOUT };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))
                .map_err(io("socket timeout"))?;
            let (n, sender) = match sock.recv_from(&mut buf) {
                Ok((n, a)) => (n, a.as_socket().map(|a| a.ip())),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    return Err(Error::Io {
                        what: "reading ICMP".into(),
                        source: e,
                    });
                }
            };
            // SAFETY: recv initialised the first n bytes.
            let packet: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let answer = if v6 {
                // No IP header on an ICMPv6 raw socket: the sender from recvfrom.
                sender.and_then(|from| icmp::parse_echo6_answer(&packet, id, from))
            } else {
                icmp::parse_echo_answer(&packet, id)
            };
            match answer {
                Some(EchoAnswer::Reply { seq: s, from }) if s == seq && from == dst => {
                    out.rtts.push(sent_at.elapsed());
                    break;
                }
                Some(EchoAnswer::Unreachable { code }) => {
                    out.unreachable_code = Some(code);
                    return Ok(out);
                }
                _ => {}
            }
        }
        if seq as u32 + 1 < count {
            std::thread::sleep(INTERVAL);
        }
    }
    Ok(out)
}
