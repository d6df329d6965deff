//! A tiny TCP/UDP echo service that tells each client the address it came
//! from, so a test can see what a NAT did to it.
//!
//! TCP: on connect the server writes `"{client address}\n"`, then echoes
//! every byte until the client closes (or is idle for a minute). UDP: every
//! datagram is answered with `"{client address}\n"` followed by the datagram.
//! `fpn-lab echo serve` / `fpn-lab echo whoami` run the same code in a lab
//! host; tests can also call these functions on sockets made in a namespace
//! with [`Lab::run_in`](crate::Lab::run_in).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::Error;

/// Connections served at once; more are closed at once (bounded threads).
const MAX_CONNECTIONS: usize = 64;

/// A TCP connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// Serves TCP clients until the listener fails.
pub fn serve_tcp(listener: TcpListener) -> Result<(), Error> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = listener.accept().map_err(|e| Error::io("accepting", e))?;
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropping the stream closes it
        }
        let active = active.clone();
        std::thread::spawn(move || {
            let _ = echo_connection(stream, peer);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn echo_connection(mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.write_all(format!("{peer}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Serves UDP datagrams until the socket fails.
pub fn serve_udp(socket: UdpSocket) -> Result<(), Error> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = socket
            .recv_from(&mut buf)
            .map_err(|e| Error::io("receiving", e))?;
        let mut reply = format!("{peer}\n").into_bytes();
        // Keep the reply within one datagram.
        let room = 65_507usize.saturating_sub(reply.len());
        reply.extend_from_slice(&buf[..n.min(room)]);
        // A send error (ICMP unreachable) concerns that client only.
        let _ = socket.send_to(&reply, peer);
    }
}

/// Serves UDP datagrams on a socket that first opened a NAT mapping by
/// asking `opener` (an echo server outside) who it is: returns the outside
/// address the mapping has and a thread that serves until the socket fails.
/// With `keepalive`, a datagram goes to `opener` that often, so the mapping
/// outlives the NAT's timeout; `opener`'s answers are not echoed back.
pub fn serve_udp_opened(
    socket: UdpSocket,
    opener: SocketAddr,
    keepalive: Option<Duration>,
    timeout: Duration,
) -> Result<(SocketAddr, std::thread::JoinHandle<Result<(), Error>>), Error> {
    let mapped = whoami_udp_on(&socket, opener, timeout)?;
    socket
        .set_read_timeout(None)
        .map_err(|e| Error::io("serving UDP", e))?;
    if let Some(every) = keepalive {
        let ka = socket
            .try_clone()
            .map_err(|e| Error::io("cloning the UDP socket", e))?;
        std::thread::spawn(move || {
            // Ends with the socket (the serving thread's error ends the
            // process in the CLI).
            while ka.send_to(b"keepalive", opener).is_ok() {
                std::thread::sleep(every);
            }
        });
    }
    let serve = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, peer) = socket
                .recv_from(&mut buf)
                .map_err(|e| Error::io("receiving", e))?;
            if peer == opener {
                continue; // an answer to a keepalive
            }
            let mut reply = format!("{peer}\n").into_bytes();
            let room = 65_507usize.saturating_sub(reply.len());
            reply.extend_from_slice(&buf[..n.min(room)]);
            let _ = socket.send_to(&reply, peer);
        }
    });
    Ok((mapped, serve))
}

/// Asks a UDP echo server which address it sees this socket as, without
/// connecting the socket (so the same socket can ask several servers, as a
/// NAT test must). Datagrams from anyone else are skipped; three tries.
pub fn whoami_udp_on(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, Error> {
    let ctx = || format!("whoami over UDP to {server}");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    let mut last = invalid("no reply");
    for attempt in 1..=3u32 {
        socket
            .send_to(b"whoami", server)
            .map_err(|e| Error::io(ctx(), e))?;
        // Each try waits its share of what is left.
        let until =
            Instant::now() + deadline.saturating_duration_since(Instant::now()) / (4 - attempt);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .map_err(|e| Error::io(ctx(), e))?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    let line = buf[..n].split(|&b| b == b'\n').next().unwrap_or_default();
                    return parse_addr(line).ok_or_else(|| Error::io(ctx(), invalid("bad reply")));
                }
                Ok(_) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
    }
    Err(Error::io(ctx(), last))
}

/// Connects to a TCP echo server and returns the client address it saw.
pub fn whoami_tcp(server: SocketAddr, timeout: Duration) -> Result<SocketAddr, Error> {
    let ctx = || format!("whoami over TCP to {server}");
    let (_, seen) = connect_tcp(server, timeout, &ctx)?;
    Ok(seen)
}

/// Connects to a TCP echo server and reads the client address line it
/// greets with.
fn connect_tcp(
    server: SocketAddr,
    timeout: Duration,
    ctx: &dyn Fn() -> String,
) -> Result<(TcpStream, SocketAddr), Error> {
    let mut s = TcpStream::connect_timeout(&server, timeout).map_err(|e| Error::io(ctx(), e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| Error::io(ctx(), e))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // An address line is short; a longer one is not our server.
    while line.len() < 64 {
        let n = s.read(&mut byte).map_err(|e| Error::io(ctx(), e))?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let seen = parse_addr(&line).ok_or_else(|| Error::io(ctx(), invalid("no address line")))?;
    Ok((s, seen))
}

/// Asks a UDP echo server which client address it sees (three tries within
/// `timeout`, as datagrams may be lost).
pub fn whoami_udp(server: SocketAddr, timeout: Duration) -> Result<SocketAddr, Error> {
    let ctx = || format!("whoami over UDP to {server}");
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal");
    let s = UdpSocket::bind(bind).map_err(|e| Error::io(ctx(), e))?;
    s.connect(server).map_err(|e| Error::io(ctx(), e))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    let mut last = invalid("no reply");
    for _ in 0..3 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some((left / 3).max(Duration::from_millis(10))))
            .map_err(|e| Error::io(ctx(), e))?;
        s.send(b"whoami").map_err(|e| Error::io(ctx(), e))?;
        match s.recv(&mut buf) {
            Ok(n) => {
                let line = buf[..n].split(|&b| b == b'\n').next().unwrap_or_default();
                return parse_addr(line).ok_or_else(|| Error::io(ctx(), invalid("bad reply")));
            }
            Err(e) => last = e,
        }
    }
    Err(Error::io(ctx(), last))
}

/// Sends `message` to a TCP echo server and reads it back: one full round
/// trip of application bytes, e.g. a marker a capture must (not) see.
/// Returns the client address the server saw.
pub fn send_tcp(
    server: SocketAddr,
    message: &[u8],
    timeout: Duration,
) -> Result<SocketAddr, Error> {
    let ctx = || format!("echo over TCP to {server}");
    let (mut s, seen) = connect_tcp(server, timeout, &ctx)?;
    s.write_all(message).map_err(|e| Error::io(ctx(), e))?;
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).map_err(|e| Error::io(ctx(), e))?;
    if back != message {
        return Err(Error::io(
            ctx(),
            invalid("the echo differs from what was sent"),
        ));
    }
    Ok(seen)
}

/// Sends `message` in one UDP datagram and waits for its echo (up to three
/// tries within `timeout`; `tries` = 1 sends exactly one datagram).
/// Returns the client address the server saw.
pub fn send_udp(
    server: SocketAddr,
    message: &[u8],
    tries: u32,
    timeout: Duration,
) -> Result<SocketAddr, Error> {
    let ctx = || format!("echo over UDP to {server}");
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal");
    let s = UdpSocket::bind(bind).map_err(|e| Error::io(ctx(), e))?;
    s.connect(server).map_err(|e| Error::io(ctx(), e))?;
    let tries = tries.clamp(1, 10);
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    let mut last = invalid("no reply");
    for _ in 0..tries {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some((left / tries).max(Duration::from_millis(10))))
            .map_err(|e| Error::io(ctx(), e))?;
        s.send(message).map_err(|e| Error::io(ctx(), e))?;
        match s.recv(&mut buf) {
            Ok(n) => {
                let mut parts = buf[..n].splitn(2, |&b| b == b'\n');
                let line = parts.next().unwrap_or_default();
                let rest = parts.next().unwrap_or_default();
                if rest != message {
                    return Err(Error::io(
                        ctx(),
                        invalid("the echo differs from what was sent"),
                    ));
                }
                return parse_addr(line).ok_or_else(|| Error::io(ctx(), invalid("bad reply")));
            }
            Err(e) => last = e,
        }
    }
    Err(Error::io(ctx(), last))
}

fn parse_addr(line: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_udp_report_the_client_address_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve_tcp(l));
        let seen = whoami_tcp(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(seen.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
        assert_ne!(seen.port(), addr.port());

        let mut s = TcpStream::connect(addr).unwrap();
        let mut line = [0u8; 64];
        let _ = s.read(&mut line).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        std::thread::spawn(move || serve_udp(u));
        let seen = whoami_udp(uaddr, Duration::from_secs(5)).unwrap();
        assert_eq!(seen.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());

        let t = Duration::from_secs(5);
        assert_eq!(send_tcp(addr, b"MARKER", t).unwrap().ip(), seen.ip());
        assert_eq!(send_udp(uaddr, b"MARKER", 1, t).unwrap().ip(), seen.ip());
    }

    #[test]
    fn whoami_fails_with_an_error_when_nobody_answers() {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = u.local_addr().unwrap();
        let err = whoami_udp(silent, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        drop(u);
    }
}
